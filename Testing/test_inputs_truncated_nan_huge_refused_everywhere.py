"""One loader, one validation: a truncated or corrupt NIfTI, NaN voxels, a huge declared size and a 4D
image are refused the same way by the CLI, the batch, the Lib and the web viewer (issue 13).

SimpleITK's NIfTI reader reads a truncated file's missing bytes as zeros and turns NaN/Inf into 0, so
the check is ``ppr.image.imageio.read_image``'s own, on the file's bytes.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.errors import InputImageError
from ppr.image.imageio import MAX_VOXELS, read_image
from ppr.image.validation import check_volume

CASE = "ctich_051"


@pytest.fixture(scope="module")
def scans(dev_data_dir, tmp_path_factory) -> dict[str, Path]:
    """Bad files made from a real dev scan: truncated (.nii.gz at 90 % and 99 %, .nii at 99 %), a
    damaged gzip stream, float NaN/Inf voxels, a 4D stack, a header declaring 4000^3 voxels."""
    folder = tmp_path_factory.mktemp("bad-scans")
    source = dev_data_dir / f"{CASE}.nii.gz"
    packed = source.read_bytes()
    files = {}
    for name, fraction in (("cut90.nii.gz", 0.90), ("cut99.nii.gz", 0.99)):
        files[name] = folder / name
        files[name].write_bytes(packed[: int(len(packed) * fraction)])
    plain = gzip.decompress(packed)
    files["cut99.nii"] = folder / "cut99.nii"
    files["cut99.nii"].write_bytes(plain[: int(len(plain) * 0.99)])
    damaged = bytearray(packed)
    damaged[len(damaged) // 2: len(damaged) // 2 + 64] = bytes(64)
    files["damaged.nii.gz"] = folder / "damaged.nii.gz"
    files["damaged.nii.gz"].write_bytes(bytes(damaged))

    image = sitk.ReadImage(str(source))
    values = sitk.GetArrayFromImage(image).astype(np.float32)
    values[20, 250, 260], values[3, 4, 5] = np.nan, np.inf
    with_nan = sitk.GetImageFromArray(values)
    with_nan.CopyInformation(image)
    files["nan.nii.gz"] = folder / "nan.nii.gz"
    sitk.WriteImage(with_nan, str(files["nan.nii.gz"]), useCompression=True)

    head = sitk.GetArrayFromImage(image)
    frames = sitk.GetImageFromArray(np.stack([head[:8], head[8:16]]), isVector=False)  # 2 x 8 slices
    files["4d.nii.gz"] = folder / "4d.nii.gz"
    sitk.WriteImage(frames, str(files["4d.nii.gz"]), useCompression=True)

    header = bytearray(plain[:352])
    header[40:56] = struct.pack("<8h", 3, 4000, 4000, 4000, 1, 1, 1, 1)
    files["huge.nii"] = folder / "huge.nii"
    files["huge.nii"].write_bytes(bytes(header) + plain[352:352 + 4096])
    return files


@pytest.mark.parametrize("name", ["cut90.nii.gz", "cut99.nii.gz", "cut99.nii", "damaged.nii.gz"])
def test_a_truncated_or_damaged_nifti_is_refused_with_the_bytes_it_holds(scans, name):
    with pytest.raises(InputImageError, match=r"truncated or corrupt: [\d,]+ of 24,117,600 bytes") as refused:
        read_image(scans[name])
    held = int(str(refused.value).split("corrupt: ")[1].split(" of ")[0].replace(",", ""))
    assert held < 24_117_600
    assert "export the scan again" in str(refused.value)


def test_the_whole_file_still_reads_as_before(dev_data_dir):
    source = dev_data_dir / f"{CASE}.nii.gz"
    ours, theirs = read_image(source), sitk.ReadImage(str(source))
    assert np.array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(theirs))
    assert ours.GetDirection() == theirs.GetDirection() and ours.GetOrigin() == theirs.GetOrigin()


def test_nan_and_inf_in_a_nifti_stay_where_they_are_so_the_validation_sees_them(scans):
    # SimpleITK alone makes them 0 (nifti1_io zeroes non-finite floats): the reason they were lost.
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(scans["nan.nii.gz"])))).all()
    values = sitk.GetArrayFromImage(read_image(scans["nan.nii.gz"]))
    assert np.isnan(values[20, 250, 260]) and np.isposinf(values[3, 4, 5])
    assert np.count_nonzero(~np.isfinite(values)) == 2
    with pytest.raises(InputImageError, match="2 voxels that are not numbers"):
        check_volume(read_image(scans["nan.nii.gz"]))


def test_a_header_declaring_4000_cubed_voxels_is_refused_before_reading(scans):
    with pytest.raises(InputImageError, match=r"declares 4000 x 4000 x 4000 voxels .*256\.0 GB as float32.*"
                                              f"limit of {MAX_VOXELS:,} voxels"):
        read_image(scans["huge.nii"])


@pytest.mark.parametrize("name, message", [("cut90.nii.gz", "truncated or corrupt"),
                                           ("nan.nii.gz", "not numbers"), ("4d.nii.gz", "is 4D")])
def test_cli_detect_refuses_with_exit_2_a_message_and_no_output(scans, name, message, tmp_path, repo_root,
                                                               tiny_bundle):
    out = tmp_path / "errors.nii.gz"
    before = scans[name].read_bytes()
    completed = subprocess.run([sys.executable, "-m", "ppr", "detect", str(scans[name]), "--model",
                                str(tiny_bundle), "--out", str(out)],
                               capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error: ") and message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not out.exists() and scans[name].read_bytes() == before


def test_lib_load_volume_refuses_what_slicer_alone_would_load(scans, tmp_path):
    from PositionRegressionADLib.scene_io import SceneContext, load_volume

    context = SceneContext.create(tmp_path / "cache")
    for name, message in (("cut99.nii.gz", "truncated or corrupt"), ("nan.nii.gz", "not numbers"),
                          ("4d.nii.gz", "is 4D"), ("huge.nii", "declares 4000")):
        with pytest.raises(InputImageError, match=message):
            load_volume(context, scans[name])
    assert context.scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0


def test_lib_detection_checks_the_nifti_slicer_read_the_volume_from(scans, tmp_path):
    """In Slicer the user loads the file with Slicer's reader (NaN -> 0): Detect checks the file itself."""
    from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
    from PositionRegressionADLib.scene_io import SceneContext

    context = SceneContext.create(tmp_path / "cache")
    volume = context.volumes_logic.AddArchetypeVolume(str(scans["nan.nii.gz"]), "nan")
    assert volume is not None  # Slicer's own reader takes it, with the NaN as 0

    def never_started(command, environment):
        raise AssertionError("the detector must not start")

    (tmp_path / "model").mkdir()
    logic = DetectionLogic(context.scene, launcher=never_started, work_dir=tmp_path)
    with pytest.raises(InputImageError, match="not numbers"):
        logic.start(volume, DetectionOptions(model_path=tmp_path / "model", device="cpu", stride=4))


