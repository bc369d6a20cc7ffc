"""Masks in model space: the head foreground of any scan, and region masks from the reference.

Region masks (brain hemispheres, skull, head) are built once from the reference head, in model
space, with 3D reasoning that tolerates a skull ring open in some slices (thick slices, foramina,
sutures). The hemispheres are split at the mid-sagittal plane, found as the reference's plane of
symmetry; left follows LPS: the patient's left is on the +x side of that plane (see
``region_masks``). This module does not resample between spaces and does not normalise intensities.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, optimize

from ppr.config import PreprocessConfig

# The head is what is brighter than air by a few per cent of the window: skin and everything inside.
HEAD_THRESHOLD_FRACTION = 0.05
# Bone saturates at the top of the window; partial volume at a 2 mm reasoning grid takes a little off.
BONE_THRESHOLD_FRACTION = 0.9
# Intracranial voxels see bone in (almost) every direction; the face, neck and scalp see air on one side.
MIN_ENCLOSURE = 0.9
# Brain tissue (20-45 HU) lies well below this fraction of the window (64 HU for [-20, 100]).
BRAIN_MAX_FRACTION = 0.7
REASONING_SPACING_MM = 2.0
BRAIN_OPENING_MM = 4.0
SKULL_SHELL_MM = 15.0
SYMMETRY_SAMPLES = 10000
SYMMETRY_MARGIN_MM = 10.0


def head_threshold_hu(window_hu: tuple[float, float]) -> float:
    lo, hi = window_hu
    return lo + HEAD_THRESHOLD_FRACTION * (hi - lo)


def largest_component(mask: sitk.Image) -> sitk.Image:
    """The largest connected (face-connected) part of a binary mask, uint8 on the same grid."""
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(mask), sortByObjectSize=True)
    return sitk.Cast(labels == 1, sitk.sitkUInt8)


def head_mask(image_hu: sitk.Image, window_hu: tuple[float, float]) -> sitk.Image:
    """Head foreground (uint8, same grid): above the air threshold, largest component, holes filled in 3D.

    Keeping the largest component drops the CT table and other objects apart from the head; filling
    holes in 3D takes back fat, sinuses and ventricles enclosed by the head.
    """
    foreground = sitk.Greater(sitk.Cast(image_hu, sitk.sitkFloat32), head_threshold_hu(window_hu))
    head = largest_component(foreground)
    return sitk.Cast(sitk.BinaryFillhole(head, fullyConnected=False, foregroundValue=1), sitk.sitkUInt8)


@dataclass(frozen=True)
class MidsagittalPlane:
    """The reference's plane of left-right symmetry, in physical LPS mm.

    ``normal`` points to the side called left (see ``region_masks``).
    """

    point_mm: tuple[float, float, float]
    normal: tuple[float, float, float]

    def signed_distance_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """Distance of points (..., 3) from the plane, positive on the left side."""
        return (points_mm - np.asarray(self.point_mm)) @ np.asarray(self.normal)

    def left_side(self, image: sitk.Image) -> np.ndarray:
        """Bool array (z, y, x): voxel centres of ``image`` on the left side of the plane."""
        matrix, origin = _index_to_physical(image)
        # Distance is linear in (i, j, k): sum three broadcast ramps instead of building all points.
        per_index = matrix.T @ np.asarray(self.normal)
        size = image.GetSize()
        i = np.arange(size[0])[None, None, :] * per_index[0]
        j = np.arange(size[1])[None, :, None] * per_index[1]
        k = np.arange(size[2])[:, None, None] * per_index[2]
        return (i + j + k + self.signed_distance_mm(origin)) > 0


def bone_threshold_hu(config: PreprocessConfig) -> float:
    """Bone: near the top of the window, where bone saturates (every scan is clipped to the window
    before any mask is made, whether it came in full HU or as a windowed export)."""
    lo, hi = config.window_hu
    return lo + BONE_THRESHOLD_FRACTION * (hi - lo)


def region_masks(reference: sitk.Image, config: PreprocessConfig) -> dict[str, np.ndarray]:
    """Region masks of the reference in model space: bool arrays indexed (z, y, x).

    Keys: "left_hemisphere", "right_hemisphere" (the intracranial space split at the mid-sagittal
    plane), "skull" (bone within 15 mm of the intracranial space) and "head" (the head foreground).
    Left follows LPS: the hemisphere on the +x side of the mid-sagittal plane is the patient's left.
    When the reference's x axis does not run left-right (its header is wrong, as in the CT-ICH dev
    data, where x runs anterior-posterior), the split is still at the anatomical mid-sagittal plane
    (found by symmetry) and "left" is the side its normal points to, oriented along +x, else +y.
    """
    brain_image = intracranial_mask(reference, config)
    brain = sitk.GetArrayFromImage(brain_image).astype(bool)
    plane = midsagittal_plane(reference, brain_image, config)
    side = plane.left_side(reference)
    return {
        "left_hemisphere": brain & side,
        "right_hemisphere": brain & ~side,
        "skull": skull_mask(reference, brain_image, config),
        "head": sitk.GetArrayFromImage(head_mask(reference, config.window_hu)).astype(bool),
    }


def intracranial_mask(reference: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """The space inside the skull (brain, CSF, ventricles), uint8 on the reference's grid.

    A skull ring is open in many slices (thick slices, sutures, foramina, the orbits), so this does
    not fill holes slice by slice: a voxel is intracranial when rays from it hit bone in nearly every
    one of 26 directions (3D enclosure) and its intensity is soft tissue. On a ~2 mm grid an opening
    then cuts thin bridges (optic canals, foramen magnum) and keeps the largest part; at full
    resolution that part is intersected with the soft-tissue voxels and its holes are filled.
    """
    window_hu = config.window_hu
    bone_hu = bone_threshold_hu(config)
    coarse = _reasoning_grid(reference)
    coarse_values = sitk.GetArrayViewFromImage(coarse)
    enclosure = enclosure_fraction(coarse_values >= bone_hu)
    coarse_tissue = _soft_tissue(coarse_values, window_hu) & (enclosure >= MIN_ENCLOSURE)
    radius = max(1, int(round(BRAIN_OPENING_MM / coarse.GetSpacing()[0])))
    eroded = sitk.BinaryErode(_image_like(coarse_tissue, coarse), [radius] * 3, sitk.sitkBall)
    core = largest_component(eroded)
    # One voxel more than the erosion, so the full-resolution boundary decides the brain's edge.
    core = sitk.BinaryDilate(core, [radius + 1] * 3, sitk.sitkBall)
    near_core = sitk.Resample(core, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    # Reasoning grid -> reference grid (same box, identity transform).
    enclosure_full = sitk.Resample(
        _image_like(enclosure, coarse), reference, sitk.Transform(), sitk.sitkLinear, 0.0
    )
    brain = (
        sitk.GetArrayViewFromImage(near_core).astype(bool)
        & (sitk.GetArrayViewFromImage(enclosure_full) >= MIN_ENCLOSURE)
        & _soft_tissue(sitk.GetArrayViewFromImage(reference), window_hu)
    )
    brain = largest_component(_image_like(brain, reference))
    return sitk.Cast(sitk.BinaryFillhole(brain, fullyConnected=False, foregroundValue=1), sitk.sitkUInt8)


def _soft_tissue(values: np.ndarray, window_hu: tuple[float, float]) -> np.ndarray:
    """Brain-like voxels: above air, below the midpoint between brain and bone.

    Voxels half bone and half brain (partial volume at the inner table) are left out, so the mask
    does not grow by a voxel layer at coarse spacings (about 100 ml at 2 mm).
    """
    lo, hi = window_hu
    return (values > head_threshold_hu(window_hu)) & (values < lo + BRAIN_MAX_FRACTION * (hi - lo))


def _reasoning_grid(reference: sitk.Image) -> sitk.Image:
    """The reference averaged in blocks to about REASONING_SPACING_MM (float32, same box)."""
    factor = max(1, int(round(REASONING_SPACING_MM / min(reference.GetSpacing()))))
    return sitk.BinShrink(sitk.Cast(reference, sitk.sitkFloat32), [factor] * 3)


def skull_mask(reference: sitk.Image, brain: sitk.Image, config: PreprocessConfig) -> np.ndarray:
    """Bone within SKULL_SHELL_MM of the intracranial space (the cranium, not the spine or jaw)."""
    distance = sitk.SignedMaurerDistanceMap(
        sitk.Cast(brain, sitk.sitkUInt8), insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    near = sitk.GetArrayViewFromImage(distance) <= SKULL_SHELL_MM
    bone = sitk.GetArrayViewFromImage(reference) >= bone_threshold_hu(config)
    return near & bone & ~sitk.GetArrayViewFromImage(brain).astype(bool)


def enclosure_fraction(bone: np.ndarray) -> np.ndarray:
    """For every voxel, the fraction of the 26 grid directions along which a ray meets bone.

    The bone is first thickened by one voxel (3x3x3): a diagonal ray steps between the voxels of a
    one-voxel-thick oblique shell (a thin skull at 2 mm) without touching any of them.
    """
    bone = ndimage.binary_dilation(bone, structure=np.ones((3, 3, 3), dtype=bool))
    directions = [d for d in itertools.product((-1, 0, 1), repeat=3) if any(d)]
    hits = np.zeros(bone.shape, dtype=np.float32)
    for direction in directions:
        hits += _bone_ahead(bone, direction)
    return hits / len(directions)


def _bone_ahead(bone: np.ndarray, direction: tuple[int, int, int]) -> np.ndarray:
    """hit[v] = bone at v + k*direction for some k >= 1, by one sweep along a non-zero axis."""
    axis = next(i for i in range(3) if direction[i] != 0)
    step = direction[axis]
    lateral = [direction[i] for i in range(3) if i != axis]
    sweep = np.moveaxis(bone, axis, 0)
    hit = np.zeros_like(sweep)
    n = sweep.shape[0]
    for i in (range(n - 2, -1, -1) if step > 0 else range(1, n)):
        hit[i] = _shift2d(sweep[i + step] | hit[i + step], lateral)
    return np.moveaxis(hit, 0, axis)


def _shift2d(values: np.ndarray, offsets: list[int]) -> np.ndarray:
    """out[p] = values[p + offsets], False where that falls outside."""
    out = np.zeros_like(values)
    source = tuple(slice(max(o, 0), n + min(o, 0)) for o, n in zip(offsets, values.shape))
    target = tuple(slice(max(-o, 0), n + min(-o, 0)) for o, n in zip(offsets, values.shape))
    out[target] = values[source]
    return out


def _image_like(values: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.uint8) if values.dtype == bool else values)
    image.CopyInformation(like)
    return image


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, origin) with physical = matrix @ (i, j, k) + origin."""
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return matrix, np.asarray(image.GetOrigin())


