"""Registration on heads that are not as the header says: voxels upside down (slice order reversed,
header unchanged) are read mirrored and the transform still maps model points to the stored scan's
points; a DICOM head whose anatomical axes lie ~90 degrees from the reference's (CT-ICH headers put
front-back on x) no longer starts facing backwards; a head with a skull flap missing; refusals that
say the figure, the threshold and what to check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.image import geometry
from ppr.workflows.bundle import load_bundle
from ppr.errors import RegistrationError
from ppr.image.imageio import read_image
from ppr.image.intensity import window
from ppr.image.masks import intracranial_mask
from ppr.image.registration import affine_matrix_4x4, register_to_reference

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "PositionRegressionAD" / "Resources" / "Models" / "ppr-ctich-default"
DEV = ROOT.parent / "shared" / "data" / "ct-ich-dev"
REAL = ROOT.parent / "shared" / "data" / "real-hu-dicom"


@pytest.fixture(scope="module")
def bundle():
    if not (BUNDLE / "config.json").exists():
        pytest.skip("bundled model not present")
    return load_bundle(BUNDLE)


def _input(bundle, path) -> sitk.Image:
    """What preprocessing hands the registration: clipped to the window, anti-aliased."""
    if not Path(path).exists():
        pytest.skip(f"{path} not present")
    config = bundle.preprocess
    return geometry.anti_alias(window(read_image(str(path)), config.window_hu), config.spacing_mm)


def _array_flipped(image: sitk.Image, axis: int) -> sitk.Image:
    """The voxel array reversed along index axis ``axis`` (x, y, z), header unchanged."""
    array = np.ascontiguousarray(np.flip(sitk.GetArrayFromImage(image), axis=2 - axis))
    flipped = sitk.GetImageFromArray(array)
    flipped.CopyInformation(image)
    return flipped


def _model_corners(reference: sitk.Image) -> list[np.ndarray]:
    centre = np.asarray(reference.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2 for s in reference.GetSize()]))
    return [centre + np.array([x, y, z]) for x in (-70, 70) for y in (-70, 70) for z in (-50, 50)]


@pytest.fixture(scope="module")
def stored_054(bundle):
    image = _input(bundle, DEV / "ctich_054.nii.gz")
    return image, register_to_reference(image, bundle.reference, bundle.preprocess)


def test_a_scan_as_stored_is_not_flipped_and_its_mirrored_reading_is_screened_out(stored_054):
    _, result = stored_054
    assert result.flipped_axes == ()
    assert result.note == ""
    assert isinstance(result.transform, sitk.Euler3DTransform)
    assert result.metric > 0.6  # 0.645 measured
    # The mirrored readings' starts were clearly worse (-0.06): not registered in full.
    assert [axes for axes, _ in result.readings] == [()]


def test_upside_down_voxels_are_read_mirrored_and_mapped_back_to_the_stored_voxels(bundle, stored_054):
    image, stored = stored_054
    upside_down = _array_flipped(image, 2)
    result = register_to_reference(upside_down, bundle.reference, bundle.preprocess)
    figures = dict(result.readings)
    print("readings", result.readings, "seconds", result.seconds)
    assert result.flipped_axes == (2,)
    # Measured: 0.645 mirrored against 0.387 as the header places it (gap +0.26; +0.12 to +0.31 on
    # 6 dev cases, against FLIP_MARGIN 0.03).
    assert figures[(2,)] - figures[()] > 0.2
    assert result.metric == pytest.approx(stored.metric, abs=0.01)
    assert "upside down" in result.note and f"{result.metric:.3f}" in result.note
    matrix = affine_matrix_4x4(result.transform)
    assert np.linalg.det(matrix[:3, :3]) == pytest.approx(-1.0, abs=1e-6)
    # The transform maps model points to points of the upside-down image as stored: the stored
    # scan's transform followed by the array flip's mirror (about the box centre, across z).
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    normal = direction[:, 2]
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(
        [(s - 1) / 2 for s in image.GetSize()]))
    expected = affine_matrix_4x4(stored.transform)
    worst = 0.0
    for point in _model_corners(bundle.reference):
        q = expected[:3, :3] @ point + expected[:3, 3]
        q = q - 2.0 * ((q - centre) @ normal) * normal
        worst = max(worst, float(np.linalg.norm(matrix[:3, :3] @ point + matrix[:3, 3] - q)))
    print("max corner distance to the mirrored stored transform (mm)", worst)
    assert worst < 1.5
    # And a model-space map taken back with the inverse lands on the flipped voxels.
    marker = sitk.Image(bundle.reference.GetSize(), sitk.sitkFloat32)
    marker.CopyInformation(bundle.reference)
    marker[40:60, 50:70, 70:90] = 1.0
    on_stored = sitk.GetArrayFromImage(geometry.to_input_space(marker, stored.transform, image))
    on_flipped = sitk.GetArrayFromImage(geometry.to_input_space(marker, result.transform, upside_down))
    overlap = np.logical_and(on_stored > 0.5, np.flip(on_flipped, axis=0) > 0.5).sum()
    assert overlap / max((on_stored > 0.5).sum(), 1) > 0.8


def test_a_dicom_head_quarter_turned_from_the_reference_no_longer_starts_facing_backwards(bundle):
    # invesalius-0051 (supine, header right): before this change the start took the front-back
    # axis's sign by a coin toss (the frames are ~90 degrees apart) and ended 180 degrees off,
    # pitched by 45 degrees, quality 0.419. Both signs are now searched: 0.683.
    image = _input(bundle, REAL / "invesalius-0051")
    result = register_to_reference(image, bundle.reference, bundle.preprocess)
    print("invesalius-0051", result.metric, result.readings, result.seconds)
    assert result.flipped_axes == ()
    assert result.metric > 0.6


def _without_skull_flap(image: sitk.Image, bundle, direction, half_mm: float = 40.0) -> sitk.Image:
    """Bone and scalp in an 8 x 8 cm patch (outward from the cranium's centre along ``direction``)
    set to air; the intracranial contents stay."""
    config = bundle.preprocess
    coarse = geometry.resample_isotropic(image, 2.0, default_value=config.window_hu[0])
    cranium = intracranial_mask(coarse, config)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(cranium)
    centre = np.asarray(statistics.GetCentroid(1))
    inside = sitk.GetArrayViewFromImage(
        sitk.Resample(cranium, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)) > 0
    array = sitk.GetArrayFromImage(image)
    index = np.indices(array.shape).reshape(3, -1)[::-1].T.astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    points = np.asarray(image.GetOrigin()) + index @ matrix.T - centre
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    patch = (points @ u > 0) & (np.abs(points @ e1) < half_mm) & (np.abs(points @ e2) < half_mm)
    array[patch.reshape(array.shape) & ~inside] = config.window_hu[0]
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def _max_corner_mm(a: sitk.Transform, b: sitk.Transform, reference: sitk.Image) -> float:
    ma, mb = affine_matrix_4x4(a), affine_matrix_4x4(b)
    return max(float(np.linalg.norm((ma[:3, :3] - mb[:3, :3]) @ p + ma[:3, 3] - mb[:3, 3]))
               for p in _model_corners(reference))


def test_a_lateral_skull_flap_missing_still_registers_like_the_intact_head(bundle, stored_054):
    image, stored = stored_054
    result = register_to_reference(_without_skull_flap(image, bundle, (1, 1, 0)), bundle.reference,
                                   bundle.preprocess)
    distance = _max_corner_mm(result.transform, stored.transform, bundle.reference)
    print("lateral flap: quality", result.metric, "max corner distance (mm)", distance)
    assert result.metric > 0.55  # 0.597 measured (intact 0.645)
    assert distance < 3.0


@pytest.mark.xfail(strict=True, reason=(
    "known: a flap at the upper side of the head (LPS direction (0, 1, 1) on ctich_054) takes the "
    "intracranial mask's enclosure test with it, the cranium's frame tilts and registration ends "
    "~45 degrees off with quality 0.37-0.39 (before and after this change): not fixed yet"))
def test_an_upper_skull_flap_missing_still_registers_like_the_intact_head(bundle, stored_054):
    image, stored = stored_054
    result = register_to_reference(_without_skull_flap(image, bundle, (0, 1, 1)), bundle.reference,
                                   bundle.preprocess)
    assert _max_corner_mm(result.transform, stored.transform, bundle.reference) < 5.0


def test_a_refusal_says_the_figure_the_threshold_and_what_to_check(bundle):
    # A soft-tissue slab with a bone plate: CT-like values, nothing like a head.
    array = np.full((60, 200, 200), -20.0, dtype=np.float32)
    array[10:50, 40:160, 30:170] = 40.0
    array[10:50, 40:50, 30:170] = 100.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 3.0))
    with pytest.raises(RegistrationError) as raised:
        register_to_reference(image, bundle.reference, bundle.preprocess)
    message = str(raised.value)
    print(message)
    assert f"{bundle.preprocess.min_registration_metric:.3f}" in message
    assert "match quality is 0." in message or "could not be aligned" in message
    assert "Check" in message or "does not look like a head CT" in message
