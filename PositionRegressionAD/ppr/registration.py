"""Rigid registration of a head CT to the reference head.

Euler 3D transform, Mattes mutual information, two resolutions (6 mm, 3 mm), on coarse copies of
both heads where air is shifted to 0 and only the head is kept (the CT table and anything apart
from the head is dropped): the moments of the raw images are thrown off by the table and by
pre-windowed data whose air is -20 ("mass" negative), and registration then fails ("All samples
map outside moving image buffer") or converges to a metric near 0. The start is a moments
initialisation of the cranium (its centre, its long axis and its mid-sagittal plane), refined by a
coarse grid of rotations, so the result does not depend on how the head lay in the scanner.

The result maps model-space points to input-space points (the reference is the fixed image). This
module does not resample the full-resolution image (``ppr.geometry`` does).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import RegistrationError
from ppr.geometry import resample_isotropic
from ppr.intensity import window
from ppr.masks import head_mask, intracranial_mask, midsagittal_plane

REGISTRATION_SPACING_MM = 3.0
HISTOGRAM_BINS = 32


@dataclass(frozen=True)
class _Stage:
    """One resolution of the optimisation (shrink of the 3 mm registration images)."""

    shrink: int
    smoothing_mm: float
    derivative_free: bool
    regular_sampling: bool
    sampling_fraction: float
    iterations: int


# The optimisation runs at 6 mm two ways from the same start: gradient steps (local: between two
# different heads the metric has many shallow optima, and the nearest to an anatomical start is
# the one that moves with the scan) and Powell's line searches (wide: gradient steps crawl along
# the valley where rotation and translation trade off, and stalled 2-4 mm short on scans that cut
# the head). The wide result is taken only when clearly better, then 3 mm gradient steps finish.
COARSE_LOCAL = _Stage(shrink=2, smoothing_mm=3.0, derivative_free=False, regular_sampling=False,
                      sampling_fraction=0.1, iterations=60)
COARSE_WIDE = _Stage(shrink=2, smoothing_mm=3.0, derivative_free=True, regular_sampling=True,
                     sampling_fraction=0.25, iterations=5)
FINE = _Stage(shrink=1, smoothing_mm=0.0, derivative_free=False, regular_sampling=False,
              sampling_fraction=0.1, iterations=60)
# Between different heads the two coarse results differ by 0.002-0.006; on a cut scan by 0.15.
WIDE_MARGIN = 0.02
# Room around the reference for the scan laid onto it, so that samples stay inside while it moves.
CANONICAL_MARGIN_MM = 30.0
# Rotations tried about each axis of the reference, after the crania's frames are matched.
SEARCH_ANGLES_DEG = (-24.0, -12.0, 0.0, 12.0, 24.0)
SEARCH_SHRINK = 4
MIN_CRANIUM_ML = 300.0


@dataclass(frozen=True)
class RegistrationResult:
    """transform: sitk.Euler3DTransform mapping model-space points to input-space points.

    metric: quality figure, the negated Mattes mutual information over the reference head at 3 mm
        (higher is better; 0.34-0.66 between different dev heads, 0.06-0.15 for non-heads).
    seconds: wall time of the registration.
    """

    transform: sitk.Euler3DTransform
    metric: float
    seconds: float

    def matrix_4x4(self) -> np.ndarray:
        """Homogeneous matrix of the transform (model mm -> input mm)."""
        return affine_matrix_4x4(self.transform)


def affine_matrix_4x4(transform: sitk.Euler3DTransform) -> np.ndarray:
    """Homogeneous 4x4 matrix of a rigid transform: point_out = M[:3,:3] @ point_in + M[:3,3]."""
    matrix = np.asarray(transform.GetMatrix()).reshape(3, 3)
    center = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation())
    result = np.eye(4)
    result[:3, :3] = matrix
    result[:3, 3] = center + translation - matrix @ center
    return result


@dataclass(frozen=True)
class _PreparedHead:
    """A head ready for registration: coarse, windowed, air at 0, only the head kept.

    cranium_center_mm and cranium_frame (rows: left-right, front-back, and their cross product)
    place and orient the head by its anatomy, whatever its pose in the scanner.
    """

    image: sitk.Image
    cranium_center_mm: np.ndarray
    cranium_frame: np.ndarray


def _prepare(image_hu: sitk.Image, config: PreprocessConfig, spacing_mm: float) -> _PreparedHead:
    """Any space -> a coarse isotropic copy on the same box, and the pose of its cranium."""
    window_hu = config.window_hu
    lo = float(window_hu[0])
    coarse = resample_isotropic(image_hu, spacing_mm, default_value=lo)
    head = head_mask(coarse, window_hu)
    shifted = sitk.Multiply(
        sitk.ShiftScale(window(coarse, window_hu), shift=-lo, scale=1.0), sitk.Cast(head, sitk.sitkFloat32)
    )
    return _PreparedHead(shifted, *_cranium_pose(coarse, head, config))


def _cranium_pose(
    coarse_hu: sitk.Image, head: sitk.Image, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and anatomical frame of the intracranial space; of the whole head if none is found.

    The head's centre of mass moves with how much neck and face a scan covers; the cranium's does
    not. The frame's front-back axis is the cranium's longest principal axis (13-38% longer than
    the next on the dev data), its left-right axis the normal of the mid-sagittal plane (the two
    shorter principal axes differ by as little as 1% on some heads and swap between heads).
    """
    cranium = intracranial_mask(coarse_hu, config)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(cranium)
    if statistics.GetNumberOfLabels() == 0 or statistics.GetPhysicalSize(1) < MIN_CRANIUM_ML * 1000:
        statistics.Execute(head)
        return np.asarray(statistics.GetCentroid(1)), np.eye(3)
    front_back = np.asarray(statistics.GetPrincipalAxes(1)).reshape(3, 3)[2]
    left_right = np.asarray(midsagittal_plane(coarse_hu, cranium, config).normal)
    left_right = left_right - (left_right @ front_back) * front_back
    left_right /= np.linalg.norm(left_right)
    frame = np.stack([left_right, front_back, np.cross(left_right, front_back)])
    return np.asarray(statistics.GetCentroid(1)), frame


