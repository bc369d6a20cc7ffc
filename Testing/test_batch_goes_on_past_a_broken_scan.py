"""Batch detection over a folder: per-scan files, one scores.csv row per scan, a broken scan gets its
reason and the batch goes on; the command-line entry points (Lib module and Slicer script)."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from PositionRegressionADLib.batch import BatchSettings, TerminalProgress, find_scans, run_batch, scan_name
from PositionRegressionADLib.detection_logic import DetectionOptions
from PositionRegressionADLib.process import Progress
from synthetic_heads import synthetic_head

FAKE_CHILD = (sys.executable, "-m", "PositionRegressionADLib.testing")


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for name, lesion in (("head_a", (25.0, 0.0, 20.0)), ("head_b", (-25.0, -10.0, 10.0))):
        image = synthetic_head(size=(56, 56, 28), spacing=(3.4, 3.6, 5.0), window_hu=(-20.0, 100.0),
                               lesion_center_mm=lesion)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    (folder / "head_broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
    (folder / "notes.txt").write_text("not a scan")
    return folder


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / "scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_find_scans_lists_volume_files_of_folders_in_order(scans):
    found = find_scans([scans])
    assert [scan_name(path) for path in found] == ["head_a", "head_b", "head_broken"]


@pytest.mark.slow
def test_a_broken_scan_gets_a_failure_row_and_the_others_their_results(scans, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    output = tmp_path / "out"
    settings = BatchSettings(output_dir=output, options=DetectionOptions(model_path=model), screenshots=True,
                             scene=True, python_command=FAKE_CHILD)
    log = io.StringIO()

    rows = run_batch(find_scans([scans]), settings, stream=log)

    assert [row["Status"] for row in rows] == ["ok", "ok", "failed"]
    written = _rows(output)
    assert [row["Scan"] for row in written] == ["head_a", "head_b", "head_broken"]
    assert [row["Status"] for row in written] == ["ok", "ok", "failed"]
    broken = written[2]
    # The same reader and message as `ppr detect` (ppr.image.imageio.read_image).
    assert "head_broken.nii.gz could not be read as an image" in broken["Reason"]
    assert broken["Left hemisphere"] == "" and broken["Error map"] == "" and broken["Seconds"] == ""
    assert float(broken["Total seconds"]) > 0
    for row in written[:2]:
        folder = output / row["Scan"]
        assert row["Reason"] == ""
        assert float(row["Left hemisphere"]) > 0 and float(row["Whole head"]) > 0
        assert 0 <= float(row["Seconds"]) < float(row["Total seconds"]) and row["Model"] == "model"
        assert Path(row["Error map"]) == folder / "error_map.nii.gz"
        error_map = sitk.ReadImage(row["Error map"])
        source = sitk.ReadImage(str(scans / f"{row['Scan']}.nii.gz"))
        assert error_map.GetSize() == source.GetSize()
        assert error_map.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-4)
        assert error_map.GetDirection() == pytest.approx(source.GetDirection(), abs=1e-6)
        assert (folder / "skull_surface.vtk").stat().st_size > 10_000
        assert (folder / "scene.mrb").stat().st_size > 10_000
        assert sorted(p.name for p in folder.glob("*.png")) == [
            "skull_surface.png", "slices_axial.png", "slices_coronal.png", "slices_sagittal.png"]
    # Rows differ (different lesions): each row carries its own scan's scores.
    assert written[0]["Left hemisphere"] != written[1]["Left hemisphere"]
    text = log.getvalue()
    assert "[1/3] head_a: ok" in text and "[3/3] head_broken: failed:" in text


def test_the_surface_file_is_in_lps(scans, tmp_path):
    import vtk

    model = tmp_path / "model"
    model.mkdir()
    settings = BatchSettings(output_dir=tmp_path / "out", options=DetectionOptions(model_path=model),
                             python_command=FAKE_CHILD)
    run_batch([scans / "head_a.nii.gz"], settings, stream=io.StringIO())
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(tmp_path / "out" / "head_a" / "skull_surface.vtk"))
    reader.Update()
    bounds = reader.GetOutput().GetBounds()
    image = sitk.ReadImage(str(scans / "head_a.nii.gz"))
    corners = [image.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, image.GetWidth() - 1)
               for j in (0, image.GetHeight() - 1) for k in (0, image.GetDepth() - 1)]
    lps_min = [min(c[axis] for c in corners) for axis in range(3)]
    lps_max = [max(c[axis] for c in corners) for axis in range(3)]
    for axis in range(3):
        assert lps_min[axis] - 2 <= bounds[2 * axis] < bounds[2 * axis + 1] <= lps_max[axis] + 2
    # The synthetic head is centred at LPS (0, 0, 0); its skull spans about +-66 mm left-right.
    assert bounds[0] < -50 and bounds[1] > 50


def test_progress_is_one_line_per_stage_without_a_terminal():
    stream = io.StringIO()
    bar = TerminalProgress(stream, total=2)
    bar.update(1, "head_a", Progress(0.0, "reading"))
    bar.update(1, "head_a", Progress(0.1, "reading"))
    bar.update(1, "head_a", Progress(0.5, "computing"))
    bar.done(1, "head_a", "ok")
    lines = stream.getvalue().splitlines()
    assert lines == ["[1/2] head_a [----------------------------]   0% reading",
                     "[1/2] head_a [##############--------------]  50% computing",
                     "[1/2] head_a: ok"]


@pytest.mark.parametrize("entry", [["-m", "PositionRegressionADLib.batch"], ["SLICER_SCRIPT", "--"]])
def test_the_command_line_refuses_a_missing_model_clearly(entry, scans, tmp_path, repo_root):
    if entry[0] == "SLICER_SCRIPT":
        entry = [str(repo_root / "PositionRegressionAD" / "Scripts" / "batch.py"), "--"]
    result = subprocess.run([sys.executable, *entry, "--input", str(scans), "--output", str(tmp_path / "out"),
                             "--model", str(tmp_path / "no-model")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: No model bundle was found at {tmp_path / 'no-model'}" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_command_line_refuses_an_empty_input_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "model").mkdir()
    result = subprocess.run([sys.executable, "-m", "PositionRegressionADLib.batch", "--input", str(tmp_path / "empty"),
                             "--output", str(tmp_path / "out"), "--model", str(tmp_path / "model")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "No scan found in --input" in result.stderr
