"""Rigid registration of a head CT to the reference head.

Euler 3D transform, Mattes mutual information, two resolutions (6 mm, 3 mm), on coarse copies of
both heads where air is shifted to 0 and only the head is kept (the CT table and anything apart
from the head is dropped): the moments of the raw images are thrown off by the table and by
pre-windowed data whose air is -20 ("mass" negative), and registration then fails ("All samples
map outside moving image buffer") or converges to a metric near 0. The start is a moments
initialisation of the cranium (its centre, its long axis and its mid-sagittal plane), refined by a
coarse grid of rotations, so the result does not depend on how the head lay in the scanner.

The result maps model-space points to input-space points (the reference is the fixed image). This
module does not resample the full-resolution image (``ppr.image.geometry`` does).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import RegistrationError
from ppr.image.geometry import resample_isotropic
from ppr.image.head_check import HeadLikeness, brain_core, head_likeness, refusal as head_refusal
from ppr.image.intensity import window
from ppr.image.masks import head_mask, head_threshold_hu, intracranial_mask, midsagittal_plane

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
    """transform: maps model-space points to physical points of the input image as given. An
        sitk.Euler3DTransform, or, when the scan was read mirrored (flipped_axes not empty), an
        sitk.AffineTransform whose matrix has determinant -1 (a rotation times a mirror).
        Resampling the input through it, and ``ppr.image.geometry.to_input_space`` with it, need
        nothing else: a map taken back lands on the input's own voxels.
    metric: quality figure, the negated Mattes mutual information over the reference head at 3 mm
        (higher is better; 0.34-0.66 between different dev heads, 0.06-0.15 for non-heads).
    seconds: wall time of the registration.
    flipped_axes: index axes (x, y, z of the input's voxel array) along which the voxels were read
        mirrored because that reading matched the reference clearly better: the header is then
        wrong (e.g. an upside-down slice order). Empty for an ordinary scan.
    note: plain words for the user about what the registration did beyond the ordinary ('' when
        nothing), e.g. that the scan was read upside down.
    readings: (flipped_axes, metric) of every reading of the voxel array that was fully registered,
        the kept one included; metric -inf when the optimisation failed.
    brain_match: the "is it a head" figure of ``ppr.image.head_check`` (correlation with the
        reference over its brain core; 0.48-0.78 for heads); nan when the reference shows no
        cranium to check against.
    """

    transform: sitk.Transform
    metric: float
    seconds: float
    flipped_axes: tuple[int, ...] = ()
    note: str = ""
    readings: tuple[tuple[tuple[int, ...], float], ...] = ()
    brain_match: float = float("nan")

    def matrix_4x4(self) -> np.ndarray:
        """Homogeneous matrix of the transform (model mm -> input mm)."""
        return affine_matrix_4x4(self.transform)


def affine_matrix_4x4(transform: sitk.Transform) -> np.ndarray:
    """Homogeneous 4x4 matrix of a rigid (or mirrored rigid) transform: point_out = M[:3,:3] @ point_in + M[:3,3]."""
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
    mirror: "_Mirror | None" = None  # set on a mirrored reading (see _mirrored)
    cranium: sitk.Image | None = None  # the intracranial mask (None when none was found)


def _prepare(image_hu: sitk.Image, config: PreprocessConfig, spacing_mm: float) -> _PreparedHead:
    """Any space -> a coarse isotropic copy on the same box, and the pose of its cranium."""
    window_hu = config.window_hu
    lo = float(window_hu[0])
    coarse = resample_isotropic(image_hu, spacing_mm, default_value=lo)
    head = head_mask(coarse, window_hu)
    shifted = sitk.Multiply(
        sitk.ShiftScale(window(coarse, window_hu), shift=-lo, scale=1.0), sitk.Cast(head, sitk.sitkFloat32)
    )
    cranium = intracranial_mask(coarse, config)
    center, frame = _cranium_pose(coarse, head, cranium, config)
    found = bool(np.any(frame - np.eye(3)))  # the identity frame: no cranium found (see _cranium_pose)
    return _PreparedHead(shifted, center, frame, cranium=cranium if found else None)


def _cranium_pose(
    coarse_hu: sitk.Image, head: sitk.Image, cranium: sitk.Image, config: PreprocessConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and anatomical frame of the intracranial space; of the whole head if none is found.

    The head's centre of mass moves with how much neck and face a scan covers; the cranium's does
    not. The frame's front-back axis is the cranium's longest principal axis (13-38% longer than
    the next on the dev data), its left-right axis the normal of the mid-sagittal plane (the two
    shorter principal axes differ by as little as 1% on some heads and swap between heads).
    """
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


def _axes_rotations(fixed: _PreparedHead, moving: _PreparedHead) -> list[np.ndarray]:
    """Rotations taking the fixed cranium's frame onto the moving one's (fixed -> moving).

    Axes have no sign: each moving axis is taken within 90 degrees of its fixed partner (every
    scan is of a head lying on its back), the third follows as the cross product. Where an axis is
    more than AMBIGUOUS_AXIS_DEG from its partner (CT-ICH headers put front-back on x, scanners'
    DICOM on y: the two frames are then about 90 degrees apart and the sign is a coin toss), both
    signs are returned, for the start search to choose, except those that turn the head-foot axis
    over (so an upside-down scan stays visible to the mirrored reading); invesalius-0051 otherwise started facing
    the wrong way and ended pitched by 45 degrees (quality 0.42 instead of 0.66).
    """
    signs: list[list[float]] = []
    for row in (0, 1):
        dot = float(fixed.cranium_frame[row] @ moving.cranium_frame[row])
        sign = 1.0 if dot >= 0 else -1.0
        ambiguous = abs(dot) < np.cos(np.deg2rad(AMBIGUOUS_AXIS_DEG))
        signs.append([sign, -sign] if ambiguous else [sign])
    rotations = []
    for first, second in itertools.product(*signs):
        frame = moving.cranium_frame.copy()
        frame[0] *= first
        frame[1] *= second
        frame[2] = np.cross(frame[0], frame[1])
        if len(signs[0]) * len(signs[1]) > 1 and frame[2] @ fixed.cranium_frame[2] < 0:
            continue  # upside down: the head-foot axis keeps its sign (scanners do not turn heads over)
        rotations.append(frame.T @ fixed.cranium_frame)
    return rotations


AMBIGUOUS_AXIS_DEG = 60.0


def register_to_reference(
    moving_hu: sitk.Image,
    reference: sitk.Image,
    config: PreprocessConfig,
    spacing_mm: float = REGISTRATION_SPACING_MM,
) -> RegistrationResult:
    """Rigidly align a head CT (input space, HU) with the reference (model space, HU).

    Besides the scan as its header places it, the scan is also read with its voxel array mirrored
    along each index axis that is not its left-right one (a header that is wrong about the slice
    order or the front-back sign); the mirrored reading whose coarse start matches the reference
    best is registered in full and kept only when its quality figure beats the ordinary one by
    FLIP_MARGIN. See FLIP_MARGIN for what was measured, and why a pure left-right mirror is not
    detected.

    Raises RegistrationError, saying the figure, the threshold and what to check, when the best
    reading's quality figure is below config.min_registration_metric, or when the inside of the
    registered scan's cranium does not look like a brain (``ppr.image.head_check``: its figure is
    below config.min_brain_match): a sphere, a water phantom or a bone shell around soft tissue
    aligns with the reference's outline well enough to pass the quality figure.
    """
    start = time.perf_counter()
    fixed = _prepare(reference, config, spacing_mm)
    moving = _prepare(moving_hu, config, spacing_mm)
    ordinary = _register(fixed, moving, ())
    mirrored = [_start(fixed, _mirrored(moving, axis), (axis,)) for axis in _flip_candidates(moving)]
    readings = [ordinary]
    contender = max(mirrored, key=lambda reading: reading.start_score, default=None)
    if contender is not None and contender.start_score > ordinary.start_score - FLIP_SCREEN:
        readings.append(_register_from(fixed, contender))
    best = ordinary
    if readings[-1].metric > ordinary.metric + FLIP_MARGIN:
        best = readings[-1]
    seconds = time.perf_counter() - start
    figures = tuple((reading.flipped_axes, reading.metric) for reading in readings)
    if best.metric < config.min_registration_metric:
        raise RegistrationError(_refusal(best, readings, config))
    likeness = _head_likeness(fixed, best, config)
    if likeness is not None and head_refusal(likeness, config.min_brain_match):
        raise RegistrationError(head_refusal(likeness, config.min_brain_match))
    brain_match = float("nan") if likeness is None else likeness.brain_match
    transform = best.transform if not best.flipped_axes else _mirror_then(best.head.mirror, best.transform)
    return RegistrationResult(transform, best.metric, seconds, best.flipped_axes, _note(best, ordinary), figures,
                              brain_match)


def _head_likeness(fixed: "_PreparedHead", best: "_Reading", config: PreprocessConfig) -> HeadLikeness | None:
    """The registered scan's brain core against the reference's (None: the reference shows no cranium)."""
    if fixed.cranium is None:
        return None
    seen = sitk.Resample(best.head.image, fixed.image, best.transform, sitk.sitkLinear, 0.0)
    # Prepared heads hold HU - window floor inside the head, 0 outside.
    in_head = sitk.GetArrayViewFromImage(seen) >= head_threshold_hu(config.window_hu) - config.window_hu[0]
    return head_likeness(fixed.image, seen, brain_core(fixed.cranium), in_head)


# A mirrored reading of the voxel array is registered in full only when its start (correlation of
# the coarse start search) comes within FLIP_SCREEN of the ordinary reading's, and kept only when
# its quality figure beats the ordinary one's by FLIP_MARGIN. Measured with the bundled reference
# on 6 dev cases (ctich_051, 052, 054, 056, 057, 069), as stored and upside down (slice order
# reversed, header unchanged): start gap mirrored - ordinary -0.060 to -0.020 as stored, +0.083 to
# +0.155 upside down; quality gap -0.282 to -0.109 as stored, +0.122 to +0.312 upside down.
FLIP_SCREEN = 0.01
FLIP_MARGIN = 0.03


@dataclass
class _Reading:
    """One reading of the scan's voxel array: its prepared head, start, and (once run) result."""

    head: "_PreparedHead"
    flipped_axes: tuple[int, ...]
    start: sitk.Euler3DTransform | None = None
    start_score: float = -1.0
    transform: sitk.Euler3DTransform | None = None
    metric: float = float("-inf")
    error: str = ""


def _start(fixed: "_PreparedHead", head: "_PreparedHead", flipped_axes: tuple[int, ...]) -> _Reading:
    start, score = _initial_transform(fixed, head)
    return _Reading(head, flipped_axes, start, score)


def _register(fixed: "_PreparedHead", head: "_PreparedHead", flipped_axes: tuple[int, ...]) -> _Reading:
    return _register_from(fixed, _start(fixed, head, flipped_axes))


def _register_from(fixed: "_PreparedHead", reading: _Reading) -> _Reading:
    """Optimise from the reading's start; a failed optimisation leaves metric -inf and its error."""
    try:
        reading.transform = _optimise(fixed.image, reading.head.image, reading.start)
    except RuntimeError as error:
        reading.error = str(error).strip().splitlines()[-1]
        return reading
    reading.metric = _quality(fixed.image, reading.head.image, reading.transform)
    return reading


def _describe(flipped_axes: tuple[int, ...]) -> str:
    if not flipped_axes:
        return "as its header places it"
    return "with its voxels mirrored along array axis " + ", ".join("xyz"[axis] for axis in flipped_axes)


def _note(best: _Reading, ordinary: _Reading) -> str:
    if not best.flipped_axes:
        return ""
    return (
        f"The scan matched the reference head only {_describe(best.flipped_axes)} (match quality "
        f"{best.metric:.3f} against {ordinary.metric:.3f} as its header places it): its header's "
        "orientation is probably wrong (e.g. the slice order reversed, so the head is upside down). "
        "It was analysed in the corrected orientation and the results are shown on the scan as "
        "stored; fix the header (or the export) so other software reads it right too."
    )


def _refusal(best: _Reading, readings: list[_Reading], config: PreprocessConfig) -> str:
    if best.metric == float("-inf"):
        return (
            f"The image could not be aligned with the reference head ({best.error}). "
            "It does not look like a head CT."
        )
    tried = "; ".join(f"{_describe(r.flipped_axes)}: {r.metric:.3f}" for r in readings)
    return (
        f"The image does not look like a head CT: after alignment with the reference head the "
        f"match quality is {best.metric:.3f}, below the {config.min_registration_metric:.3f} a head "
        f"CT reaches (tried {tried}; 0.34-0.66 is usual for a whole head, 0.06-0.15 for images that "
        "are not heads). Check that the scan is a head CT (not a body part, a scout or a label "
        "map), that it is not cut or corrupt, and that its header's orientation and spacing are "
        "right; a head missing large parts (a wide craniectomy, only a few slices) can also fall "
        "below the threshold."
    )


def _flip_candidates(moving: "_PreparedHead") -> tuple[int, ...]:
    """Index axes to read mirrored: every axis but the one closest to the head's left-right axis.

    All mirrors are one rotation apart, so the left-right mirror reading would be tried through
    the rotation too if the start search were free; it is not (the start keeps each anatomical
    axis's sign as the scanner gives it), and the left-right one is left out on purpose: a head
    is nearly left-right symmetric, and the two readings' figures differ by no more than between
    two registrations of the same reading (0.000-0.04 measured), so a left-right mirror cannot
    be told from the figure and is NOT detected.
    """
    direction = np.asarray(moving.image.GetDirection()).reshape(3, 3)
    if not np.any(moving.cranium_frame - np.eye(3)):
        return ()  # no cranium found: no anatomical axes to go by
    left_right = int(np.argmax(np.abs(direction.T @ moving.cranium_frame[0])))
    return tuple(axis for axis in range(3) if axis != left_right)


@dataclass(frozen=True)
class _Mirror:
    """A mirror of physical space: p -> p - 2 ((p - point) . normal) normal."""

    point: np.ndarray
    normal: np.ndarray

    def matrix(self) -> np.ndarray:
        return np.eye(3) - 2.0 * np.outer(self.normal, self.normal)

    def apply(self, point: np.ndarray) -> np.ndarray:
        return point - 2.0 * float((point - self.point) @ self.normal) * self.normal


def _mirrored(head: "_PreparedHead", axis: int) -> "_PreparedHead":
    """The prepared head with its voxel array reversed along index ``axis``, header unchanged.

    On the unchanged grid that is a mirror of physical space about the plane through the box's
    centre across that axis; the cranium's centre and frame are mirrored with it.
    """
    image = head.image
    array = np.ascontiguousarray(np.flip(sitk.GetArrayViewFromImage(image), axis=2 - axis))
    flipped = sitk.GetImageFromArray(array)
    flipped.CopyInformation(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    half = (np.asarray(image.GetSize()) - 1) / 2.0
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(half.tolist()))
    mirror = _Mirror(centre, direction[:, axis].copy())
    frame = head.cranium_frame @ mirror.matrix()  # each row mirrored (the matrix is symmetric)
    return _PreparedHead(flipped, mirror.apply(head.cranium_center_mm), frame, mirror)


def _mirror_then(mirror: "_Mirror", transform: sitk.Transform) -> sitk.AffineTransform:
    """The affine transform p -> mirror(transform(p)): model points -> points of the unmirrored scan."""
    mirror_4x4 = np.eye(4)
    mirror_4x4[:3, :3] = mirror.matrix()
    mirror_4x4[:3, 3] = 2.0 * float(mirror.point @ mirror.normal) * mirror.normal
    matrix = mirror_4x4 @ affine_matrix_4x4(transform)
    result = sitk.AffineTransform(3)
    result.SetMatrix(matrix[:3, :3].ravel().tolist())
    result.SetTranslation(matrix[:3, 3].tolist())
    return result


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


def _initial_transform(fixed: _PreparedHead, moving: _PreparedHead) -> tuple[sitk.Euler3DTransform, float]:
    """Crania matched by centre and anatomical frame, then the best of a grid of rotations about that.

    Gradient descent from the identity falls into wrong optima for heads yawed by 30-50 degrees,
    and a grid in scanner axes makes the result depend on the head's pose: between two heads the
    metric has many shallow optima, and nodding differed by up to 18 degrees for a scan moved by
    12. Starting from the cranium's own frame, a moved scan gets the moved start, so the result
    moves with the scan. The grid is scored by correlation over the reference head at 4x coarser
    spacing (same modality, same window: far cheaper than a Mattes evaluation per candidate).
    Returns the start and its correlation.
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in fixed.cranium_center_mm])
    transform.SetTranslation([float(v) for v in moving.cranium_center_mm - fixed.cranium_center_mm])
    starts = _axes_rotations(fixed, moving)
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
    candidates = [
        start @ _euler_matrix(angles) for start in starts for angles in itertools.product(steps, steps, steps)
    ]
    scores = [correlation(rotation) for rotation in candidates]
    best = int(np.argmax(scores))
    transform.SetMatrix(candidates[best].ravel().tolist())
    return transform, scores[best]


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
