"""The web viewer's session: a scan, a detection, its display and its downloads, all through the Lib.

The detector is the Lib's in-process fake (``PositionRegressionADLib.testing``): its numbers mean
nothing about anomalies; what is checked is that the page's session shows and writes exactly what
the Lib put in the scene, refuses what must wait, and stays usable after a failure or a cancel.
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from PositionRegressionADLib.detection_logic import DetectionCancelled, DetectionFailedError, DetectionLogic
from PositionRegressionADLib.report import REGION_LABELS, table_row
from PositionRegressionADLib.results import ROLE_ATTRIBUTE
from PositionRegressionADLib.scene_io import SceneContext, save_node
from PositionRegressionADLib.testing import FAKE_MODE_VARIABLE, InProcessFakeDetection, synthetic_head_node
from PositionRegressionADWeb.session import SessionBusyError, ViewerSession
from ppr.errors import InputImageError


@pytest.fixture()
def head_file(tmp_path) -> Path:
    """The Lib's synthetic head written to NIfTI, as a scan the viewer reads from disk."""
    scratch = SceneContext.create(tmp_path / "scratch-cache")
    return save_node(synthetic_head_node(scratch.scene), tmp_path / "synthetic_head.nii.gz")


@pytest.fixture()
def session(tmp_path) -> ViewerSession:
    context = SceneContext.create(tmp_path / "cache")
    session = ViewerSession(context, DetectionLogic(context.scene, launcher=InProcessFakeDetection))
    # One slice view, as trame-slicer's views put in the scene.
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(context.scene)
    slice_node = slicer.vtkMRMLSliceNode()
    slice_node.SetLayoutName("Red")
    slice_node.SetOrientationToAxial()
    context.scene.AddNode(slice_node)
    composite = slicer.vtkMRMLSliceCompositeNode()
    composite.SetLayoutName("Red")
    context.scene.AddNode(composite)
    (tmp_path / "model").mkdir()
    return session


def _detect(session: ViewerSession, model: Path):
    session.start_detection(session.detection_options(model, "cpu", 4))
    while not session.detection_finished():
        session.take_progress()
    return session.finish_detection()


def _distance_to_plane_mm(slice_node: slicer.vtkMRMLSliceNode, point_ras) -> float:
    slice_to_ras = slice_node.GetSliceToRAS()
    normal = np.array([slice_to_ras.GetElement(row, 2) for row in range(3)])
    origin = np.array([slice_to_ras.GetElement(row, 3) for row in range(3)])
    return float(abs(normal @ (np.asarray(point_ras) - origin)))


def _composite(session: ViewerSession) -> slicer.vtkMRMLSliceCompositeNode:
    return session.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")


def test_a_detection_shows_the_lib_results_over_the_scan_and_moves_the_slice_to_the_peak(session, head_file, tmp_path):
    volume = session.load_scan(head_file, "head")
    assert _composite(session).GetBackgroundVolumeID() == volume.GetID()
    assert _composite(session).GetForegroundVolumeID() is None

    results = _detect(session, tmp_path / "model")

    assert session.results == results and not session.running
    assert _composite(session).GetForegroundVolumeID() == results.error_map.GetID()
    assert _composite(session).GetForegroundOpacity() == pytest.approx(0.5)
    slice_node = session.scene.GetFirstNodeByClass("vtkMRMLSliceNode")
    assert _distance_to_plane_mm(slice_node, results.max_error_ras) < 1e-6  # moved there when the run finished
    slice_node.SetSliceOffset(results.max_error_ras[2] + 40.0)
    assert _distance_to_plane_mm(slice_node, results.max_error_ras) == pytest.approx(40.0)
    assert session.jump_to_highest_error() == results.max_error_ras
    assert _distance_to_plane_mm(slice_node, results.max_error_ras) < 1e-6

    rows = session.score_rows()
    assert [row.region for row in rows[:4]] == list(REGION_LABELS)
    assert all(row.region is None for row in rows[4:])
    assert {row.label: row.value for row in rows} == table_row(results.scores)
    assert rows[0].text() == f"{rows[0].value:.2f}" and rows[0].unit == "mm"


def test_threshold_and_opacity_change_the_overlay_and_later_runs_keep_the_opacity(session, head_file, tmp_path):
    session.load_scan(head_file, "head")
    results = _detect(session, tmp_path / "model")
    low, high = session.overlay_range()
    assert session.overlay_unit() == "mm" and session.overlay_threshold() == pytest.approx(results.threshold_mm)
    assert low == 0.0 and high > results.threshold_mm > 0.0

    session.set_overlay_threshold(7.5)
    session.set_overlay_opacity(0.3)
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(7.5)
    assert _composite(session).GetForegroundOpacity() == pytest.approx(0.3)
    session.set_overlay_opacity(4.0)
    assert _composite(session).GetForegroundOpacity() == pytest.approx(1.0)

    session.set_overlay_opacity(0.3)
    again = _detect(session, tmp_path / "model")
    assert _composite(session).GetForegroundVolumeID() == again.error_map.GetID()
    assert _composite(session).GetForegroundOpacity() == pytest.approx(0.3)


