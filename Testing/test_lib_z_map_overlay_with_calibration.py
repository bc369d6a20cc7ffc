"""With a calibrated model the Lib shows the z-map: a second volume node on the input's grid is the
slice overlay with the calibrated threshold, the skull surface probes z, the candidates are cut from
z, the scores table says "z"; the error map (mm) stays in the scene; user thresholds override; the
results survive an .mrb round trip, a second run replaces them, a failure adds nothing.

Most tests use the fake calibrated detector of ``fake_calibrated_detector`` (its z-map peaks somewhere
else than the error, so a test can tell which map a result shows);
the last test runs the real ``python -m ppr detect`` with a tiny calibrated bundle.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from vtk.util import numpy_support

from PositionRegressionADLib.colormap import BONE_FRACTION
from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.process import ChildProcess
from PositionRegressionADLib.report import REGION_LABELS, ResultImportError, table_row
from PositionRegressionADLib.rendering import render_slices, slice_pixel_of
from PositionRegressionADLib.results import (
    ROLE_ATTRIBUTE,
    ResultDisplayOptions,
    find_results,
    set_overlay_threshold,
    set_threshold,
)
from PositionRegressionADLib.scene_io import SceneContext, load_scene_mrb, load_volume, save_scene_mrb
from PositionRegressionADLib.skull_surface import ERROR_ARRAY_NAME, Z_ARRAY_NAME
from PositionRegressionADLib.testing import (
    InProcessFakeDetection,
    RecordingLauncher,
    lps_to_ras,
    scene_node_ids,
    segment_mask,
    volume_fingerprint,
)
from fake_calibrated_detector import (
    CALIBRATED_THRESHOLD_Z,
    LESION_LPS,
    SKULL_POINT_LPS,
    CalibratedFakeDetection,
    MissingZMapDetection,
)
from ppr.errors import BundleError
from lesion_head_scene import (  # noqa: F401 (fixtures, used by name)
    context, fake_peak_at_the_lesion, head_file, ijk_to_ras_array, model_dir, slice_composite,
)
from synthetic_heads import synthetic_head


def _detect(context, head_file, model_dir, launcher=CalibratedFakeDetection, **display):
    volume = load_volume(context, head_file)
    options = DetectionOptions(model_path=model_dir, display=ResultDisplayOptions(**display))
    return volume, DetectionLogic(context.scene, launcher=launcher).detect(volume, options)


def test_the_z_map_is_a_second_volume_shown_with_the_calibrated_threshold(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    composite = slice_composite(context.scene)
    fingerprint = volume_fingerprint(volume)
    launcher = RecordingLauncher(CalibratedFakeDetection)
    results = DetectionLogic(context.scene, launcher=launcher, work_dir=tmp_path).detect(
        volume, DetectionOptions(model_path=model_dir))
    report = launcher.report()

    assert find_results(context.scene, volume) == results
    z_node = results.z_map
    assert z_node is not None and z_node.GetName() == f"{volume.GetName()} anomaly z-map"
    assert z_node.GetAttribute(ROLE_ATTRIBUTE) == "ZMap" and context.scene.GetNodeByID(z_node.GetID()) is z_node
    assert z_node.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras_array(z_node), ijk_to_ras_array(volume))
    z = slicer.util.arrayFromVolume(z_node)
    errors = slicer.util.arrayFromVolume(results.error_map)
    assert z.max() == pytest.approx(report["z"]["max"])
    assert results.score_map == "z" and results.displayed_map_kind == "z" and results.displayed_map is z_node

    # Overlay: the z-map over the input, thresholded at the calibrated z.
    assert composite.GetBackgroundVolumeID() == volume.GetID()
    assert composite.GetForegroundVolumeID() == z_node.GetID()
    display = z_node.GetDisplayNode()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(CALIBRATED_THRESHOLD_Z)
    assert results.overlay_threshold == results.threshold_z == pytest.approx(CALIBRATED_THRESHOLD_Z)
    assert results.calibrated_threshold_z == pytest.approx(CALIBRATED_THRESHOLD_Z)
    assert display.GetColorNodeID() == results.error_map.GetDisplayNode().GetColorNodeID()
    # The error map stays, with its own mm display (percentile threshold) for whoever shows it.
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(
        np.percentile(errors[errors > 0], 98.0))

    # The most anomalous point is the detector's (highest z), not the error's peak.
    np.testing.assert_allclose(results.max_error_ras, lps_to_ras(report["max_error_lps"]), atol=1e-3)
    assert np.linalg.norm(np.array(results.max_error_ras) - lps_to_ras(SKULL_POINT_LPS)) < 10.0

    # Surface: z probed at every point, hottest at the z peak, coloured over the z-map's window.
    surface = results.skull_surface
    polydata = surface.GetPolyData()
    assert polydata.GetPointData().GetArray(ERROR_ARRAY_NAME) is None
    probed = numpy_support.vtk_to_numpy(polydata.GetPointData().GetArray(Z_ARRAY_NAME))
    points = numpy_support.vtk_to_numpy(polydata.GetPoints().GetData())
    assert probed.max() <= z.max() + 1e-4 and probed.max() > CALIBRATED_THRESHOLD_Z
    assert np.linalg.norm(points[int(np.argmax(probed))] - lps_to_ras(SKULL_POINT_LPS)) < 12.0
    surface_display = surface.GetDisplayNode()
    assert surface_display.GetActiveScalarName() == Z_ARRAY_NAME
    window = (display.GetLevel() - display.GetWindow() / 2, display.GetLevel() + display.GetWindow() / 2)
    # Bone up to the calibrated threshold, the ramp above it up to the overlay's maximum.
    low, high = surface_display.GetScalarRange()
    assert high == pytest.approx(window[1], abs=1e-4)
    assert low + BONE_FRACTION * (high - low) == pytest.approx(display.GetLowerThreshold(), abs=1e-4)

    # Candidates: cut from z at the calibrated threshold, around the z peak, not the error's peak.
    segmentation = results.candidates.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    labelmap, _ = segment_mask(results.candidates, segmentation.GetNthSegmentID(0))
    assert labelmap[np.unravel_index(int(np.argmax(z)), z.shape)]
    assert not labelmap[np.unravel_index(int(np.argmax(errors)), errors.shape)]
    assert labelmap.sum() == (z >= CALIBRATED_THRESHOLD_Z).sum()
    assert "peak z " in segmentation.GetNthSegment(0).GetName()

    # Scores: z, as reported, with the map and threshold used.
    row = table_row(results.scores)
    for region, label in REGION_LABELS.items():
        assert row[label] == report["regions"][region], label
    assert results.scores.GetColumnUnitLabel("Whole head") == "z"
    assert (row["Score map"], row["Overlay map"]) == ("z", "z")
    assert row["Overlay threshold"] == pytest.approx(CALIBRATED_THRESHOLD_Z)
    assert row["z max"] == report["z"]["max"] and row["Error max (mm)"] == report["error_mm"]["max"]

    assert volume_fingerprint(volume) == fingerprint
    assert list(tmp_path.glob("ppr-detect-*")) == []


def test_a_users_z_threshold_overrides_the_calibrated_one(context, head_file, model_dir):
    _, results = _detect(context, head_file, model_dir, overlay_threshold_z=12.0)
    z = slicer.util.arrayFromVolume(results.z_map)
    assert results.displayed_map is results.z_map
    assert results.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(12.0)
    labelmap, _ = segment_mask(results.candidates, results.candidates.GetSegmentation().GetNthSegmentID(0))
    assert labelmap.sum() == (z >= 12.0).sum() < (z >= CALIBRATED_THRESHOLD_Z).sum()
    assert table_row(results.scores)["Overlay threshold"] == pytest.approx(12.0)
    assert results.calibrated_threshold_z == pytest.approx(CALIBRATED_THRESHOLD_Z)
    set_overlay_threshold(results, 8.0)
    assert results.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(8.0)
    set_threshold(results, 33.0)  # the mm threshold belongs to the error map, whichever is shown
    assert results.error_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(33.0)
    assert results.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(8.0)


def test_a_users_mm_threshold_shows_the_error_map(context, head_file, model_dir):
    composite = slice_composite(context.scene)
    _, results = _detect(context, head_file, model_dir, overlay_threshold_mm=40.0)
    errors = slicer.util.arrayFromVolume(results.error_map)
    assert results.z_map is not None and results.score_map == "z"
    assert results.displayed_map is results.error_map and results.overlay_threshold == 40.0
    assert composite.GetForegroundVolumeID() == results.error_map.GetID()
    labelmap, _ = segment_mask(results.candidates, results.candidates.GetSegmentation().GetNthSegmentID(0))
    assert labelmap.sum() == (errors >= 40.0).sum()
    assert results.skull_surface.GetDisplayNode().GetActiveScalarName() == ERROR_ARRAY_NAME
    row = table_row(results.scores)
    assert (row["Score map"], row["Overlay map"], row["Overlay threshold"]) == ("z", "mm", 40.0)


def test_without_calibration_the_error_map_is_shown_as_before(context, head_file, model_dir):
    _, results = _detect(context, head_file, model_dir, launcher=InProcessFakeDetection)
    errors = slicer.util.arrayFromVolume(results.error_map)
    assert results.z_map is None and results.score_map == "mm" and results.displayed_map is results.error_map
    assert results.threshold_z is None and results.nodes()[-1] is results.candidates
    assert results.overlay_threshold == results.threshold_mm == pytest.approx(np.percentile(errors[errors > 0], 98.0))
    row = table_row(results.scores)
    assert (row["Score map"], row["Overlay map"]) == ("mm", "mm")
    assert results.scores.GetColumnUnitLabel("Whole head") == "mm"
    assert not any(name.startswith("z ") for name in row)


def test_a_z_threshold_without_calibration_is_refused_and_adds_nothing(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    before = scene_node_ids(context.scene)
    with pytest.raises(BundleError, match="no calibration"):
        DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
            volume, DetectionOptions(model_path=model_dir, display=ResultDisplayOptions(overlay_threshold_z=3.0)))
    assert scene_node_ids(context.scene) == before
    with pytest.raises(ValueError, match="not both"):
        ResultDisplayOptions(overlay_threshold_mm=1.0, overlay_threshold_z=1.0)


def test_a_missing_z_map_fails_and_leaves_the_earlier_results(context, head_file, model_dir, tmp_path):
    volume, first = _detect(context, head_file, model_dir)
    before = scene_node_ids(context.scene)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ResultImportError, match="did not write its z-map"):
        DetectionLogic(context.scene, launcher=MissingZMapDetection, work_dir=work).detect(
            volume, DetectionOptions(model_path=model_dir))
    assert scene_node_ids(context.scene) == before
    assert find_results(context.scene, volume) == first
    assert list(work.iterdir()) == []


def test_a_second_run_replaces_the_z_map_and_an_uncalibrated_run_removes_it(context, head_file, model_dir):
    volume, first = _detect(context, head_file, model_dir)
    count = context.scene.GetNumberOfNodes()
    logic = DetectionLogic(context.scene, launcher=CalibratedFakeDetection)
    second = logic.detect(volume, DetectionOptions(model_path=model_dir))
    assert context.scene.GetNumberOfNodes() == count
    assert context.scene.GetNodeByID(first.z_map.GetID()) is None
    assert logic.results(volume) == second and second.z_map is not None

    third = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
        volume, DetectionOptions(model_path=model_dir))
    assert context.scene.GetNodeByID(second.z_map.GetID()) is None
    assert third.z_map is None and find_results(context.scene, volume) == third
    z_maps = [node for node in (context.scene.GetNthNode(i) for i in range(context.scene.GetNumberOfNodes()))
              if node.GetAttribute(ROLE_ATTRIBUTE) == "ZMap"]
    assert z_maps == []


def test_the_z_map_and_its_display_survive_an_mrb_round_trip(context, head_file, model_dir, tmp_path):
    volume, results = _detect(context, head_file, model_dir, overlay_threshold_z=7.5)
    mrb = save_scene_mrb(context.scene, tmp_path / "out" / "scene.mrb")
    loaded = SceneContext.create(tmp_path / "cache2")
    load_scene_mrb(loaded, mrb)
    volumes = [loaded.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(loaded.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    [volume2] = [node for node in volumes if node.GetName() == volume.GetName()]
    results2 = DetectionLogic(loaded.scene).results(volume2)
    assert results2 is not None and results2.z_map is not None
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(results2.z_map), slicer.util.arrayFromVolume(results.z_map))
    assert results2.displayed_map is results2.z_map
    assert results2.threshold_z == pytest.approx(7.5) and results2.calibrated_threshold_z == pytest.approx(5.0)
    assert results2.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(7.5)
    assert results2.skull_surface.GetDisplayNode().GetActiveScalarName() == Z_ARRAY_NAME
    np.testing.assert_allclose(results2.max_error_ras, results.max_error_ras)
    assert table_row(results2.scores)["Score map"] == "z"


def test_slice_renders_show_the_z_map(context, head_file, model_dir, tmp_path):
    from test_lib_rendering_shows_error_where_it_is import read_png

    volume, results = _detect(context, head_file, model_dir)
    [axial, *_] = render_slices(context, results, volume, tmp_path / "png" / "head", size_px=256)
    pixels = read_png(axial)
    row, col = slice_pixel_of(context, volume, "Axial", results.max_error_ras, 256)
    hot = pixels[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3).mean(axis=0)
    assert hot[0] - hot[2] > 30 and hot[0] > 150, f"no z overlay at the highest z: {hot}"
    # Through the error's peak (the lesion) the z-map is below threshold: no overlay colour there.
    lesion_ras = tuple(lps_to_ras(LESION_LPS))
    [lesion_axial, *_] = render_slices(context, results, volume, tmp_path / "png" / "lesion", size_px=256,
                                       point_ras=lesion_ras)
    lesion_pixels = read_png(lesion_axial)
    row, col = slice_pixel_of(context, volume, "Axial", lesion_ras, 256)
    patch = lesion_pixels[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3)
    assert (patch.max(axis=1) - patch.min(axis=1)).max() < 30, "the error map, not the z-map, was rendered"


# ------------------------------------------------------------------------------------------------
# The real detector with a tiny calibrated bundle: the z-map the core wrote arrives unchanged.


@pytest.fixture(scope="module")
def calibrated_bundle(tmp_path_factory) -> Path:
    torch = pytest.importorskip("torch")
    from ppr.workflows.bundle import CALIBRATION, save_bundle, write_checksums
    from ppr.statistics.calibration import fit_calibration, save_calibration
    from ppr.config import PreprocessConfig
    from ppr.networks.network import PPRNet
    from ppr.image.preprocess import prepare_reference

    config = PreprocessConfig(size=40, spacing_mm=6.0, prewindowed=True)
    reference = prepare_reference(synthetic_head(size=(80, 80, 36), spacing=(2.6, 2.6, 5.0),
                                                 window_hu=(-20.0, 100.0)), config)
    torch.manual_seed(0)
    path = save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", PPRNet(m=2), config, reference,
                       {"note": "untrained, for tests only"})
    rng = np.random.default_rng(1)
    maps = [rng.normal(20.0, 3.0, (40, 40, 40)).astype(np.float32) for _ in range(3)]
    save_calibration(fit_calibration(maps, ["a", "b", "c"]), path / CALIBRATION)
    write_checksums(path)
    return path


@pytest.mark.slow
def test_real_detection_with_a_calibrated_bundle_puts_the_cores_z_map_in_the_scene(
        context, head_file, calibrated_bundle, tmp_path):
    from ppr.workflows.bundle import load_bundle

    volume = load_volume(context, head_file)
    launcher = RecordingLauncher(ChildProcess)
    work = tmp_path / "work"
    work.mkdir()

    results = DetectionLogic(context.scene, launcher=launcher, work_dir=work,
                             python_command=[sys.executable]).detect(
        volume, DetectionOptions(model_path=calibrated_bundle, device="cpu", stride=4))
    report = launcher.report()
    calibration = load_bundle(calibrated_bundle).calibration

    assert report["score_map"] == "z" and Path(report["z_map"]).parent == Path(launcher.commands[0][
        launcher.commands[0].index("--out") + 1]).parent
    assert results.z_map is not None and results.displayed_map is results.z_map
    z = slicer.util.arrayFromVolume(results.z_map)
    np.testing.assert_array_equal(ijk_to_ras_array(results.z_map), ijk_to_ras_array(volume))
    assert z.max() <= max(report["z"]["max"], 0.0) + 1e-4
    assert results.threshold_z == pytest.approx(calibration.overlay_threshold_z)
    assert results.z_map.GetDisplayNode().GetLowerThreshold() == pytest.approx(calibration.overlay_threshold_z)
    row = table_row(results.scores)
    for region, label in REGION_LABELS.items():
        # A region that misses the scan's measured head (null in the report) is NaN in the table.
        expected = report["regions"][region]
        assert row[label] == pytest.approx(float("nan") if expected is None else expected, nan_ok=True), label
    assert row["Score map"] == "z" and row["z p99"] == report["z"]["p99"]
    np.testing.assert_allclose(results.max_error_ras, lps_to_ras(report["max_error_lps"]), atol=1e-3)
    # The reported point is a voxel of the z-map the scene shows.
    ijk = np.linalg.inv(ijk_to_ras_array(volume)) @ np.array([*results.max_error_ras, 1.0])
    assert np.allclose(ijk[:3], np.round(ijk[:3]), atol=1e-3)
    assert list(work.iterdir()) == []