def _axes_rotation(fixed: _PreparedHead, moving: _PreparedHead) -> np.ndarray:
    """The rotation taking the fixed cranium's frame onto the moving one's (fixed -> moving).

    Axes have no sign: each moving axis is taken within 90 degrees of its fixed partner (every
    scan is of a head lying on its back), the third follows as the cross product.
    """
    frame = moving.cranium_frame.copy()
    for row in (0, 1):
        if fixed.cranium_frame[row] @ frame[row] < 0:
            frame[row] = -frame[row]
    frame[2] = np.cross(frame[0], frame[1])
    return frame.T @ fixed.cranium_frame


def register_to_reference(
    moving_hu: sitk.Image,
    reference: sitk.Image,
    config: PreprocessConfig,
    spacing_mm: float = REGISTRATION_SPACING_MM,
) -> RegistrationResult:
    """Rigidly align a head CT (input space, HU) with the reference (model space, HU).

    Raises RegistrationError when the quality figure is below config.min_registration_metric.
    """
    start = time.perf_counter()
    fixed = _prepare(reference, config, spacing_mm)
    moving = _prepare(moving_hu, config, spacing_mm)
    try:
        transform = _optimise(fixed.image, moving.image, _initial_transform(fixed, moving))
    except RuntimeError as error:
        raise RegistrationError(
            "The image could not be aligned with the reference head "
            f"({str(error).strip().splitlines()[-1]}). It does not look like a head CT."
        ) from None
    metric = _quality(fixed.image, moving.image, transform)
    seconds = time.perf_counter() - start
    if metric < config.min_registration_metric:
        raise RegistrationError(
            f"The image does not look like a head CT: after alignment with the reference head the "
            f"match quality is {metric:.3f}, below the {config.min_registration_metric:.3f} a head CT "
            "reaches. Check that the scan is a head CT, covers the whole head and is not cut or corrupt."
        )
    return RegistrationResult(sitk.Euler3DTransform(transform), metric, seconds)


