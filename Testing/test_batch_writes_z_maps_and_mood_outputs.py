"""Batch with a calibrated model writes each scan's z-map and records the score map; ``--format mood``
writes the MOOD challenge files: voxel scores in [0, 1] with the input's shape and geometry (from
the z-map, normalised around the calibrated threshold, or from the error map without calibration)
and one sample score per scan, the whole head's score normalised the same way."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PositionRegressionADLib.batch import BatchSettings, build_parser, mood_case_name, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
from PositionRegressionADLib.testing import InProcessFakeDetection
from fake_calibrated_detector import CALIBRATED_THRESHOLD_Z, CalibratedFakeDetection
from ppr.statistics.calibration import Calibration, CalibrationConfig
from ppr.workflows.mood import MoodNormalisation
from synthetic_heads import oblique_direction, synthetic_head

SCANS = {"head_a": (25.0, 0.0, 20.0), "head_b": (-25.0, -10.0, 10.0)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for name, lesion in SCANS.items():
        image = synthetic_head(size=(56, 56, 28), spacing=(3.4, 3.6, 5.0), direction=oblique_direction((3, -2, 10)),
                               window_hu=(-20.0, 100.0), lesion_center_mm=lesion)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    return folder


def _calibration_with_threshold(threshold_z: float) -> Calibration:
    """A calibration whose overlay threshold is the fake detector's (the other statistics do not matter here)."""
    ones = np.ones((2, 2, 2), np.float32)
    return Calibration(ones, ones, (8, 8, 8), 3, ("a", "b", "c"), threshold_z, CalibrationConfig())


def _run(scans: Path, out: Path, launcher, tmp_path: Path) -> list[dict[str, str]]:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    settings = BatchSettings(output_dir=out, options=DetectionOptions(model_path=model), launcher=launcher,
                             output_format="mood")
    rows = run_batch([scans / f"{name}.nii.gz" for name in SCANS], settings, stream=io.StringIO())
    assert [row["Status"] for row in rows] == ["ok", "ok"], [row["Reason"] for row in rows]
    with (out / "scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _check_mood_pixels(pixels_path: Path, source: sitk.Image) -> np.ndarray:
    pixels = sitk.ReadImage(str(pixels_path))
    assert pixels.GetSize() == source.GetSize()
    assert pixels.GetSpacing() == pytest.approx(source.GetSpacing(), abs=1e-5)
    assert pixels.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
    assert pixels.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)
    values = sitk.GetArrayFromImage(pixels)
    assert values.min() >= 0.0 and values.max() <= 1.0
    return values


def test_calibrated_batch_writes_z_maps_and_mood_files_from_z(scans, tmp_path):
    out = tmp_path / "out"
    rows = _run(scans, out, CalibratedFakeDetection, tmp_path)
    normalise = MoodNormalisation.for_z(_calibration_with_threshold(CALIBRATED_THRESHOLD_Z))
    assert sorted(p.name for p in (out / "mood").iterdir()) == [
        "head_a.nii.gz", "head_a.nii.gz.txt", "head_b.nii.gz", "head_b.nii.gz.txt"]
    for row in rows:
        source = sitk.ReadImage(str(scans / f"{row['Scan']}.nii.gz"))
        assert row["Score map"] == "z" and row["Overlay map"] == "z"
        assert float(row["Overlay threshold"]) == pytest.approx(CALIBRATED_THRESHOLD_Z)
        assert Path(row["z-map"]) == out / row["Scan"] / "z_map.nii.gz"
        z_image = sitk.ReadImage(row["z-map"])
        assert z_image.GetSize() == source.GetSize()
        z = sitk.GetArrayFromImage(z_image)

        values = _check_mood_pixels(out / "mood" / f"{row['Scan']}.nii.gz", source)
        np.testing.assert_allclose(values, normalise(z), atol=1e-6)
        # The calibrated threshold maps to 0.5: the z peak (far above it) near 1, the air (z = 0) below 0.5.
        assert values.max() > 0.99 and 0.0 < values.min() < 0.5
        sample = float((out / "mood" / f"{row['Scan']}.nii.gz.txt").read_text())
        assert sample == pytest.approx(float(normalise(np.array([float(row["Whole head"])]))[0]), rel=1e-7)
        assert 0.0 <= sample <= 1.0


def test_uncalibrated_batch_writes_mood_files_from_the_error_map(scans, tmp_path):
    out = tmp_path / "out"
    rows = _run(scans, out, InProcessFakeDetection, tmp_path)
    normalise = MoodNormalisation()
    for row in rows:
        source = sitk.ReadImage(str(scans / f"{row['Scan']}.nii.gz"))
        assert row["Score map"] == "mm" and row["z-map"] == ""
        assert not (out / row["Scan"] / "z_map.nii.gz").exists()
        errors = sitk.GetArrayFromImage(sitk.ReadImage(row["Error map"]))
        values = _check_mood_pixels(out / "mood" / f"{row['Scan']}.nii.gz", source)
        np.testing.assert_allclose(values, normalise(errors), atol=1e-6)
        assert values.min() == 0.0  # the air: no error
        sample = float((out / "mood" / f"{row['Scan']}.nii.gz.txt").read_text())
        assert sample == pytest.approx(float(normalise(np.array([float(row["Whole head"])]))[0]), rel=1e-7)
        assert 0.0 < sample < 1.0


def test_without_mood_format_no_mood_folder_is_written(scans, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    settings = BatchSettings(output_dir=tmp_path / "out", options=DetectionOptions(model_path=model),
                             launcher=CalibratedFakeDetection)
    [row] = run_batch([scans / "head_a.nii.gz"], settings, stream=io.StringIO())
    assert row["Status"] == "ok" and Path(row["z-map"]).is_file()
    assert not (tmp_path / "out" / "mood").exists()


def test_the_command_line_takes_the_format_and_one_threshold():
    parser = build_parser()
    args = parser.parse_args(["--input", "a.nii.gz", "--output", "out", "--format", "mood", "--threshold-z", "4",
                              "--no-calibration"])
    assert (args.format, args.threshold_z, args.threshold_mm, args.no_calibration) == ("mood", 4.0, None, True)
    assert parser.parse_args(["--input", "a", "--output", "o"]).format == "standard"
    with pytest.raises(SystemExit):
        parser.parse_args(["--input", "a", "--output", "o", "--threshold-z", "4", "--threshold-mm", "30"])
    with pytest.raises(ValueError, match="output_format"):
        BatchSettings(output_dir=Path("o"), options=DetectionOptions(), output_format="csv")


def test_mood_files_are_named_after_the_input_file():
    assert mood_case_name(Path("/data/00012.nii.gz")) == "00012.nii.gz"
    assert mood_case_name(Path("/data/head.nrrd")) == "head"
