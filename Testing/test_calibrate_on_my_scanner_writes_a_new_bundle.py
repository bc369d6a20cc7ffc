"""``ppr calibrate BUNDLE FOLDER --out NEW_BUNDLE``: a folder of one's own healthy scans (NIfTI files
and DICOM series sub-folders) gives a new calibrated bundle and leaves the original as it was; the
places a cut scan did not measure are no evidence; too few scans, a scan that fails, an occupied
output folder and the shipped bundle in place are refused plainly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.__main__ import main
from ppr.workflows.bundle import CALIBRATION, load_bundle, sha256_file
from ppr.statistics.calibration import block_samples
from ppr.workflows.calibrate import calibration_scans
from ppr.cli.calibrate import shipped_models_dir
from ppr.workflows.detection import DetectOptions, detect
from test_field_of_view_cut_places_are_not_measured import crop_top


def small(image: sitk.Image) -> sitk.Image:
    """A quarter of the in-plane resolution (1.8 mm): real anatomy, 16x fewer voxels."""
    return sitk.Shrink(image, [4, 4, 1])


def write_dicom_series(image: sitk.Image, folder: Path) -> Path:
    """One DICOM file per slice with the position and orientation a scanner writes."""
    folder.mkdir(parents=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetDepth()):
        piece = image[:, :, k]
        position = "\\".join(f"{v:.4f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", "1.2.826.0.1.3680043.8.498.1"),
                           ("0020|000e", "1.2.826.0.1.3680043.8.498.2"), ("0020|0037", orientation),
                           ("0020|0032", position), ("0020|0013", str(k + 1)),
                           ("0008|0018", f"1.2.826.0.1.3680043.8.498.3.{k + 1}")):
            piece.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(piece)
    return folder


@pytest.fixture(scope="module")
def my_scans(dev_data_dir: Path, tmp_path_factory) -> Path:
    """A hospital's folder: two NIfTI files (one cut to its top 160 mm) and one DICOM series folder."""
    folder = tmp_path_factory.mktemp("my-healthy-scans")
    read = lambda name: sitk.ReadImage(str(dev_data_dir / f"{name}.nii.gz"))  # noqa: E731
    sitk.WriteImage(small(read("ctich_056")), str(folder / "ctich_056.nii.gz"))
    sitk.WriteImage(small(crop_top(read("ctich_111"), 160.0)), str(folder / "ctich_111_top160.nii.gz"))
    write_dicom_series(small(read("ctich_057")), folder / "ctich_057")
    (folder / "notes.txt").write_text("not a scan\n")
    return folder


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _calibrate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["calibrate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_folder_gives_its_files_and_dicom_series_in_name_order(my_scans: Path) -> None:
    names = [path.name for path in calibration_scans([my_scans])]
    assert names == ["ctich_056.nii.gz", "ctich_057", "ctich_111_top160.nii.gz"]
    # A DICOM series folder named directly is one scan, not a folder of scans.
    assert calibration_scans([my_scans / "ctich_057"]) == [my_scans / "ctich_057"]


@pytest.mark.slow  # three detections and one more with the tiny bundle (~20 s on 2 shared cores)
def test_a_folder_of_my_scans_gives_a_new_calibrated_bundle(bundle: Path, my_scans: Path, tmp_path: Path,
                                                            capsys) -> None:
    before = {path.name: sha256_file(path) for path in bundle.iterdir()}
    out = tmp_path / "my-scanner"
    code, stdout, err = _calibrate(capsys, str(bundle), str(my_scans), "--out", str(out), "--stride", "4",
                                   "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert report["case_names"] == ["ctich_056", "ctich_057", "ctich_111_top160"]
    assert report["bundle"] == str(out) and report["calibration"] == str(out / CALIBRATION)
    assert f"--model {out}" in stdout

    # The original is untouched; the new bundle holds the same model and a calibration.
    assert {path.name: sha256_file(path) for path in bundle.iterdir()} == before
    assert not (bundle / CALIBRATION).exists()
    new = load_bundle(out)  # checksums verified
    for name in ("weights.pt", "config.json", "reference.nii.gz"):
        assert sha256_file(out / name) == before[name]
    calibration = new.calibration
    assert calibration.n_scans == 3
    assert report["healthy_brain_median_z"] == pytest.approx(
        [float(calibration.reference_brain_median_z.min()), float(calibration.reference_brain_median_z.max())])
    assert np.isfinite(calibration.reference_brain_median_z).all()
    assert np.all((calibration.reference_fraction_above >= 0) & (calibration.reference_fraction_above <= 1))

    # Places of the cut scan's head that it did not measure (near its cut) are not counted for it.
    cut_scan = detect(sitk.ReadImage(str(my_scans / "ctich_111_top160.nii.gz")), new,
                      DetectOptions(stride=4, device="cpu", use_calibration=False))
    head = sitk.GetArrayFromImage(cut_scan.head_mask_model).astype(np.float32)
    measured = sitk.GetArrayFromImage(cut_scan.measured_mask_model).astype(np.float32)
    config = calibration.config
    not_measured_blocks = ((block_samples(head, config) >= 0.5).any(axis=0)
                           & ~(block_samples(measured, config) >= 0.5).any(axis=0))
    assert not_measured_blocks.sum() > 50
    assert calibration.scan_count[not_measured_blocks].max() <= 2
    assert calibration.scan_count.max() == 3


def test_too_few_scans_a_failing_scan_and_occupied_outputs_are_refused(bundle: Path, my_scans: Path,
                                                                      tmp_path: Path, capsys) -> None:
    two = tmp_path / "two"
    two.mkdir()
    for name in ("ctich_056.nii.gz", "ctich_111_top160.nii.gz"):
        shutil.copy(my_scans / name, two / name)
    code, _, err = _calibrate(capsys, str(bundle), str(two), "--out", str(tmp_path / "new"))
    assert code == 2 and "at least 3 healthy scans, got 2 (ctich_056, ctich_111_top160)" in err

    broken = tmp_path / "broken"
    shutil.copytree(two, broken)
    single_slice = sitk.Image(64, 64, 1, sitk.sitkInt16)
    sitk.WriteImage(single_slice, str(broken / "a_single_slice.nii.gz"))  # first in name order
    code, _, err = _calibrate(capsys, str(bundle), str(broken), "--out", str(tmp_path / "new"), "--device", "cpu")
    assert code == 2 and err.startswith("error: ") and str(broken / "a_single_slice.nii.gz") in err
    assert not (tmp_path / "new").exists() and not (bundle / CALIBRATION).exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "something").write_text("mine")
    code, _, err = _calibrate(capsys, str(bundle), str(two), "--out", str(occupied))
    assert code == 2 and "already exists and is not an empty folder" in err

    empty = tmp_path / "empty-folder"
    empty.mkdir()
    code, _, err = _calibrate(capsys, str(bundle), str(tmp_path / "empty-folder"), "--out", str(tmp_path / "new"))
    assert code == 2 and "holds no scan" in err


def test_the_shipped_bundle_is_calibrated_in_place_only_when_asked(my_scans: Path, capsys) -> None:
    shipped = next(path for path in shipped_models_dir().iterdir() if path.is_dir())
    before = sha256_file(shipped / "checksums.json")
    code, _, err = _calibrate(capsys, str(shipped), str(my_scans))
    assert code == 2 and "ships with the extension" in err and "--out NEW_BUNDLE" in err
    assert sha256_file(shipped / "checksums.json") == before
