"""A scene with detection results saves to .mrb and loads back with every result node and its display."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import slicer
from vtk.util import numpy_support

from PositionRegressionADLib.colormap import COLOR_TABLE_SINGLETON_TAG, SURFACE_TABLE_SINGLETON_TAG
from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.report import table_row
from PositionRegressionADLib.scene_io import (
    SceneContext,
    SceneFileError,
    load_scene_mrb,
    load_volume,
    save_node,
    save_scene_mrb,
)
from PositionRegressionADLib.skull_surface import ERROR_ARRAY_NAME
from PositionRegressionADLib.testing import InProcessFakeDetection, segment_mask
from synthetic_heads import oblique_direction, synthetic_head


@pytest.fixture()
def detected(tmp_path):
    image = synthetic_head(size=(64, 64, 30), spacing=(3.0, 3.2, 5.0), direction=oblique_direction(),
                           window_hu=(-20.0, 100.0), lesion_center_mm=(-25.0, 0.0, 20.0))
    head = tmp_path / "head.nii.gz"
    sitk.WriteImage(image, str(head))
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, head)
    model = tmp_path / "model"
    model.mkdir()
    results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
        volume, DetectionOptions(model_path=model))
    return context, volume, results


def _by_name(scene, class_name, name):
    nodes = [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]
    matches = [node for node in nodes if node.GetName() == name]
    assert len(matches) == 1, f"{len(matches)} {class_name} named {name!r}"
    return matches[0]


def test_results_survive_a_save_and_load_through_mrb(detected, tmp_path):
    context, volume, results = detected
    mrb = save_scene_mrb(context.scene, tmp_path / "out" / "scene.mrb")
    assert mrb.stat().st_size > 10_000

    loaded = SceneContext.create(tmp_path / "cache2")
    load_scene_mrb(loaded, mrb)
    volume2 = _by_name(loaded.scene, "vtkMRMLScalarVolumeNode", volume.GetName())
    results2 = DetectionLogic(loaded.scene).results(volume2)
    assert results2 is not None

    np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume2), slicer.util.arrayFromVolume(volume))
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(results2.error_map),
                                  slicer.util.arrayFromVolume(results.error_map))
    np.testing.assert_allclose(results2.max_error_ras, results.max_error_ras)
    assert results2.threshold_mm == pytest.approx(results.threshold_mm, rel=1e-5)

    display = results2.error_map.GetDisplayNode()
    inferno = loaded.scene.GetSingletonNode(COLOR_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")
    assert inferno is not None and inferno.GetNumberOfColors() == 256
    assert display.GetColorNodeID() == inferno.GetID()
    assert display.GetApplyThreshold()
    assert display.GetLowerThreshold() == pytest.approx(results.error_map.GetDisplayNode().GetLowerThreshold())

    surface, surface2 = results.skull_surface.GetPolyData(), results2.skull_surface.GetPolyData()
    assert surface2.GetNumberOfPoints() == surface.GetNumberOfPoints()
    np.testing.assert_allclose(numpy_support.vtk_to_numpy(surface2.GetPoints().GetData()),
                               numpy_support.vtk_to_numpy(surface.GetPoints().GetData()), atol=1e-3)
    np.testing.assert_allclose(numpy_support.vtk_to_numpy(surface2.GetPointData().GetArray(ERROR_ARRAY_NAME)),
                               numpy_support.vtk_to_numpy(surface.GetPointData().GetArray(ERROR_ARRAY_NAME)), atol=1e-4)
    surface_table = loaded.scene.GetSingletonNode(SURFACE_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")
    assert surface_table is not None and surface_table.GetNumberOfColors() == 256
    assert results2.skull_surface.GetDisplayNode().GetColorNodeID() == surface_table.GetID()
    assert results2.skull_surface.GetDisplayNode().GetScalarRange() == pytest.approx(
        results.skull_surface.GetDisplayNode().GetScalarRange(), abs=1e-4)  # saved with 6 digits
    assert results2.skull_surface.GetDisplayNode().GetActiveScalarName() == ERROR_ARRAY_NAME

    row, row2 = table_row(results.scores), table_row(results2.scores)
    assert row2.keys() == row.keys()
    for key, value in row.items():
        assert row2[key] == (pytest.approx(value) if isinstance(value, float) else value), key

    segmentation, segmentation2 = results.candidates.GetSegmentation(), results2.candidates.GetSegmentation()
    assert segmentation2.GetNumberOfSegments() == segmentation.GetNumberOfSegments() >= 1
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        assert segmentation2.GetSegment(segment_id).GetName() == segmentation.GetSegment(segment_id).GetName()
        mask, _ = segment_mask(results.candidates, segment_id)
        mask2, _ = segment_mask(results2.candidates, segment_id)
        # A saved labelmap may be cropped to its content: compare voxel counts.
        assert mask2.sum() == mask.sum()


def test_saving_a_result_node_does_not_change_it(detected, tmp_path):
    context, _, results = detected
    count = context.scene.GetNumberOfNodes()
    storage_file = results.error_map.GetStorageNode().GetFileName()
    path = save_node(results.error_map, tmp_path / "files" / "error_map.nii.gz")
    written = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), slicer.util.arrayFromVolume(results.error_map))
    save_node(results.skull_surface, tmp_path / "files" / "skull_surface.vtk")
    assert context.scene.GetNumberOfNodes() == count
    assert results.error_map.GetStorageNode().GetFileName() == storage_file


def test_a_missing_scene_file_is_a_clear_error(tmp_path):
    with pytest.raises(SceneFileError, match="does not exist"):
        load_scene_mrb(SceneContext.create(tmp_path / "cache"), tmp_path / "missing.mrb")
