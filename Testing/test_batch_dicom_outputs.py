"""Batch ``--format dicom`` (issue 16): for a scan that is a DICOM series folder the batch writes a
Parametric Map of the shown map, a Segmentation of the anomaly candidates and a TID 1500 report into
``OUTPUT/<scan>/dicom/`` (``ppr.workflows.dicom_results``) and names them in the row's "DICOM"; a scan
read from a file gets its maps and an "ok" row whose Reason says why it has no DICOM. A re-run keeps
a row only while its DICOM files are there; both engines write them (they share ``detect_scan``).

The fast tests run the fake detector (``PositionRegressionADLib.testing``) on a small synthetic
series; the slow one runs the bundled model at stride 4 on the real ``invesalius-0051`` series and a
dev NIfTI scan, from the command line.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DEV_DATA_DIR
from PositionRegressionADLib import batch
from PositionRegressionADLib.batch import KEPT, NO_DICOM_INPUT, BatchSettings, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
from synthetic_dicom import write_ct_series
from synthetic_heads import synthetic_head

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")
from ppr.workflows.dicom_results import (  # noqa: E402  (needs highdicom's pydicom)
    COMPREHENSIVE_3D_SR_SOP_CLASS,
    DICOM_RESULT_NAMES,
    PARAMETRIC_MAP_SOP_CLASS,
    SEGMENTATION_SOP_CLASS,
)

FAKE_CHILD = (sys.executable, "-m", "PositionRegressionADLib.testing")
REAL_SERIES = DEV_DATA_DIR.parent / "real-hu-dicom" / "invesalius-0051"
NIFTI_SCAN = "ctich_104"  # the smallest dev scan (31 slices)
SOP_CLASSES = dict(zip(DICOM_RESULT_NAMES, (PARAMETRIC_MAP_SOP_CLASS, SEGMENTATION_SOP_CLASS,
                                            COMPREHENSIVE_3D_SR_SOP_CLASS)))
# invesalius-0051's own UIDs have a leading zero in a component: pydicom says so on every read.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _synthetic_series(folder: Path) -> Path:
    """A small full-HU head series (48 x 48 x 24, 4 x 4 x 5 mm) with a lesion the fake detector finds."""
    def hu_at(points: np.ndarray) -> np.ndarray:
        radius = np.linalg.norm(points / np.array([85.0, 90.0, 55.0]), axis=-1)
        hu = np.where(radius < 1.0, 40.0, -1000.0)
        hu = np.where((radius < 0.93) & (radius >= 0.82), 1000.0, hu)
        return np.where(np.linalg.norm(points - np.array([25.0, 0.0, 10.0]), axis=-1) < 12.0, 75.0, hu)

    positions = [(-94.0, -94.0, -57.5 + 5.0 * k) for k in range(24)]
    write_ct_series(folder, positions, (1, 0, 0), (0, 1, 0), hu_at, shape=(48, 48), spacing=(4.0, 4.0))
    frame = pydicom.uid.generate_uid()
    for path in folder.iterdir():  # write_ct_series leaves out the frame of reference, which results reference
        dataset = pydicom.dcmread(path)
        dataset.FrameOfReferenceUID = frame
        dataset.save_as(path, enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """A folder as a user has it: a DICOM series folder beside a NIfTI file."""
    folder = tmp_path_factory.mktemp("scans")
    _synthetic_series(folder / "series")
    image = synthetic_head(size=(48, 48, 24), spacing=(4.0, 4.0, 5.0), window_hu=(-20.0, 100.0),
                           lesion_center_mm=(25.0, 0.0, 10.0))
    sitk.WriteImage(image, str(folder / "head.nii.gz"))
    return folder


def _settings(output: Path, tmp_path: Path, output_format: str = "dicom") -> BatchSettings:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return BatchSettings(output_dir=output, options=DetectionOptions(model_path=model), python_command=FAKE_CHILD,
                         output_format=output_format)


def _rows(output: Path) -> dict[str, dict[str, str]]:
    with (output / batch.SCORES_FILE_NAME).open(newline="", encoding="utf-8") as handle:
        return {row["Scan"]: row for row in csv.DictReader(handle)}


def _read(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pydicom.dcmread(path)


def _check_dicom_row(row: dict[str, str], output: Path, series: Path, shown_map: Path, whole_head: float,
                     quantity: str = "PPRERROR") -> None:
    """The row names the three files in OUTPUT/<scan>/dicom/; each is the right SOP class, of the source's
    study and frame of reference; the map holds the NIfTI map's values (uint16 through the Real World
    Value Mapping: within half a quantisation step) and its ``quantity`` code; the report the row's scores."""
    folder = output / row["Scan"] / batch.DICOM_FOLDER_NAME
    assert row["DICOM"].split(batch.DICOM_SEPARATOR) == [str(folder / name) for name in DICOM_RESULT_NAMES]
    assert sorted(path.name for path in folder.iterdir()) == sorted(DICOM_RESULT_NAMES)
    source = _read(next(p for p in series.iterdir() if p.is_file()))
    objects = {name: _read(folder / name) for name in DICOM_RESULT_NAMES}
    for name, dataset in objects.items():
        assert dataset.SOPClassUID == SOP_CLASSES[name], name
        assert dataset.StudyInstanceUID == source.StudyInstanceUID
    for name in DICOM_RESULT_NAMES[:2]:
        assert objects[name].FrameOfReferenceUID == source.FrameOfReferenceUID
    parametric_map = objects[DICOM_RESULT_NAMES[0]]
    mapping = parametric_map.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == quantity
    assert (parametric_map.BitsAllocated, parametric_map.PixelRepresentation) == (16, 0)
    slope, intercept = float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)
    values = parametric_map.pixel_array.astype(np.float64) * slope + intercept
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(shown_map), sitk.sitkFloat32)).astype(np.float64)
    assert values.size == expected.size
    # Every value within half a step (the quantisation is monotonic, so sorted values pair up).
    assert np.max(np.abs(np.sort(values, axis=None) - np.sort(expected, axis=None))) <= slope / 2 * (1 + 1e-9)
    segments = objects[DICOM_RESULT_NAMES[1]].SegmentSequence
    assert all(item.SegmentLabel.startswith("Anomaly candidate") for item in segments)
    reported = [float(item.MeasuredValueSequence[0].NumericValue)
                for item in _walk(objects[DICOM_RESULT_NAMES[2]]) if "MeasuredValueSequence" in item]
    assert any(value == pytest.approx(whole_head, rel=1e-5) for value in reported), (whole_head, reported)


