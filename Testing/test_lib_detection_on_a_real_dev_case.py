"""Detection results on a real head CT of the dev data: input geometry, skull surface on the real skull,
and (with the real ``ppr detect`` and a model bundle) the scores the core computed, unchanged."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import slicer
from scipy import ndimage
from vtk.util import numpy_support

from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.geometry import ijk_to_ras, matrix_array
from PositionRegressionADLib.process import ChildProcess
from PositionRegressionADLib.report import REGION_LABELS, table_row
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADLib.skull_surface import bone_threshold
from PositionRegressionADLib.testing import (
    InProcessFakeDetection,
    RecordingLauncher,
    lps_to_ras,
    volume_fingerprint,
)

CASE = "ctich_054"  # no finding


def _ijk_to_ras(node) -> np.ndarray:
    return matrix_array(ijk_to_ras(node))


def surface_distance_to_bone_mm(volume, polydata, threshold: float) -> np.ndarray:
    """For each surface point, the distance (mm) from its nearest voxel to a voxel at or above ``threshold``."""
    voxels = slicer.util.arrayFromVolume(volume)
    distance = ndimage.distance_transform_edt(voxels < threshold, sampling=volume.GetSpacing()[::-1])
    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData())
    ijk = (np.c_[points, np.ones(len(points))] @ np.linalg.inv(_ijk_to_ras(volume)).T)[:, :3]
    index = np.clip(np.round(ijk).astype(int), 0, np.array(voxels.shape[::-1]) - 1)
    return distance[index[:, 2], index[:, 1], index[:, 0]]


@pytest.mark.slow
def test_results_on_a_real_scan_keep_its_geometry_and_the_skull_surface_lies_on_its_bone(dev_data_dir, tmp_path):
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, dev_data_dir / f"{CASE}.nii.gz")
    fingerprint = volume_fingerprint(volume)
    (tmp_path / "model").mkdir()

    results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
        volume, DetectionOptions(model_path=tmp_path / "model"))

    np.testing.assert_array_equal(_ijk_to_ras(results.error_map), _ijk_to_ras(volume))
    assert results.error_map.GetImageData().GetDimensions() == (512, 512, volume.GetImageData().GetDimensions()[2])
    # The dev data is window-clipped to [-20, 100]: bone saturates, so the surface is drawn just under 100.
    threshold = bone_threshold(volume)
    assert 90.0 <= threshold < 100.0
    polydata = results.skull_surface.GetPolyData()
    assert 30_000 < polydata.GetNumberOfCells() <= 300_000
    distances = surface_distance_to_bone_mm(volume, polydata, threshold)
    # Most of the surface touches bone; the rest is where 5 mm slices leave steps to round off.
    assert np.percentile(distances, 80) < 2.0
    assert np.median(distances) < 0.5
    assert volume_fingerprint(volume) == fingerprint


# ------------------------------------------------------------------------------------------------
# With the real detector (``python -m ppr detect`` in a child process) and a tiny untrained bundle:
# the numbers mean nothing about anomalies, but they are the core's, and they must arrive unchanged.


@pytest.mark.slow
def test_real_detection_puts_the_cores_numbers_in_the_scene(dev_data_dir, tiny_bundle, tmp_path):
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, dev_data_dir / "ctich_051.nii.gz")
    fingerprint = volume_fingerprint(volume)
    launcher = RecordingLauncher(ChildProcess)
    work = tmp_path / "work"
    work.mkdir()
    updates = []

    results = DetectionLogic(context.scene, launcher=launcher, work_dir=work).detect(
        volume, DetectionOptions(model_path=tiny_bundle, device="cpu", stride=4), on_progress=updates.append)
    report = launcher.report()

    np.testing.assert_array_equal(_ijk_to_ras(results.error_map), _ijk_to_ras(volume))
    errors = slicer.util.arrayFromVolume(results.error_map)
    # The core's summary is over the model-space map; resampling it onto the input cannot exceed its max.
    assert 0.5 * report["error_mm"]["max"] < errors.max() <= report["error_mm"]["max"] + 1e-3
    np.testing.assert_allclose(results.max_error_ras, lps_to_ras(report["max_error_lps"]), atol=1e-3)
    row = table_row(results.scores)
    for region, label in REGION_LABELS.items():
        assert row[label] == report["regions"][region], label
    for key in ("max", "p99", "mean"):
        assert row[f"Error {key} (mm)"] == report["error_mm"][key]
    assert (row["Stride"], row["Method"], row["Device"], row["Model"]) == (4, "dense", "cpu", "tiny")
    assert row["Region score"] == report["aggregate"] == "p99"
    assert row["Seconds"] == report["seconds"]
    assert row["Registration metric"] == report["registration_metric"]
    assert "computing the error map" in [update.message for update in updates]
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(
        np.percentile(errors[errors > 0], 98.0))
    assert volume_fingerprint(volume) == fingerprint
    assert list(work.iterdir()) == []


@pytest.mark.slow
def test_real_batch_reports_the_cores_refusal_of_a_single_slice(tiny_bundle, tmp_path, repo_root):
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        pytest.skip("pydicom-data is not installed")
    single_slice = Path(spec.origin).parent / "data" / "693_UNCR.dcm"
    result = subprocess.run([sys.executable, str(repo_root / "PositionRegressionAD" / "Scripts" / "batch.py"), "--",
                             "--input", str(single_slice), "--output", str(tmp_path / "out"),
                             "--model", str(tiny_bundle), "--device", "cpu"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    with (tmp_path / "out" / "scores.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["Scan"], row["Status"]) for row in rows] == [("693_UNCR", "failed")]
    assert "single slice" in rows[0]["Reason"] and "3D head CT" in rows[0]["Reason"]
    assert "0 of 1 scans done" in result.stderr
