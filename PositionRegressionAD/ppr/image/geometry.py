"""Grids and resampling in physical (LPS, mm) space.

A ``Grid`` is the geometry of an image without its voxels (size, spacing, origin, direction). This
module resamples images between grids: input space -> isotropic input space, input space -> model
space (through the registration transform) and model space -> input space (through its inverse).
Every function says which space it reads from and which it writes to. It does not register or
normalise intensities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
# Gaussian sigma (as a fraction of the target spacing) that suppresses frequencies the coarser grid
# cannot hold, while blurring little: 0.4 x spacing is close to the ideal low-pass cut-off.
ANTI_ALIAS_SIGMA_FRACTION = 0.4


@dataclass(frozen=True)
class Grid:
    """Geometry of a 3D image: voxel counts, spacing (mm), origin (mm, LPS) and direction cosines."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = IDENTITY_DIRECTION

    @classmethod
    def of(cls, image: sitk.Image) -> "Grid":
        return cls(
            tuple(int(n) for n in image.GetSize()),
            tuple(float(s) for s in image.GetSpacing()),
            tuple(float(o) for o in image.GetOrigin()),
            tuple(float(d) for d in image.GetDirection()),
        )

    def matches(self, image: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
        other = Grid.of(image)
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tolerance_mm)
            and np.allclose(self.origin, other.origin, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def center_mm(self) -> np.ndarray:
        """Physical centre of the grid's box."""
        half = (np.asarray(self.size) - 1) * np.asarray(self.spacing) / 2.0
        return np.asarray(self.origin) + np.asarray(self.direction).reshape(3, 3) @ half


def model_grid(center_mm: Sequence[float], config: PreprocessConfig) -> Grid:
    """The N^3 model grid: identity direction, spacing config.spacing_mm, centred on center_mm."""
    n, spacing = config.size, float(config.spacing_mm)
    origin = np.asarray(center_mm, dtype=float) - (n - 1) * spacing / 2.0
    return Grid((n, n, n), (spacing,) * 3, tuple(float(v) for v in origin))


def isotropic_grid(image: sitk.Image, spacing_mm: float) -> Grid:
    """The grid covering the same physical box as ``image`` (same direction) at spacing_mm."""
    size = np.asarray(image.GetSize())
    spacing = np.asarray(image.GetSpacing())
    # Tolerance: 90 x 2.2 mm / 3 mm is 66.00000000000001 in floating point, and must stay 66.
    new_size = np.maximum(1, np.ceil(size * spacing / spacing_mm - 1e-6)).astype(int)
    # Keep the box's corner (origin minus half a voxel) where it was.
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    corner = np.asarray(image.GetOrigin()) - direction @ (spacing / 2.0)
    origin = corner + direction @ np.full(3, spacing_mm / 2.0)
    return Grid(
        tuple(int(n) for n in new_size),
        (float(spacing_mm),) * 3,
        tuple(float(v) for v in origin),
        tuple(float(d) for d in image.GetDirection()),
    )


def anti_alias(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Input space -> coarser input space (float32, same box): low-pass along axes finer than spacing_mm.

    Resampling 0.45 mm pixels to 1 mm by interpolation alone aliases (noise and edges fold into
    false texture). Averaging blocks of whole voxels (cheap, exact geometry) does most of the
    low-pass; a Gaussian takes what is left when it is more than a quarter of a voxel.
    """
    image = sitk.Cast(image, sitk.sitkFloat32)
    spacing = np.asarray(image.GetSpacing())
    factors = np.maximum(1, np.floor(spacing_mm / spacing + 1e-6)).astype(int)
    if np.any(factors > 1):
        image = sitk.BinShrink(image, [int(f) for f in factors])
        spacing = np.asarray(image.GetSpacing())
    sigma = ANTI_ALIAS_SIGMA_FRACTION * np.sqrt(np.maximum(spacing_mm**2 - spacing**2, 0.0))
    if not np.any(sigma > 0.25 * spacing):
        return image
    # DiscreteGaussian is accurate for sigmas below one voxel, where recursive filters are not.
    return sitk.DiscreteGaussian(
        image, variance=[float(s * s) for s in sigma], maximumKernelWidth=32, useImageSpacing=True
    )


def resample(
    image: sitk.Image,
    grid: Grid,
    transform: sitk.Transform | None = None,
    interpolator: int = sitk.sitkLinear,
    default_value: float = 0.0,
) -> sitk.Image:
    """``image``'s space -> ``grid``. ``transform`` maps grid points to image points (identity if None)."""
    return sitk.Resample(
        image,
        list(grid.size),
        transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity),
        interpolator,
        list(grid.origin),
        list(grid.spacing),
        list(grid.direction),
        float(default_value),
        image.GetPixelID(),
    )


def resample_isotropic(
    image: sitk.Image, spacing_mm: float, default_value: float, interpolator: int = sitk.sitkLinear
) -> sitk.Image:
    """Input space -> isotropic input space (same box and direction, float32, anti-aliased)."""
    smoothed = anti_alias(image, spacing_mm)
    return resample(smoothed, isotropic_grid(image, spacing_mm), None, interpolator, default_value)


def to_input_space(
    model_map: sitk.Image,
    transform: sitk.Transform,
    input_image: sitk.Image,
    default_value: float = 0.0,
    interpolator: int = sitk.sitkLinear,
) -> sitk.Image:
    """Model space -> input space: ``model_map`` on the input's exact grid (origin, spacing, direction, size).

    ``transform`` maps model points to input points (``RegistrationResult.transform``); resampling onto
    the input grid needs the opposite mapping, so its inverse is used. Pass sitk.sitkNearestNeighbor
    as interpolator for label maps and masks.
    """
    return resample(model_map, Grid.of(input_image), transform.GetInverse(), interpolator, default_value)