def _walk(dataset):
    for item in getattr(dataset, "ContentSequence", []):
        yield item
        yield from _walk(item)


def test_a_series_gets_dicom_results_and_a_file_a_row_that_says_why_not(scans, tmp_path):
    output = tmp_path / "out"
    settings = _settings(output, tmp_path)
    rows = run_batch(batch.find_scans([scans]), settings, stream=io.StringIO())
    assert [(row["Scan"], row["Status"]) for row in rows] == [("head", "ok"), ("series", "ok")], rows
    saved = _rows(output)
    _check_dicom_row(saved["series"], output, scans / "series", output / "series" / "error_map.nii.gz",
                     float(saved["series"]["Whole head"]))
    assert saved["series"]["Reason"] == ""
    # The NIfTI scan: "ok" (its maps are written), no DICOM, and the Reason says why.
    head = saved["head"]
    assert head["Status"] == "ok" and head["DICOM"] == "" and head["Reason"] == NO_DICOM_INPUT
    assert "DICOM output needs a DICOM input" in head["Reason"]
    assert (output / "head" / "error_map.nii.gz").is_file()
    assert not (output / "head" / batch.DICOM_FOLDER_NAME).exists()

    # A re-run keeps both rows (the files are there), the NIfTI scan's still saying why it has no DICOM.
    before = {path: path.stat().st_mtime_ns for path in (output / "series" / "dicom").iterdir()}
    log = io.StringIO()
    run_batch(batch.find_scans([scans]), settings, stream=log)
    kept = _rows(output)
    assert kept["series"]["Reason"] == KEPT and kept["series"]["DICOM"] == saved["series"]["DICOM"]
    assert kept["head"]["Reason"] == f"{KEPT}; {NO_DICOM_INPUT}"
    assert {path: path.stat().st_mtime_ns for path in before} == before  # not written again

    # A DICOM file gone: that scan is computed again and gets it back; the other is kept.
    (output / "series" / "dicom" / DICOM_RESULT_NAMES[2]).unlink()
    run_batch(batch.find_scans([scans]), settings, stream=io.StringIO())
    redone = _rows(output)
    assert redone["series"]["Status"] == "ok" and redone["series"]["Reason"] == ""
    assert (output / "series" / "dicom" / DICOM_RESULT_NAMES[2]).is_file()
    assert redone["head"]["Reason"].startswith(KEPT)

    # Another format: computed again, and no DICOM of the earlier run stays beside the new maps.
    run_batch(batch.find_scans([scans]), _settings(output, tmp_path, "standard"), stream=io.StringIO())
    standard = _rows(output)
    assert standard["series"]["Status"] == "ok" and standard["series"].get("DICOM", "") == ""
    assert not (output / "series" / batch.DICOM_FOLDER_NAME).exists()


