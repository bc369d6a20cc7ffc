"""The preprocessing pipeline: a head CT into model space, and maps from model space back.

``prepare_reference`` puts a reference head CT into the model grid (windowed HU). ``to_model_space``
brings any head CT there: read, validate, clip to the window, anti-alias to the model spacing,
register rigidly to the reference, place into the model grid (one interpolation, input space ->
model space), compute the head mask, normalise intensities with the reference's curve; it times
every step. Clipping comes before anything that mixes neighbouring voxels, so a scan in full HU and
the same scan exported in the window give the same model-space volume (bone at 1000 HU smoothed
into the brain's border would otherwise read as brain-window tissue that no training scan has). ``to_input_space`` takes a model-space map
back onto the input's own grid. This module composes the steps; it holds no image processing of its
own and knows nothing about networks or files beyond reading the input.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from ppr.image import geometry
from ppr.config import PreprocessConfig
from ppr.image.geometry import Grid, to_input_space
from ppr.image.imageio import read_image
from ppr.image.intensity import EqualisationCurve, brain_median_hu, normalize, reference_curve, window
from ppr.image.masks import head_mask, intracranial_mask, region_masks
from ppr.image.registration import RegistrationResult, register_to_reference
from ppr.image.validation import validate_head_ct

__all__ = [
    "ModelSpaceVolume",
    "air_hu",
    "model_grid_of",
    "prepare_reference",
    "region_masks",
    "to_input_space",
    "to_model_space",
]

# Where the head centre is found: coarse is plenty for a centroid and costs little.
CENTERING_SPACING_MM = 4.0


@dataclass(frozen=True)
class ModelSpaceVolume:
    """A head CT in model space.

    volume: float32 in [0, 1] on the model grid, 0 outside the head.
    head_mask: uint8 head foreground of this scan on the model grid.
    windowed_hu: float32 HU clipped to the window on the model grid (before the brain shift and
        normalisation), for training-time augmentation in HU.
    brain_shift_hu: HU added before normalisation so that the brain's median matches the
        reference's (0 when the configuration does not anchor, or the scan shows too little brain).
    registration: the rigid transform (model -> input points) and its quality figure.
    seconds: wall time of each step (read, validate, resample, register, place, intensity, masks).
    cpu_seconds: CPU time of each step, all threads of this process together (on a machine shared
        with other work, wall time grows with the load and this does not).
    """

    volume: sitk.Image
    head_mask: sitk.Image
    windowed_hu: sitk.Image
    registration: RegistrationResult
    brain_shift_hu: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def air_hu(config: PreprocessConfig) -> float:
    """The value of air once a scan is clipped to the window: the window's floor."""
    return float(config.window_hu[0])


def head_center_mm(image: sitk.Image, config: PreprocessConfig) -> np.ndarray:
    """Physical centre (LPS mm) of the head foreground, found on a coarse copy."""
    coarse = geometry.resample_isotropic(image, CENTERING_SPACING_MM, default_value=air_hu(config))
    mask = head_mask(coarse, config.window_hu)
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(mask)
    return np.asarray(statistics.GetCentroid(1))


