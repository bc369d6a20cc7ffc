"""Detection results on a real head CT of the dev data: input geometry, skull surface on the real skull,
and (with the real ``ppr detect`` and a model bundle) the scores the core computed, unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from scipy import ndimage
from vtk.util import numpy_support

from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADLib.skull_surface import bone_threshold
from PositionRegressionADLib.testing import InProcessFakeDetection, volume_fingerprint

CASE = "ctich_054"  # no finding


def _ijk_to_ras(node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


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