def test_the_format_is_on_the_command_line():
    assert batch.build_parser().parse_args(["--input", "a", "--output", "b", "--format", "dicom"]).format == "dicom"


def test_the_ray_engine_writes_the_dicom_results_too(scans, tmp_path):
    ray = pytest.importorskip("ray")
    from PositionRegressionADLib.batch_ray import run_batch_ray

    output = tmp_path / "out"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        rows = run_batch_ray(batch.find_scans([scans]), _settings(output, tmp_path), stream=io.StringIO())
    finally:
        ray.shutdown()
    assert [(row["Scan"], row["Status"], row["Engine"]) for row in rows] == [("head", "ok", "ray"),
                                                                              ("series", "ok", "ray")], rows
    saved = _rows(output)
    _check_dicom_row(saved["series"], output, scans / "series", output / "series" / "error_map.nii.gz",
                     float(saved["series"]["Whole head"]))
    assert saved["head"]["DICOM"] == "" and saved["head"]["Reason"] == NO_DICOM_INPUT


@pytest.mark.slow
def test_the_bundled_model_on_a_real_series_and_a_dev_scan(tmp_path, capsys):
    """The command line with the bundled model at stride 4: the real series' DICOM objects hold its
    z-map (the shown map of the calibrated model); the NIfTI scan's row says why it has none; a re-run
    keeps both rows."""
    if not REAL_SERIES.is_dir() or not (DEV_DATA_DIR / f"{NIFTI_SCAN}.nii.gz").is_file():
        pytest.skip("the real DICOM series or the dev scan is not available")
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / REAL_SERIES.name).symlink_to(REAL_SERIES, target_is_directory=True)
    (scans / f"{NIFTI_SCAN}.nii.gz").symlink_to(DEV_DATA_DIR / f"{NIFTI_SCAN}.nii.gz")
    output = tmp_path / "results"
    arguments = ["--input", str(scans), "--output", str(output), "--stride", "4", "--device", "cpu",
                 "--format", "dicom"]
    assert batch.main(arguments) == 0
    rows = _rows(output)
    series = rows[REAL_SERIES.name]
    assert series["Status"] == "ok" and series["Overlay map"] == "z", series
    # The z-map is the anomaly map: its local quantity, not a Z-score.
    _check_dicom_row(series, output, REAL_SERIES, Path(series["z-map"]), float(series["Whole head"]), "ANOMALY")
    nifti = rows[NIFTI_SCAN]
    assert nifti["Status"] == "ok" and nifti["DICOM"] == "" and nifti["Reason"] == NO_DICOM_INPUT
    assert (output / NIFTI_SCAN / "z_map.nii.gz").is_file()
    # The bundled model's z-map is the anomaly map: the position error's own z-map is written beside it.
    for name, row in ((REAL_SERIES.name, series), (NIFTI_SCAN, nifti)):
        assert Path(row["Position z-map"]) == output / name / "position_z_map.nii.gz"
        assert Path(row["Position z-map"]).is_file()
    assert f"{NIFTI_SCAN}: ok (no DICOM files: DICOM output needs a DICOM input" in capsys.readouterr().err

    assert batch.main(arguments) == 0  # resumes: nothing computed again
    again = _rows(output)
    assert again[REAL_SERIES.name]["Reason"] == KEPT
    assert again[REAL_SERIES.name]["DICOM"] == series["DICOM"]
    assert again[NIFTI_SCAN]["Reason"] == f"{KEPT}; {NO_DICOM_INPUT}"