def _optimise(fixed: sitk.Image, moving: sitk.Image, start: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """Coarse local and wide searches from the start, the wide one only if clearly better, then fine.

    The search runs on the scan resampled through the start transform (its cranium laid onto the
    reference's), for a correction starting at the identity: a moved scan then poses the same
    problem, so its result moves with it. Optimising the full transform instead gave results 1-4
    degrees apart for one scan in two poses (the optimisers' paths depend on the parameters).
    """
    canonical = sitk.Resample(moving, _padded(fixed, CANONICAL_MARGIN_MM), start, sitk.sitkLinear, 0.0)
    identity = sitk.Euler3DTransform()
    identity.SetCenter(start.GetCenter())
    local = _run_stage(fixed, canonical, identity, COARSE_LOCAL)
    wide = _run_stage(fixed, canonical, identity, COARSE_WIDE)
    shrink = [COARSE_LOCAL.shrink] * 3
    coarse_fixed, coarse_moving = sitk.BinShrink(fixed, shrink), sitk.BinShrink(canonical, shrink)
    gain = _quality(coarse_fixed, coarse_moving, wide) - _quality(coarse_fixed, coarse_moving, local)
    correction = _run_stage(fixed, canonical, wide if gain > WIDE_MARGIN else local, FINE)
    return _compose(start, correction)


def _padded(image: sitk.Image, margin_mm: float) -> sitk.Image:
    """An empty image on ``image``'s grid grown by margin_mm on every side."""
    pad = [int(np.ceil(margin_mm / s)) for s in image.GetSpacing()]
    return sitk.ConstantPad(image, pad, pad, 0.0)


def _compose(first: sitk.Euler3DTransform, then: sitk.Euler3DTransform) -> sitk.Euler3DTransform:
    """The Euler transform p -> first(then(p)), about first's centre."""
    matrix = affine_matrix_4x4(first) @ affine_matrix_4x4(then)
    result = sitk.Euler3DTransform()
    center = np.asarray(first.GetCenter())
    result.SetCenter(center.tolist())
    result.SetMatrix(matrix[:3, :3].ravel().tolist())
    result.SetTranslation((matrix[:3, 3] + matrix[:3, :3] @ center - center).tolist())
    return result


def _run_stage(
    fixed: sitk.Image, moving: sitk.Image, start: sitk.Euler3DTransform, stage: _Stage
) -> sitk.Euler3DTransform:
    transform = sitk.Euler3DTransform(start)
    method = _registration_method(fixed, stage)
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform


def _initial_transform(fixed: _PreparedHead, moving: _PreparedHead) -> sitk.Euler3DTransform:
    """Crania matched by centre and anatomical frame, then the best of a grid of rotations about that.

    Gradient descent from the identity falls into wrong optima for heads yawed by 30-50 degrees,
    and a grid in scanner axes makes the result depend on the head's pose: between two heads the
    metric has many shallow optima, and nodding differed by up to 18 degrees for a scan moved by
    12. Starting from the cranium's own frame, a moved scan gets the moved start, so the result
    moves with the scan. The grid is scored by correlation over the reference head at 4x coarser
    spacing (same modality, same window: far cheaper than a Mattes evaluation per candidate).
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in fixed.cranium_center_mm])
    transform.SetTranslation([float(v) for v in moving.cranium_center_mm - fixed.cranium_center_mm])
    start = _axes_rotation(fixed, moving)
    shrink = [SEARCH_SHRINK] * 3
    fixed_coarse = sitk.BinShrink(fixed.image, shrink)
    moving_coarse = sitk.BinShrink(moving.image, shrink)
    # A copy, not a view: a view does not keep its (temporary) image alive.
    region = sitk.GetArrayFromImage(_head_region(fixed_coarse)).astype(bool)
    reference_values = sitk.GetArrayViewFromImage(fixed_coarse)[region]

    def correlation(rotation: np.ndarray) -> float:
        transform.SetMatrix(rotation.ravel().tolist())
        seen = sitk.Resample(moving_coarse, fixed_coarse, transform, sitk.sitkLinear, 0.0)
        values = sitk.GetArrayViewFromImage(seen)[region]
        return float(np.corrcoef(reference_values, values)[0, 1]) if values.std() > 0 else -1.0

    steps = np.deg2rad(SEARCH_ANGLES_DEG)
    candidates = [start @ _euler_matrix(angles) for angles in itertools.product(steps, steps, steps)]
    transform.SetMatrix(max(candidates, key=correlation).ravel().tolist())
    return transform


def _euler_matrix(angles: tuple[float, float, float]) -> np.ndarray:
    rotation = sitk.Euler3DTransform()
    rotation.SetRotation(*angles)
    return np.asarray(rotation.GetMatrix()).reshape(3, 3)


def _registration_method(fixed: sitk.Image, stage: _Stage) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.REGULAR if stage.regular_sampling else method.RANDOM)
    method.SetMetricSamplingPercentage(stage.sampling_fraction, seed=1234)
    method.SetMetricFixedMask(_head_region(fixed))
    method.SetInterpolator(sitk.sitkLinear)
    if stage.derivative_free:
        method.SetOptimizerAsPowell(
            numberOfIterations=stage.iterations, maximumLineIterations=10, stepLength=2.0,
            stepTolerance=0.05, valueTolerance=1e-4,
        )
    else:
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=1.0, minStep=1e-3, numberOfIterations=stage.iterations, relaxationFactor=0.7,
            gradientMagnitudeTolerance=1e-8,
        )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([stage.shrink])
    method.SetSmoothingSigmasPerLevel([stage.smoothing_mm])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _head_region(fixed: sitk.Image) -> sitk.Image:
    """The reference head and a margin around it: the metric only looks where the head is."""
    return sitk.BinaryDilate(sitk.Cast(fixed > 0, sitk.sitkUInt8), [3] * 3, sitk.sitkBall)


def _metric_method(fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    """Mattes MI over every voxel of the reference head region (deterministic)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetMetricFixedMask(_head_region(fixed))
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Negated Mattes MI over the reference head, at the images' spacing: higher is better."""
    method = _metric_method(fixed)
    method.SetInitialTransform(transform)
    return -float(method.MetricEvaluate(fixed, moving))
