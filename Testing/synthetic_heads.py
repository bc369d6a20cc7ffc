"""Synthetic head CTs for tests: analytic shapes sampled on any grid, under any rigid pose.

The head is defined in its own frame (millimetres, LPS: +x patient left, +y posterior, +z superior,
origin at the head's centre) and sampled at the physical centre of every voxel of the requested grid,
so a head moved by a known rigid transform is sampled exactly, without interpolating a first image.
It has a scalp, a skull open at the bottom (foramen magnum), a brain with ventricles, eyes and a nose
so that every rotation is visible, an optional CT table and an optional lesion.

Not a realistic anatomy: use real data where behaviour depends on anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

BONE_HU = 1000.0
SOFT_TISSUE_HU = 40.0
GREY_MATTER_HU = 40.0
WHITE_MATTER_HU = 28.0
CSF_HU = 8.0
TABLE_HU = 300.0


@dataclass(frozen=True)
class Ellipsoid:
    center_mm: tuple[float, float, float]
    radii_mm: tuple[float, float, float]
    hu: float
    cranial: bool = False  # inside the cranium: stops at the skull base


# Painted in this order: later shapes cover earlier ones.
HEAD_SHAPES: tuple[Ellipsoid, ...] = (
    Ellipsoid((0.0, 5.0, -70.0), (45.0, 50.0, 60.0), SOFT_TISSUE_HU),  # neck
    Ellipsoid((0.0, 0.0, 0.0), (72.0, 90.0, 80.0), SOFT_TISSUE_HU),  # scalp
    Ellipsoid((0.0, -72.0, -30.0), (38.0, 30.0, 32.0), SOFT_TISSUE_HU),  # face
    Ellipsoid((0.0, -102.0, -28.0), (6.0, 9.0, 14.0), 700.0),  # nasal bone
    Ellipsoid((0.0, 0.0, 5.0), (66.0, 84.0, 74.0), BONE_HU, True),  # skull (outer table)
    Ellipsoid((0.0, 0.0, 5.0), (60.0, 78.0, 68.0), GREY_MATTER_HU, True),  # brain
    Ellipsoid((0.0, 3.0, 8.0), (46.0, 62.0, 52.0), WHITE_MATTER_HU, True),
    Ellipsoid((-9.0, -4.0, 15.0), (5.0, 22.0, 9.0), CSF_HU),  # right lateral ventricle
    Ellipsoid((9.0, -4.0, 15.0), (5.0, 22.0, 9.0), CSF_HU),  # left lateral ventricle
    Ellipsoid((-28.0, -86.0, -14.0), (11.0, 11.0, 11.0), 10.0),  # right eye
    Ellipsoid((28.0, -86.0, -14.0), (11.0, 11.0, 11.0), 10.0),  # left eye
)
SKULL_BASE_Z_MM = -45.0
FORAMEN_MAGNUM = Ellipsoid((0.0, 22.0, SKULL_BASE_Z_MM), (15.0, 18.0, 12.0), SOFT_TISSUE_HU)


def make_head_to_physical(
    rotation_deg: Sequence[float] = (0.0, 0.0, 0.0),
    translation_mm: Sequence[float] = (0.0, 0.0, 0.0),
    head_center_mm: Sequence[float] = (0.0, 0.0, 0.0),
) -> sitk.Euler3DTransform:
    """Rigid pose of the head: rotate about its centre, then place the centre at center+translation."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter([float(v) for v in head_center_mm])
    transform.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
    transform.SetTranslation([float(v) for v in translation_mm])
    return transform