def test_downloads_hold_what_the_scene_holds(session, head_file, tmp_path):
    volume = session.load_scan(head_file, "head")
    results = _detect(session, tmp_path / "model")

    with session.write_scores_csv(tmp_path / "out" / "scores.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    expected = table_row(results.scores)
    assert (row["Scan"], row["Status"]) == ("head", "ok")
    for label in REGION_LABELS.values():
        assert float(row[label]) == expected[label]

    error_map = sitk.ReadImage(str(session.write_error_map(tmp_path / "out" / "error_map.nii.gz")))
    assert error_map.GetSize() == volume.GetImageData().GetDimensions()
    np.testing.assert_allclose(sitk.GetArrayFromImage(error_map), slicer.util.arrayFromVolume(results.error_map))

    with zipfile.ZipFile(session.write_scene(tmp_path / "out" / "scene.mrb")) as archive:
        names = archive.namelist()
        scene_text = archive.read(next(name for name in names if name.endswith(".mrml"))).decode()
    assert results.error_map.GetName() in scene_text and results.skull_surface.GetName() in scene_text
    assert any(name.endswith(".nii.gz") or name.endswith(".nrrd") for name in names)


def test_a_failed_detection_gives_the_detectors_message_and_leaves_the_results_as_they_were(
        session, head_file, tmp_path, monkeypatch):
    session.load_scan(head_file, "head")
    first = _detect(session, tmp_path / "model")
    monkeypatch.setenv(FAKE_MODE_VARIABLE, "refuse")
    with pytest.raises(DetectionFailedError, match="single slice"):
        _detect(session, tmp_path / "model")
    assert not session.running and session.results == first
    monkeypatch.setenv(FAKE_MODE_VARIABLE, "ok")
    assert _detect(session, tmp_path / "model") != first


def test_a_cancelled_detection_adds_nothing_and_a_new_one_can_start(session, head_file, tmp_path):
    session.load_scan(head_file, "head")
    session.start_detection(session.detection_options(tmp_path / "model", "cpu", 4))
    session.cancel_detection()
    with pytest.raises(DetectionCancelled):
        session.finish_detection()
    assert session.results is None and not session.running
    assert _detect(session, tmp_path / "model") is not None


def test_what_must_wait_for_a_run_or_a_scan_is_refused_with_a_message(session, head_file, tmp_path):
    with pytest.raises(InputImageError, match="Load a head CT first"):
        session.start_detection(session.detection_options(tmp_path / "model", "cpu", 4))
    with pytest.raises(InputImageError, match="no results yet"):
        session.write_error_map(tmp_path / "error_map.nii.gz")
    session.load_scan(head_file, "head")
    session.start_detection(session.detection_options(tmp_path / "model", "cpu", 4))
    with pytest.raises(SessionBusyError, match="wait for it to finish or cancel it"):
        session.load_scan(head_file, "other")
    with pytest.raises(SessionBusyError):
        session.start_detection(session.detection_options(tmp_path / "model", "cpu", 4))
    session.cancel_detection()


def test_loading_another_scan_replaces_the_previous_one_and_its_results(session, head_file, tmp_path):
    first = session.load_scan(head_file, "first")
    _detect(session, tmp_path / "model")
    second = session.load_scan(head_file, "second")
    scene = session.scene
    assert not scene.IsNodePresent(first) and scene.IsNodePresent(second)
    leftovers = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())
                 if scene.GetNthNode(i).GetAttribute(ROLE_ATTRIBUTE)]
    assert leftovers == []
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1
    assert session.results is None


def test_with_a_calibrated_model_the_page_shows_and_thresholds_the_z_map(tmp_path, head_file):
    calibrated = pytest.importorskip("fake_calibrated_detector")
    context = SceneContext.create(tmp_path / "cache")
    session = ViewerSession(context, DetectionLogic(context.scene, launcher=calibrated.CalibratedFakeDetection))
    composite = slicer.vtkMRMLSliceCompositeNode()
    context.scene.AddNode(composite)
    (tmp_path / "model").mkdir()
    session.load_scan(head_file, "head")
    results = _detect(session, tmp_path / "model")

    assert results.z_map is not None and session.overlay_unit() == "z"
    assert composite.GetForegroundVolumeID() == results.z_map.GetID()
    assert session.overlay_threshold() == pytest.approx(calibrated.CALIBRATED_THRESHOLD_Z)
    session.set_overlay_threshold(7.0)
    assert results.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(7.0)
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(results.threshold_mm)
    session.set_overlay_opacity(0.25)
    assert (composite.GetForegroundVolumeID(), composite.GetForegroundOpacity()) == (results.z_map.GetID(), 0.25)
    assert [row.unit for row in session.score_rows()[:4]] == ["z"] * 4
    z_map = sitk.ReadImage(str(session.write_z_map(tmp_path / "out" / "z_map.nii.gz")))
    np.testing.assert_allclose(sitk.GetArrayFromImage(z_map), slicer.util.arrayFromVolume(results.z_map))


def test_without_calibration_there_is_no_z_map_to_download(session, head_file, tmp_path):
    session.load_scan(head_file, "head")
    _detect(session, tmp_path / "model")
    with pytest.raises(InputImageError, match="not calibrated"):
        session.write_z_map(tmp_path / "z_map.nii.gz")
