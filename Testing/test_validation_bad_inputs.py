"""Every input that cannot be a head CT is refused with its own plain message, and never modified."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import InputImageError
from ppr.image.imageio import read_image
from ppr.image.preprocess import prepare_reference, to_model_space
from ppr.image.validation import validate_head_ct
from synthetic_heads import synthetic_head

HU = PreprocessConfig(size=64, spacing_mm=3.0)
PREWINDOWED = PreprocessConfig(size=64, spacing_mm=3.0, prewindowed=True)


def cq500_slice() -> Path:
    """The real single-slice CQ500 CT shipped in the pydicom-data wheel."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        pytest.skip("pydicom-data is not installed")
    path = Path(spec.origin).parent / "data" / "693_UNCR.dcm"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def small_head(**kwargs) -> sitk.Image:
    return synthetic_head(size=(48, 48, 24), spacing=(4.5, 4.5, 8.0), **kwargs)


def image_from(values: np.ndarray, spacing=(4.5, 4.5, 8.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    return image


def mri_like() -> sitk.Image:
    """A head whose intensities are MRI-like: air 0, everything positive, no bone-bright voxels."""
    values = sitk.GetArrayFromImage(small_head()).astype(np.float32)
    mri = np.interp(values, [-1000.0, -100.0, 0.0, 40.0, 1000.0], [0.0, 300.0, 450.0, 600.0, 80.0])
    return image_from(mri.astype(np.float32))


def four_d() -> sitk.Image:
    volume = small_head()
    return sitk.JoinSeries([volume, volume])


def vector() -> sitk.Image:
    volume = small_head()
    return sitk.Compose(volume, volume, volume)


def with_nan() -> sitk.Image:
    values = sitk.GetArrayFromImage(small_head()).astype(np.float32)
    values[10, 20, 20] = np.nan
    values[11, 20, 20] = np.inf
    return image_from(values)


def blank() -> sitk.Image:
    return image_from(np.full((24, 48, 48), -1000, dtype=np.int16))


def too_small() -> sitk.Image:
    # A 48 mm cube at 1 mm: the right intensities but far too small for a head.
    return synthetic_head(size=(48, 48, 48), spacing=(1.0, 1.0, 1.0))


def two_d() -> sitk.Image:
    return sitk.GetImageFromArray(np.full((64, 64), -1000, dtype=np.int16))


def raw_stored_values() -> sitk.Image:
    """A CT exported without its rescale (air 0, bone ~2000): not HU."""
    values = sitk.GetArrayFromImage(small_head()).astype(np.int32) + 1024
    return image_from(values.astype(np.int16))


BAD_INPUTS = {
    "2d slice": (two_d, HU, "single 2D slice"),
    "4d": (four_d, HU, "is 4D"),
    "vector": (vector, HU, "values per voxel"),
    "nan": (with_nan, HU, "not numbers"),
    "blank": (blank, HU, "same value"),
    "too small": (too_small, HU, "too small to be a head"),
    "mri": (mri_like, HU, "do not look like a CT"),
    "raw values": (raw_stored_values, HU, "do not look like a CT"),
    # Exported in another window (air reads 0, bone 80) than the one configured.
    "prewindowed mismatch": (lambda: small_head(window_hu=(0.0, 80.0)), PREWINDOWED, "do not fill that window"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_message(name):
    make, config, expected = BAD_INPUTS[name]
    with pytest.raises(InputImageError, match=expected):
        validate_head_ct(make(), config)


def test_every_kind_of_bad_input_gets_a_different_message():
    phrases = {expected for _, _, expected in BAD_INPUTS.values()}
    assert len(phrases) == len(BAD_INPUTS) - 1  # an MRI and raw stored values are the same problem
    for name, (make, config, expected) in BAD_INPUTS.items():
        with pytest.raises(InputImageError) as caught:
            validate_head_ct(make(), config)
        matching = {phrase for phrase in phrases if phrase in str(caught.value)}
        assert matching == {expected}, (name, str(caught.value))


def test_real_single_dicom_slice_is_refused_as_a_single_slice():
    path = cq500_slice()
    image = read_image(path)
    assert image.GetSize()[2] == 1
    with pytest.raises(InputImageError, match="single slice"):
        validate_head_ct(image, HU)


def test_mri_message_names_what_is_missing_and_what_to_do():
    with pytest.raises(InputImageError) as caught:
        validate_head_ct(mri_like(), HU)
    message = str(caught.value)
    assert "no air near -1000 HU (0.00% of voxels" in message
    assert "MRI" in message and "pre-windowed" in message


@pytest.mark.parametrize("config", [HU, PREWINDOWED], ids=["hu", "prewindowed"])
def test_a_head_ct_passes(config):
    head = small_head(window_hu=(-20.0, 100.0) if config.prewindowed else None)
    assert validate_head_ct(head, config) is None


def test_prewindowed_data_is_refused_as_hu_and_accepted_as_prewindowed():
    head = small_head(window_hu=(-20.0, 100.0))
    with pytest.raises(InputImageError, match="no air near -1000"):
        validate_head_ct(head, HU)
    validate_head_ct(head, PREWINDOWED)


def test_a_head_ct_in_true_hu_is_also_accepted_as_prewindowed():
    # Air (-1000) and bone (1000) lie beyond both ends of the window, so it spans it.
    validate_head_ct(small_head(), PREWINDOWED)


@pytest.mark.parametrize("name", sorted(set(BAD_INPUTS) - {"2d slice", "4d", "vector"}))
def test_bad_input_file_is_refused_and_left_unchanged(name, tmp_path):
    make, config, expected = BAD_INPUTS[name]
    path = tmp_path / "input.mha"  # MetaImage keeps NaN and infinity (the NIfTI writer does not)
    sitk.WriteImage(make(), str(path))
    before = sha256(path)
    reference = prepare_reference(small_head(window_hu=(-20.0, 100.0) if config.prewindowed else None), config)
    with pytest.raises(InputImageError, match=expected):
        to_model_space(path, reference, config)
    assert sha256(path) == before


def test_unreadable_and_missing_files_are_refused(tmp_path):
    garbage = tmp_path / "scan.nii.gz"
    garbage.write_bytes(b"not an image at all")
    before = sha256(garbage)
    with pytest.raises(InputImageError, match="could not be read"):
        read_image(garbage)
    assert sha256(garbage) == before
    with pytest.raises(InputImageError, match="does not exist"):
        read_image(tmp_path / "missing.nrrd")
    with pytest.raises(InputImageError, match="without a DICOM series"):
        read_image(tmp_path)


def test_cli_refuses_the_real_slice_with_exit_code_2_and_leaves_it_unchanged(tmp_path, repo_root):
    path = cq500_slice()
    before = sha256(path)
    reference = tmp_path / "reference.nii.gz"
    sitk.WriteImage(small_head(), str(reference))
    completed = subprocess.run(
        [sys.executable, "-m", "ppr", "preprocess", str(path), str(tmp_path / "out.nii.gz"),
         "--reference", str(reference), "--size", "64", "--spacing", "3"],
        capture_output=True, text=True, cwd=repo_root, timeout=120,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error: ") and "single slice" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert sha256(path) == before
    assert not (tmp_path / "out.nii.gz").exists()
