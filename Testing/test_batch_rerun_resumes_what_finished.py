"""Batch (issue 13): a re-run keeps what an earlier run finished (same scan bytes, same settings,
files where they belong and whole) and computes the rest: a changed scan, a map cut short, other
settings."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from PositionRegressionADLib.batch import KEPT, BatchSettings, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
from synthetic_heads import synthetic_head

FAKE_CHILD = (sys.executable, "-m", "PositionRegressionADLib.testing")


def _head(path: Path, lesion: tuple[float, float, float]) -> None:
    sitk.WriteImage(synthetic_head(size=(56, 56, 28), spacing=(3.4, 3.6, 5.0), window_hu=(-20.0, 100.0),
                                   lesion_center_mm=lesion), str(path))


def _run(scans: list[Path], output: Path, model: Path, stride: int = 4) -> dict[str, dict[str, str]]:
    settings = BatchSettings(output_dir=output, options=DetectionOptions(model_path=model, stride=stride),
                             python_command=FAKE_CHILD)
    run_batch(scans, settings, stream=io.StringIO())
    with (output / "scores.csv").open(newline="", encoding="utf-8") as handle:
        return {row["Scan"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_a_rerun_keeps_finished_scans_and_redoes_changed_or_damaged_ones(tmp_path):
    scans = [tmp_path / "head_a.nii.gz", tmp_path / "head_b.nii.gz"]
    _head(scans[0], (25.0, 0.0, 20.0))
    _head(scans[1], (-25.0, -10.0, 10.0))
    model = tmp_path / "model"
    model.mkdir()
    output = tmp_path / "out"

    first = _run(scans, output, model)
    assert [row["Reason"] for row in first.values()] == ["", ""]
    maps = {name: (output / name / "error_map.nii.gz") for name in first}
    stamps = {name: path.stat().st_mtime_ns for name, path in maps.items()}

    again = _run(scans, output, model)
    assert [row["Reason"] for row in again.values()] == [KEPT, KEPT]
    assert {name: path.stat().st_mtime_ns for name, path in maps.items()} == stamps  # not computed again
    for name in first:
        assert {k: v for k, v in again[name].items() if k != "Reason"} == {
            k: v for k, v in first[name].items() if k != "Reason"}

    _head(scans[1], (-25.0, 10.0, 10.0))  # head_b changed since
    data = maps["head_a"].read_bytes()
    maps["head_a"].write_bytes(data[: len(data) // 2])  # head_a's map cut short
    third = _run(scans, output, model)
    assert third["head_a"]["Reason"] == "" and third["head_b"]["Reason"] == ""
    assert sitk.ReadImage(str(maps["head_a"])).GetSize() == sitk.ReadImage(str(scans[0])).GetSize()
    assert third["head_b"]["Input digest"] != first["head_b"]["Input digest"]

    other = _run(scans, output, model, stride=2)  # other settings: every scan again
    assert [row["Reason"] for row in other.values()] == ["", ""]
    assert other["head_a"]["Run settings"] != first["head_a"]["Run settings"]