def midsagittal_plane(
    reference: sitk.Image, brain: sitk.Image, config: PreprocessConfig
) -> MidsagittalPlane:
    """The plane about which the reference head is most symmetric (windowed intensities, ~2 mm grid).

    Searches every yaw of the plane's normal (so a header whose x axis is not left-right still gives
    the anatomical mid-sagittal plane), then refines yaw, tilt and offset. The normal is oriented to
    +x (LPS patient left), or to +y when it runs closer to y than to x (a header with x not
    left-right, as in the CT-ICH dev data).
    """
    coarse = _reasoning_grid(reference)
    window_hu = config.window_hu
    values = np.clip(sitk.GetArrayFromImage(coarse), *window_hu)
    coarse_brain = sitk.Resample(brain, coarse, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    # Brain and skull together: the falx, ventricles and the skull's outline are all symmetric.
    margin = max(1, int(round(SYMMETRY_MARGIN_MM / coarse.GetSpacing()[0])))
    region = sitk.GetArrayFromImage(sitk.BinaryDilate(coarse_brain, [margin] * 3, sitk.sitkBall))
    region = region.astype(bool)
    if not region.any():
        raise ValueError("the reference has no intracranial space: cannot find its mid-sagittal plane")
    matrix, origin = _index_to_physical(coarse)
    kji = np.argwhere(region)[:: max(1, int(region.sum()) // SYMMETRY_SAMPLES)]
    points = kji[:, ::-1] @ matrix.T + origin
    center = np.argwhere(sitk.GetArrayViewFromImage(coarse_brain))[:, ::-1].mean(axis=0) @ matrix.T + origin
    sampled = values[tuple(kji.T)]
    to_index = np.linalg.inv(matrix)

    def asymmetry(params: np.ndarray) -> float:
        """params: yaw and tilt of the normal (degrees), offset from the brain's centre (mm)."""
        normal = _unit_normal(params[0], params[1])
        distance = (points - center) @ normal - params[2]
        mirrored = points - 2.0 * distance[:, None] * normal
        ijk = (mirrored - origin) @ to_index.T
        seen = ndimage.map_coordinates(values, ijk[:, ::-1].T, order=1, mode="constant", cval=window_hu[0])
        return -float(np.corrcoef(sampled, seen)[0, 1])

    best_yaw = min(np.arange(0.0, 180.0, 6.0), key=lambda yaw: asymmetry(np.array([yaw, 0.0, 0.0])))
    start = np.array([best_yaw, 0.0, 0.0])
    result = optimize.minimize(
        asymmetry, start, method="Nelder-Mead",
        options={"initial_simplex": np.vstack([start, start + np.diag([4.0, 4.0, 3.0])]),
                 "xatol": 0.05, "fatol": 1e-5, "maxiter": 120},
    )
    normal = _unit_normal(result.x[0], result.x[1])
    point = center + result.x[2] * normal
    axis = 0 if abs(normal[0]) >= abs(normal[1]) else 1
    if normal[axis] < 0:
        normal = -normal
    return MidsagittalPlane(tuple(float(v) for v in point), tuple(float(v) for v in normal))


def _unit_normal(yaw_deg: float, tilt_deg: float) -> np.ndarray:
    yaw, tilt = np.deg2rad(yaw_deg), np.deg2rad(tilt_deg)
    return np.array([np.cos(tilt) * np.cos(yaw), np.cos(tilt) * np.sin(yaw), np.sin(tilt)])
