"""Round trips in physical space: a head moved by a known rigid transform is found again, and a
point marker taken to model space and back lands where it started."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import RegistrationError
from ppr.image.geometry import Grid
from ppr.image.preprocess import prepare_reference, to_input_space, to_model_space
from ppr.image.registration import affine_matrix_4x4, register_to_reference
from synthetic_heads import make_head_to_physical, oblique_direction, synthetic_head

CONFIG = PreprocessConfig(size=96, spacing_mm=2.0)
KNOWN_ROTATION_DEG = (8.0, -6.0, 12.0)
KNOWN_TRANSLATION_MM = (10.0, -7.0, 5.0)
# Oblique acquisition with thick slices: in-plane 1.3 mm, 5 mm slices, tilted direction cosines.
MOVED_GRID = dict(size=(170, 170, 44), spacing=(1.3, 1.3, 5.0), direction=oblique_direction((10.0, -7.0, 25.0)))


@pytest.fixture(scope="module")
def reference() -> sitk.Image:
    return prepare_reference(synthetic_head(size=(100, 100, 48), spacing=(2.0, 2.0, 4.0)), CONFIG)


@pytest.fixture(scope="module")
def known() -> sitk.Euler3DTransform:
    return make_head_to_physical(KNOWN_ROTATION_DEG, KNOWN_TRANSLATION_MM)


@pytest.fixture(scope="module")
def moved(known) -> sitk.Image:
    return synthetic_head(head_to_physical=known, table=True, **MOVED_GRID)


def rotation_error_deg(found: sitk.Transform, expected: sitk.Transform) -> float:
    a = np.asarray(found.GetMatrix()).reshape(3, 3)
    b = np.asarray(expected.GetMatrix()).reshape(3, 3)
    return float(np.rad2deg(np.arccos(np.clip((np.trace(a.T @ b) - 1.0) / 2.0, -1.0, 1.0))))


def displacement_mm(found: sitk.Transform, expected: sitk.Transform, point) -> float:
    return float(np.linalg.norm(np.subtract(found.TransformPoint(point), expected.TransformPoint(point))))


def test_known_rigid_motion_is_registered_back_within_1mm_and_1degree(reference, known, moved):
    result = register_to_reference(moved, reference, CONFIG)
    # The reference head sits at the identity pose, so model points are head-frame points and
    # the transform found (model -> input) must be the known head -> physical motion.
    assert rotation_error_deg(result.transform, known) < 1.0
    assert displacement_mm(result.transform, known, (0.0, 0.0, 0.0)) < 1.0
    # Over the whole head, not only at its centre (rotation errors grow with distance).
    corners = [(x, y, z) for x in (-60, 60) for y in (-75, 75) for z in (-40, 60)]
    assert max(displacement_mm(result.transform, known, p) for p in corners) < 1.5
    assert result.metric > CONFIG.min_registration_metric
    assert result.seconds > 0


def test_transform_matrix_matches_the_transform(known):
    matrix = affine_matrix_4x4(known)
    point = np.array([12.0, -30.0, 45.0])
    assert np.allclose(matrix[:3, :3] @ point + matrix[:3, 3], known.TransformPoint(point), atol=1e-9)
    assert np.allclose(matrix[3], [0, 0, 0, 1])


def marker_centroid_mm(image: sitk.Image) -> np.ndarray:
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(sitk.Cast(image > 0.5, sitk.sitkUInt8))
    return np.asarray(statistics.GetCentroid(1))


def test_point_marker_goes_to_model_space_and_back_within_one_voxel(reference, known, moved):
    result = to_model_space(moved, reference, CONFIG)
    # A marker around one input voxel, in the input's own (oblique, anisotropic) grid.
    marker_index = (100, 70, 25)
    start_mm = np.asarray(moved.TransformIndexToPhysicalPoint(marker_index))
    k, j, i = np.indices(moved.GetSize()[::-1])
    # Direction cosines are orthonormal: distances along the grid axes are distances in mm.
    offsets_mm = np.stack([i, j, k], axis=-1) - np.asarray(marker_index)
    distance_mm = np.linalg.norm(offsets_mm * np.asarray(moved.GetSpacing()), axis=-1)
    marker = sitk.GetImageFromArray((distance_mm <= 5.0).astype(np.float32))
    marker.CopyInformation(moved)

    in_model = sitk.Resample(marker, Grid.of(reference).size, result.registration.transform, sitk.sitkLinear,
                             reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection(), 0.0)
    model_mm = marker_centroid_mm(in_model)
    # In model space the marker is where the known motion says (model point -> input point).
    expected_model_mm = np.asarray(known.GetInverse().TransformPoint(start_mm))
    assert np.linalg.norm(model_mm - expected_model_mm) < CONFIG.spacing_mm

    back = to_input_space(in_model, result.registration.transform, moved)
    assert Grid.of(back) == Grid.of(moved)
    back_mm = marker_centroid_mm(back)
    assert np.linalg.norm(back_mm - start_mm) < max(moved.GetSpacing())
    # Within one voxel along every axis of the input grid.
    offset_index = np.linalg.solve(
        np.asarray(moved.GetDirection()).reshape(3, 3) * np.asarray(moved.GetSpacing()), back_mm - start_mm
    )
    assert np.all(np.abs(offset_index) < 1.0), offset_index


def test_prewindowed_scan_registers_to_a_true_hu_reference(reference, known):
    # Air at the window floor (-20) in the scan, -1000 in the reference: the shift of air to 0 and
    # the windowing make the two alike.
    config = PreprocessConfig(size=96, spacing_mm=2.0, prewindowed=True)
    scan = synthetic_head(head_to_physical=known, window_hu=(-20.0, 100.0), table=True, **MOVED_GRID)
    result = register_to_reference(scan, reference, config)
    assert rotation_error_deg(result.transform, known) < 1.0
    assert displacement_mm(result.transform, known, (0.0, 0.0, 0.0)) < 1.0


def test_something_that_is_not_a_head_is_refused(reference):
    # A water cylinder with a plastic shell: passes the intensity checks, but is no head.
    z, y, x = np.indices((40, 120, 120)).astype(float)
    radius = np.hypot(x - 60, y - 60) * 1.8
    values = np.where(radius < 95, 0.0, -1000.0) + np.where((radius > 90) & (radius < 95), 1000.0, 0.0)
    values[(z < 4) | (z > 35)] = -1000.0
    phantom = sitk.GetImageFromArray(values.astype(np.int16))
    phantom.SetSpacing((1.8, 1.8, 5.0))
    with pytest.raises(RegistrationError, match="does not look like a head CT"):
        register_to_reference(phantom, reference, CONFIG)
