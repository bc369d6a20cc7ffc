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

import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import RegistrationError
from ppr.geometry import resample_isotropic
from ppr.intensity import window
from ppr.masks import head_mask

REGISTRATION_SPACING_MM = 3.0
HISTOGRAM_BINS = 32
SAMPLING_FRACTION = 0.2
# Coarse to fine: 12 mm, 6 mm, 3 mm voxels; smoothing in mm at each level.
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_SIGMAS_MM = (6.0, 3.0, 0.0)
MAX_ITERATIONS = 100


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


def registration_image(image_hu: sitk.Image, window_hu: tuple[float, float], spacing_mm: float) -> sitk.Image:
    """Any space -> a coarse isotropic copy on the same box: windowed, air at 0, only the head kept."""
    lo = float(window_hu[0])
    coarse = resample_isotropic(image_hu, spacing_mm, default_value=lo)
    head = sitk.Cast(head_mask(coarse, window_hu), sitk.sitkFloat32)
    return sitk.Multiply(sitk.ShiftScale(window(coarse, window_hu), shift=-lo, scale=1.0), head)


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
    fixed = registration_image(reference, config.window_hu, spacing_mm)
    moving = registration_image(moving_hu, config.window_hu, spacing_mm)
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
    )
    method = _registration_method(fixed)
    method.SetInitialTransform(initial, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as error:
        raise RegistrationError(
            "The image could not be aligned with the reference head "
            f"({str(error).strip().splitlines()[-1]}). It does not look like a head CT."
        ) from None
    transform = sitk.Euler3DTransform(initial)
    metric = _quality(fixed, moving, transform)
    seconds = time.perf_counter() - start
    if metric < config.min_registration_metric:
        raise RegistrationError(
            f"The image does not look like a head CT: after alignment with the reference head the "
            f"match quality is {metric:.3f}, below the {config.min_registration_metric:.3f} a head CT "
            "reaches. Check that the scan is a head CT, covers the whole head and is not cut or corrupt."
        )
    return RegistrationResult(transform, metric, seconds)


def _registration_method(fixed: sitk.Image) -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(SAMPLING_FRACTION, seed=1234)
    method.SetMetricFixedMask(_head_region(fixed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=MAX_ITERATIONS, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_SIGMAS_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _head_region(fixed: sitk.Image) -> sitk.Image:
    """The reference head and a margin around it: the metric only looks where the head is."""
    return sitk.BinaryDilate(sitk.Cast(fixed > 0, sitk.sitkUInt8), [3] * 3, sitk.sitkBall)


def _quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    """Negated Mattes MI over every voxel of the reference head region (deterministic)."""
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.NONE)
    method.SetMetricFixedMask(_head_region(fixed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform)
    return -float(method.MetricEvaluate(fixed, moving))