def _grid_points_mm(size, spacing, origin, direction) -> np.ndarray:
    """Physical LPS points of every voxel centre, shaped (z, y, x, 3)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1) * np.asarray(spacing, dtype=np.float64)
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return index @ matrix.T + np.asarray(origin, dtype=np.float64)


def _to_head_frame(points_mm: np.ndarray, head_to_physical: sitk.Transform) -> np.ndarray:
    matrix = np.asarray(head_to_physical.GetMatrix()).reshape(3, 3)
    center = np.asarray(head_to_physical.GetCenter())
    translation = np.asarray(head_to_physical.GetTranslation())
    offset = center + translation - matrix @ center
    # Rotation matrices are orthogonal: the inverse is the transpose.
    return (points_mm - offset) @ matrix


def _inside(points: np.ndarray, shape: Ellipsoid, edge_mm: float) -> np.ndarray:
    """Soft indicator (0..1) of an ellipsoid, with a ramp of edge_mm across its surface."""
    radii = np.asarray(shape.radii_mm)
    scaled = (points - np.asarray(shape.center_mm)) / radii
    signed_distance = (np.sqrt(np.sum(scaled**2, axis=-1)) - 1.0) * radii.min()
    return np.clip(0.5 - signed_distance / edge_mm, 0.0, 1.0)


def _paint(values: np.ndarray, weight: np.ndarray, hu: float) -> None:
    values *= 1.0 - weight
    values += weight * hu


def head_values_hu(
    points: np.ndarray,
    air_hu: float = -1000.0,
    lesion_center_mm: Sequence[float] | None = None,
    lesion_radius_mm: float = 8.0,
    lesion_hu: float = 70.0,
    table: bool = False,
    edge_mm: float = 1.5,
) -> np.ndarray:
    """HU of the synthetic head at points given in the head frame (mm), shape (..., 3)."""
    values = np.full(points.shape[:-1], air_hu, dtype=np.float64)
    below_skull_base = points[..., 2] < SKULL_BASE_Z_MM
    for shape in HEAD_SHAPES:
        weight = _inside(points, shape, edge_mm)
        if shape.cranial:
            weight = np.where(below_skull_base, 0.0, weight)
        _paint(values, weight, shape.hu)
    base_plate = np.clip(1.0 - np.abs(points[..., 2] - SKULL_BASE_Z_MM) / 3.0, 0.0, 1.0)
    base_plate *= _inside(points, Ellipsoid((0.0, 0.0, 5.0), (64.0, 82.0, 72.0), 0.0), edge_mm)
    base_plate *= 1.0 - _inside(points, FORAMEN_MAGNUM, edge_mm)
    _paint(values, base_plate, BONE_HU)
    if lesion_center_mm is not None:
        lesion = Ellipsoid(tuple(lesion_center_mm), (lesion_radius_mm,) * 3, lesion_hu)
        _paint(values, _inside(points, lesion, edge_mm), lesion_hu)
    if table:
        # A curved table posterior to the head, apart from it (as on a real scanner).
        radial = np.hypot(points[..., 0], points[..., 1] - 10.0)
        shell = (np.abs(radial - 112.0) < 2.5) & (points[..., 1] > 40.0)
        values[shell] = TABLE_HU
    return values


def synthetic_head(
    size: Sequence[int] = (96, 96, 40),
    spacing: Sequence[float] = (2.2, 2.2, 5.0),
    origin: Sequence[float] | None = None,
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    head_to_physical: sitk.Transform | None = None,
    air_hu: float = -1000.0,
    window_hu: tuple[float, float] | None = None,
    lesion_center_mm: Sequence[float] | None = None,
    lesion_radius_mm: float = 8.0,
    lesion_hu: float = 70.0,
    table: bool = False,
    pixel_type: int = sitk.sitkInt16,
) -> sitk.Image:
    """A synthetic head CT on the given grid.

    origin: default puts the grid's centre on the head's centre (physical (0, 0, 0) for the
        identity pose).
    head_to_physical: rigid transform from the head frame to physical LPS mm (see make_head_to_physical).
    window_hu: clip to this window, as in data exported pre-windowed (air then reads window[0]).
    lesion_center_mm: centre of a spherical lesion in the head frame (mm), None for a healthy head.
    """
    size = [int(n) for n in size]
    spacing = [float(s) for s in spacing]
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    transform = head_to_physical if head_to_physical is not None else sitk.Euler3DTransform()
    if origin is None:
        half_extent = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
        origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0))) - matrix @ half_extent
    points = _to_head_frame(_grid_points_mm(size, spacing, origin, direction), transform)
    values = head_values_hu(points, air_hu, lesion_center_mm, lesion_radius_mm, lesion_hu, table)
    if window_hu is not None:
        values = np.clip(values, *window_hu)
    if pixel_type in (sitk.sitkInt16, sitk.sitkInt32, sitk.sitkUInt16, sitk.sitkUInt8):
        values = np.round(values)
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin([float(v) for v in origin])
    image.SetDirection([float(v) for v in matrix.ravel()])
    return sitk.Cast(image, pixel_type)


def oblique_direction(rotation_deg: Sequence[float] = (10.0, -7.0, 25.0)) -> tuple[float, ...]:
    """Direction cosines of a grid tilted by Euler angles (degrees), e.g. an oblique acquisition."""
    transform = sitk.Euler3DTransform()
    transform.SetRotation(*[float(np.deg2rad(a)) for a in rotation_deg])
    return tuple(transform.GetMatrix())


# The Lib tests' standard scan and the two places their fake detectors peak at (identity pose, LPS mm).
LESION_LPS = (30.0, -20.0, 25.0)  # in the left frontal lobe
SKULL_POINT_LPS = (0.0, -84.0, 5.0)  # on the forehead's outer skull table


def write_lesion_head(folder: Path) -> Path:
    """The Lib tests' synthetic head, oblique and anisotropic, brain-windowed, with a lesion at
    ``LESION_LPS``, written as NIfTI into ``folder``."""
    image = synthetic_head(size=(72, 80, 36), spacing=(2.6, 2.6, 5.0), direction=oblique_direction((4.0, -3.0, 12.0)),
                           window_hu=(-20.0, 100.0), lesion_center_mm=LESION_LPS, lesion_radius_mm=9.0)
    path = Path(folder) / "synthetic_head.nii.gz"
    sitk.WriteImage(image, str(path))
    return path