def prepare_reference(image: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """Input space -> model space for the reference head: float32 HU on the N^3 model grid.

    The grid has identity direction, spacing config.spacing_mm and is centred on the head
    foreground's centre; every other scan is registered to this image and placed on its grid.
    """
    validate_head_ct(image, config)
    image = window(image, config.window_hu)
    grid = geometry.model_grid(head_center_mm(image, config), config)
    smoothed = geometry.anti_alias(image, config.spacing_mm)
    return geometry.resample(smoothed, grid, None, sitk.sitkLinear, air_hu(config))


def model_grid_of(reference: sitk.Image, config: PreprocessConfig) -> Grid:
    """The model grid (the reference's grid), checked against the configuration."""
    grid = Grid.of(reference)
    expected = (config.size,) * 3
    if grid.size != expected or not np.allclose(grid.spacing, config.spacing_mm) or not np.allclose(
        grid.direction, geometry.IDENTITY_DIRECTION
    ):
        raise ValueError(
            f"the reference is not on the model grid of this configuration (size {grid.size}, "
            f"spacing {grid.spacing}; expected {expected} at {config.spacing_mm} mm, identity "
            "direction): prepare it with prepare_reference(image, config)"
        )
    return grid


def to_model_space(
    image: sitk.Image | str | os.PathLike, reference: sitk.Image, config: PreprocessConfig,
    anchor: IntensityAnchor | None = None,
) -> ModelSpaceVolume:
    """A head CT (image, or a path to read) -> model space, with the seconds each step took.

    anchor: ``intensity_anchor(reference, config)``, when the caller keeps it for many scans (it
    costs an intracranial mask of the reference); computed here when not given.

    Raises InputImageError for inputs that cannot be a head CT and RegistrationError when the
    scan does not align with the reference head, or once aligned does not look like a head (the
    inside of its cranium unlike a brain: ``ppr.image.head_check``, config.min_brain_match).
    """
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    grid = model_grid_of(reference, config)
    with _timed(seconds, cpu_seconds, "read"):
        if not isinstance(image, sitk.Image):
            image = read_image(image)
    with _timed(seconds, cpu_seconds, "validate"):
        validate_head_ct(image, config)
        image = window(image, config.window_hu)
    with _timed(seconds, cpu_seconds, "resample"):
        smoothed = geometry.anti_alias(image, config.spacing_mm)
    with _timed(seconds, cpu_seconds, "register"):
        registration = register_to_reference(smoothed, reference, config)
    with _timed(seconds, cpu_seconds, "place"):
        placed = geometry.resample(smoothed, grid, registration.transform, sitk.sitkLinear, air_hu(config))
    with _timed(seconds, cpu_seconds, "masks"):
        mask = head_mask(placed, config.window_hu)
    with _timed(seconds, cpu_seconds, "intensity"):
        anchor = anchor or intensity_anchor(reference, config)
        shift = brain_shift_hu(placed, mask, anchor, config)
        volume = normalize(placed, mask, config, anchor.curve, shift)
    return ModelSpaceVolume(volume, mask, placed, registration, shift, seconds, cpu_seconds)


@dataclass(frozen=True)
class IntensityAnchor:
    """What every scan's intensities are normalised against, all from the reference head:
    its equalisation curve, its intracranial space (bool, model space) and its brain's median HU."""

    curve: EqualisationCurve
    brain: np.ndarray
    brain_median_hu: float | None


def intensity_anchor(reference: sitk.Image, config: PreprocessConfig) -> IntensityAnchor:
    """The reference's curve, brain and brain median (see IntensityAnchor)."""
    curve = reference_curve(reference, head_mask(reference, config.window_hu), config)
    if not config.anchor_brain:
        return IntensityAnchor(curve, np.zeros(0, dtype=bool), None)
    brain = sitk.GetArrayFromImage(intracranial_mask(reference, config)).astype(bool)
    return IntensityAnchor(curve, brain, brain_median_hu(reference, brain, config))


def brain_shift_hu(placed_hu: sitk.Image, head: sitk.Image, anchor: IntensityAnchor, config: PreprocessConfig) -> float:
    """HU to add to a scan (model space) so that its brain's median is the reference brain's.

    Only the reference's intracranial places that lie inside this scan's head count (a cut field
    of view sees part of the brain). 0 without anchoring or with too little brain in view.
    """
    if anchor.brain_median_hu is None:
        return 0.0
    seen = anchor.brain & sitk.GetArrayViewFromImage(head).astype(bool)
    median = brain_median_hu(placed_hu, seen, config)
    return 0.0 if median is None else anchor.brain_median_hu - median



@contextmanager
def _timed(seconds: dict[str, float], cpu_seconds: dict[str, float], step: str) -> Iterator[None]:
    """Add the wall and CPU time of the ``with`` block to seconds[step] and cpu_seconds[step]."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        seconds[step] = seconds.get(step, 0.0) + time.perf_counter() - wall
        cpu_seconds[step] = cpu_seconds.get(step, 0.0) + time.process_time() - cpu
