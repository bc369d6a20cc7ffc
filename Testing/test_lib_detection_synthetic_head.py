"""Detection on a synthetic head through the Logic: result nodes, their geometry and display settings.

The detector is the fake of PositionRegressionADLib.testing (same command line, progress, JSON and
exit codes as ``ppr detect``), so these tests check the scene side, not detection quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from vtk.util import numpy_support
from PositionRegressionADLib.colormap import BONE_FRACTION, COLOR_TABLE_SINGLETON_TAG, SURFACE_TABLE_SINGLETON_TAG
from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.report import table_row
from PositionRegressionADLib.results import (
    INPUT_REFERENCE_ROLE,
    ROLE_ATTRIBUTE,
    ResultDisplayOptions,
    find_results,
    set_threshold,
)
from PositionRegressionADLib.scene_io import load_volume
from PositionRegressionADLib.skull_surface import ERROR_ARRAY_NAME
from PositionRegressionADLib.testing import (
    BACKGROUND_ERROR_MM,
    FAKE_PEAK_VARIABLE,
    PEAK_ERROR_MM,
    InProcessFakeDetection,
    RecordingLauncher,
    lps_to_ras,
    segment_mask,
    volume_fingerprint,
)
from lesion_head_scene import (  # noqa: F401 (fixtures, used by name)
    context, fake_peak_at_the_lesion, head_file, ijk_to_ras_array, model_dir, slice_composite,
)
from synthetic_heads import LESION_LPS, SKULL_POINT_LPS


def _ras_bounds(node) -> np.ndarray:
    bounds = [0.0] * 6
    node.GetRASBounds(bounds)
    return np.array(bounds)


def test_detection_adds_results_on_the_input_grid_with_display_configured(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    composite = slice_composite(context.scene)
    fingerprint = volume_fingerprint(volume)
    launcher = RecordingLauncher(InProcessFakeDetection)
    logic = DetectionLogic(context.scene, launcher=launcher, work_dir=tmp_path)

    results = logic.detect(volume, DetectionOptions(model_path=model_dir))
    report = launcher.report()

    assert find_results(context.scene, volume) == results
    for node, role in zip(results.nodes(), ("ErrorMap", "SkullSurface", "Scores", "AnomalyCandidates")):
        assert node.GetAttribute(ROLE_ATTRIBUTE) == role
        assert node.GetNodeReferenceID(INPUT_REFERENCE_ROLE) == volume.GetID()
        assert context.scene.GetNodeByID(node.GetID()) is node

    # Error map: exactly the input's grid, peak where the detector put it.
    assert results.error_map.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras_array(results.error_map), ijk_to_ras_array(volume))
    errors = slicer.util.arrayFromVolume(results.error_map)
    assert 0.8 * PEAK_ERROR_MM < errors.max() <= PEAK_ERROR_MM + BACKGROUND_ERROR_MM
    np.testing.assert_allclose(results.max_error_ras, lps_to_ras(report["max_error_lps"]), atol=1e-3)
    voxel_diagonal = float(np.linalg.norm(volume.GetSpacing()))
    assert np.linalg.norm(np.array(results.max_error_ras) - lps_to_ras(LESION_LPS)) < voxel_diagonal

    # Overlay: Inferno table, window = colour range, only error above the threshold, over the input.
    display = results.error_map.GetDisplayNode()
    inferno = context.scene.GetSingletonNode(COLOR_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")
    assert display.GetColorNodeID() == inferno.GetID()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(results.threshold_mm)
    assert results.threshold_mm == pytest.approx(np.percentile(errors[errors > 0], 98.0))
    window_min = display.GetLevel() - display.GetWindow() / 2
    window_max = display.GetLevel() + display.GetWindow() / 2
    assert window_min == pytest.approx(0.0, abs=1e-6)
    assert window_max > results.threshold_mm
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundVolumeID() == results.error_map.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.5)

    # Skull surface: in the input's RAS box, error per point, same colours and range as the overlay.
    polydata = results.skull_surface.GetPolyData()
    assert polydata.GetNumberOfPoints() > 2000
    surface_bounds = np.array(polydata.GetBounds())
    volume_bounds = _ras_bounds(volume)
    assert np.all(surface_bounds[0::2] >= volume_bounds[0::2] - 1.0)
    assert np.all(surface_bounds[1::2] <= volume_bounds[1::2] + 1.0)
    probed = numpy_support.vtk_to_numpy(polydata.GetPointData().GetArray(ERROR_ARRAY_NAME))
    assert probed.shape == (polydata.GetNumberOfPoints(),)
    assert probed.min() >= 0.0 and probed.max() <= errors.max() + 1e-3
    # Its table is bone up to the overlay threshold, the ramp above it, up to the overlay's maximum.
    surface_display = results.skull_surface.GetDisplayNode()
    surface_table = context.scene.GetSingletonNode(SURFACE_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")
    assert surface_display.GetColorNodeID() == surface_table.GetID()
    assert surface_display.GetActiveScalarName() == ERROR_ARRAY_NAME
    assert surface_display.GetScalarVisibility()
    low, high = surface_display.GetScalarRange()
    assert high == pytest.approx(window_max, abs=1e-4)
    assert low + BONE_FRACTION * (high - low) == pytest.approx(results.threshold_mm, abs=1e-4)
    chosen = results.threshold_mm
    set_threshold(results, 0.5 * chosen)  # the bone ends where the overlay now starts
    low, high = surface_display.GetScalarRange()
    assert low + BONE_FRACTION * (high - low) == pytest.approx(0.5 * chosen, abs=1e-4)
    assert high == pytest.approx(window_max, abs=1e-4)
    set_threshold(results, chosen)

    # Scores: the detector's numbers, unchanged, and how the run was made.
    row = table_row(results.scores)
    assert row["Left hemisphere"] == report["regions"]["left_hemisphere"]
    assert row["Right hemisphere"] == report["regions"]["right_hemisphere"]
    assert row["Skull"] == report["regions"]["skull"]
    assert row["Whole head"] == report["regions"]["head"]
    assert row["Error max (mm)"] == report["error_mm"]["max"]
    assert (row["Model"], row["Device"], row["Stride"], row["Seconds"]) == (
        "model", report["device"], 4, report["seconds"])

    # Candidates: the largest region contains the highest-error voxel, geometry of the input.
    segmentation = results.candidates.GetSegmentation()
    assert segmentation.GetNumberOfSegments() >= 1
    labelmap, labelmap_ijk_to_ras = segment_mask(results.candidates, segmentation.GetNthSegmentID(0))
    assert labelmap.shape == errors.shape
    np.testing.assert_allclose(labelmap_ijk_to_ras, ijk_to_ras_array(volume), atol=1e-9)
    assert labelmap[np.unravel_index(int(np.argmax(errors)), errors.shape)] == 1
    assert errors[labelmap > 0].min() >= results.threshold_mm - 1e-4
    assert results.candidates.GetNodeReferenceID("referenceImageGeometryRef") == volume.GetID()

    assert volume_fingerprint(volume) == fingerprint
    assert list(tmp_path.glob("ppr-detect-*")) == []  # temporary files are gone


def test_skull_surface_is_hottest_where_the_error_touches_the_skull(context, head_file, model_dir, monkeypatch):
    monkeypatch.setenv(FAKE_PEAK_VARIABLE, ",".join(str(v) for v in SKULL_POINT_LPS))
    volume = load_volume(context, head_file)
    results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
        volume, DetectionOptions(model_path=model_dir))

    polydata = results.skull_surface.GetPolyData()
    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData())
    probed = numpy_support.vtk_to_numpy(polydata.GetPointData().GetArray(ERROR_ARRAY_NAME))
    hottest = points[int(np.argmax(probed))]
    # A mirrored or shifted surface would put the hot spot on the back of the head.
    assert np.linalg.norm(hottest - lps_to_ras(SKULL_POINT_LPS)) < 12.0
    assert probed.max() > 0.5 * PEAK_ERROR_MM


def test_a_second_detection_replaces_the_first_results(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    logic = DetectionLogic(context.scene, launcher=InProcessFakeDetection)
    first = logic.detect(volume, DetectionOptions(model_path=model_dir))
    first_ids = {node.GetID() for node in first.nodes()}
    count_after_first = context.scene.GetNumberOfNodes()

    second = logic.detect(volume, DetectionOptions(model_path=model_dir, stride=1))

    assert context.scene.GetNumberOfNodes() == count_after_first
    assert all(context.scene.GetNodeByID(node_id) is None for node_id in first_ids)
    assert logic.results(volume) == second
    assert table_row(second.scores)["Stride"] == 1


def test_a_fixed_threshold_sets_overlay_and_candidates(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    options = DetectionOptions(model_path=model_dir,
                               display=ResultDisplayOptions(overlay_threshold_mm=40.0, overlay_opacity=0.8))
    composite = slice_composite(context.scene)
    results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(volume, options)

    assert results.threshold_mm == 40.0
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == 40.0
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    errors = slicer.util.arrayFromVolume(results.error_map)
    labelmap, _ = segment_mask(results.candidates, results.candidates.GetSegmentation().GetNthSegmentID(0))
    # The candidate is exactly the connected voxels at or above 40 mm around the peak.
    assert labelmap.sum() == (errors >= 40.0).sum()


def test_results_of_a_transformed_input_move_with_it(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    transform = context.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
        volume, DetectionOptions(model_path=model_dir))
    assert results.error_map.GetTransformNodeID() == transform.GetID()
    assert results.skull_surface.GetTransformNodeID() == transform.GetID()
    assert results.candidates.GetTransformNodeID() == transform.GetID()


def test_detection_through_a_child_process_reports_progress(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    logic = DetectionLogic(context.scene, python_command=[sys.executable, "-m", "PositionRegressionADLib.testing"],
                           work_dir=tmp_path)
    updates = []
    results = logic.detect(volume, DetectionOptions(model_path=model_dir, device="cpu"), on_progress=updates.append)

    messages = [update.message for update in updates]
    assert messages == ["Exporting the input", "reading the input", "computing the error map", "done",
                        "Adding the results to the scene"]
    fractions = [update.fraction for update in updates]
    assert fractions == sorted(fractions)
    assert table_row(results.scores)["Device"] == "cpu"
    assert list(tmp_path.glob("ppr-detect-*")) == []


def test_the_detect_command_is_the_ppr_cli(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    launcher = RecordingLauncher(InProcessFakeDetection)
    DetectionLogic(context.scene, launcher=launcher, python_command=["python"]).detect(
        volume, DetectionOptions(model_path=model_dir, device="cuda", stride=1))
    command = launcher.commands[0]
    assert command[:4] == ["python", "-m", "ppr", "detect"]
    assert Path(command[4]).name == "input.nii.gz"
    assert command[command.index("--model") + 1] == str(model_dir)
    assert Path(command[command.index("--out") + 1]).name == "error_map.nii.gz"
    assert command[command.index("--device") + 1] == "cuda"
    assert command[command.index("--stride") + 1] == "1"
    assert "--json" in command and "--progress" in command