def test_batch_gives_a_failed_row_per_bad_scan_and_writes_nothing_for_them(scans, tmp_path):
    from PositionRegressionADLib.batch import BatchSettings, run_batch
    from PositionRegressionADLib.detection_logic import DetectionOptions

    def never_started(command, environment):
        raise AssertionError("the detector must not start")

    (tmp_path / "model").mkdir()
    settings = BatchSettings(output_dir=tmp_path / "out", launcher=never_started,
                             options=DetectionOptions(model_path=tmp_path / "model", device="cpu", stride=4))
    names = ["cut90.nii.gz", "nan.nii.gz", "4d.nii.gz"]
    rows = run_batch([scans[name] for name in names], settings, stream=open("/dev/null", "w"))
    assert [row["Status"] for row in rows] == ["failed"] * 3
    for row, message in zip(rows, ("truncated or corrupt", "not numbers", "is 4D")):
        assert message in row["Reason"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["scores.csv"]


def test_web_viewer_upload_refuses_a_truncated_scan(scans, tmp_path):
    from PositionRegressionADLib.detection_logic import DetectionLogic
    from PositionRegressionADLib.scene_io import SceneContext
    from PositionRegressionADWeb.session import ViewerSession

    context = SceneContext.create(tmp_path / "cache")
    session = ViewerSession(context, DetectionLogic(context.scene))
    with pytest.raises(InputImageError, match="truncated or corrupt"):
        session.load_scan(scans["cut99.nii.gz"], "upload")
    assert session.input_volume is None
