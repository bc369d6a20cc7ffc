"""Rigid registration of a head CT to the reference head.

Euler 3D transform, Mattes mutual information, multi-resolution, moments initialisation, on coarse
(~3 mm) copies of both heads where air is shifted to 0 and only the head is kept (the CT table and
anything apart from the head is dropped). Without that, the moments initialiser is thrown off by the
table and by pre-windowed data whose air is -20 ("mass" negative), and registration fails
("All samples map outside moving image buffer") or converges to a metric near 0.

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
from ppr.masks import head_mask, intracranial_mask

REGISTRATION_SPACING_MM = 3.0
HISTOGRAM_BINS = 32
SAMPLING_FRACTION = 0.1
# Coarse to fine after the rotation search: 6 mm then 3 mm voxels; smoothing in mm at each level.
SHRINK_FACTORS = (2, 1)
SMOOTHING_SIGMAS_MM = (3.0, 0.0)
MAX_ITERATIONS = 100
# Initial rotations tried: heads lie yawed in the scanner by up to ~45 degrees (about z, the
# scanner axis) and nod or tilt less (about x and y: headers do not always say which is left-right).
SEARCH_YAW_DEG = tuple(range(-48, 49, 12))
SEARCH_TILT_DEG = (-24, -12, 0, 12, 24)
SEARCH_SHRINK = 4
MIN_CRANIUM_ML = 300.0


@dataclass(frozen=True)
class RegistrationResult:
    """transform: sitk.Euler3DTransform mapping model-space points to input-space points.

    metric: quality figure, the negated Mattes mutual information over the reference head at the
        finest level (higher is better; about 0.4-0.6 for head CTs, near 0 for a failure).
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
    """A head ready for registration: coarse, windowed, air at 0, only the head kept."""

    image: sitk.Image
    cranium_center_mm: np.ndarray


def _prepare(image_hu: sitk.Image, window_hu: tuple[float, float], spacing_mm: float) -> _PreparedHead:
    """Any space -> a coarse isotropic copy on the same box, and the centre of its cranium."""
    lo = float(window_hu[0])
    coarse = resample_isotropic(image_hu, spacing_mm, default_value=lo)
    head = head_mask(coarse, window_hu)
    shifted = sitk.Multiply(
        sitk.ShiftScale(window(coarse, window_hu), shift=-lo, scale=1.0), sitk.Cast(head, sitk.sitkFloat32)
    )
    return _PreparedHead(shifted, _cranium_center_mm(coarse, head, window_hu))


def _cranium_center_mm(coarse_hu: sitk.Image, head: sitk.Image, window_hu: tuple[float, float]) -> np.ndarray:
    """Centre of the intracranial space; of the whole head if none is found (not a head CT).

    The head's centre of mass moves with how much neck and face a scan covers; the cranium's does not.
    """
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(intracranial_mask(coarse_hu, window_hu))
    if statistics.GetNumberOfLabels() == 0 or statistics.GetPhysicalSize(1) < MIN_CRANIUM_ML * 1000:
        statistics.Execute(head)
    return np.asarray(statistics.GetCentroid(1))


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
    fixed = _prepare(reference, config.window_hu, spacing_mm)
    moving = _prepare(moving_hu, config.window_hu, spacing_mm)
    transform = _initial_transform(fixed, moving)
    method = _registration_method(fixed.image)
    method.SetInitialTransform(transform, inPlace=True)
    try:
        method.Execute(fixed.image, moving.image)
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


def _initial_transform(fixed: _PreparedHead, moving: _PreparedHead) -> sitk.Euler3DTransform:
    """Cranium centres matched, then the best of a coarse grid of rotations about that centre.

    Gradient descent from the identity rotation falls into wrong optima for heads tilted by
    20-30 degrees. The grid is scored by correlation over the reference head on a 4x coarser grid:
    both images are the same modality in the same window, and a numpy correlation costs far less
    than a Mattes evaluation per candidate.
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in fixed.cranium_center_mm])
    transform.SetTranslation([float(v) for v in moving.cranium_center_mm - fixed.cranium_center_mm])
    shrink = [SEARCH_SHRINK] * 3
    fixed_coarse = sitk.BinShrink(fixed.image, shrink)
    moving_coarse = sitk.BinShrink(moving.image, shrink)
    region = sitk.GetArrayViewFromImage(_head_region(fixed_coarse)).astype(bool)
    reference_values = sitk.GetArrayViewFromImage(fixed_coarse)[region]

    def correlation(angles: tuple[float, float, float]) -> float:
        transform.SetRotation(*angles)
        seen = sitk.Resample(moving_coarse, fixed_coarse, transform, sitk.sitkLinear, 0.0)
        values = sitk.GetArrayViewFromImage(seen)[region]
        return float(np.corrcoef(reference_values, values)[0, 1]) if values.std() > 0 else -1.0

    tilts = np.deg2rad(SEARCH_TILT_DEG)
    candidates = itertools.product(tilts, tilts, np.deg2rad(SEARCH_YAW_DEG))
    transform.SetRotation(*max(candidates, key=correlation))
    return transform


def _registration_method(fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, seed=1234)
    method.SetMetricFixedMask(_head_region(fixed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=MAX_ITERATIONS, relaxationFactor=0.7,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_MM))
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
    """Negated Mattes MI at the registration spacing: higher is better."""
    method = _metric_method(fixed)
    method.SetInitialTransform(transform)
    return -float(method.MetricEvaluate(fixed, moving))
