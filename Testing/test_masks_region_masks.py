"""Region masks cover what they should: on synthetic heads with known anatomy (skull rings open in
some slices, LPS left known) and on every dev case used as the reference."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.image.imageio import read_image
from ppr.image.masks import enclosure_fraction, intracranial_mask, midsagittal_plane, region_masks
from ppr.image.preprocess import prepare_reference
from synthetic_heads import BONE_HU, make_head_to_physical, synthetic_head

CONFIG = PreprocessConfig(size=96, spacing_mm=2.0)
DEV_CONFIG = PreprocessConfig(size=128, spacing_mm=2.0, prewindowed=True)
KEYS = {"left_hemisphere", "right_hemisphere", "skull", "head"}
# The synthetic cranium: inner table ellipsoid centred (0, 0, 5) mm, radii 60 x 78 x 68, cut at z = -45.
INNER_CENTER = np.array([0.0, 0.0, 5.0])
INNER_RADII = np.array([60.0, 78.0, 68.0])
SKULL_BASE_Z = -45.0


def voxel_centers_mm(image: sitk.Image) -> np.ndarray:
    k, j, i = np.indices(image.GetSize()[::-1])
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return np.stack([i, j, k], axis=-1) @ matrix.T + np.asarray(image.GetOrigin())


def expected_cranium(image: sitk.Image, head_to_physical: sitk.Transform) -> np.ndarray:
    """Voxels inside the synthetic inner table (the intracranial space), in the head's own frame."""
    points = voxel_centers_mm(image).reshape(-1, 3)
    matrix = np.asarray(head_to_physical.GetMatrix()).reshape(3, 3)
    center = np.asarray(head_to_physical.GetCenter())
    offset = center + np.asarray(head_to_physical.GetTranslation()) - matrix @ center
    head_frame = (points - offset) @ matrix
    inside = np.sum(((head_frame - INNER_CENTER) / INNER_RADII) ** 2, axis=1) < 1.0
    inside &= head_frame[:, 2] > SKULL_BASE_Z + 3.0
    return inside.reshape(image.GetSize()[::-1])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def with_open_skull(head: sitk.Image) -> sitk.Image:
    """Cut the skull ring open, as thick slices, sutures and partial volume do in real scans: whole
    axial slabs with a 12 mm gap on one side, and a hole at the vertex."""
    values = sitk.GetArrayFromImage(head)
    points = voxel_centers_mm(head)
    bone = values >= 0.8 * BONE_HU
    gaps = np.zeros_like(bone)
    for z_mm, side in ((40.0, 1.0), (15.0, -1.0), (-10.0, 1.0)):
        slab = np.abs(points[..., 2] - z_mm) < 3.0
        gaps |= slab & (np.abs(points[..., 1]) < 6.0) & (side * points[..., 0] > 0)
    gaps |= (points[..., 2] > 60.0) & (np.hypot(points[..., 0], points[..., 1] - 10.0) < 6.0)
    values[bone & gaps] = 40
    opened = sitk.GetImageFromArray(values)
    opened.CopyInformation(head)
    return opened


def test_enclosure_is_complete_inside_a_thin_oblique_shell_and_partial_outside():
    k, j, i = np.indices((60, 60, 60)) - 29.5
    radius = np.sqrt(i**2 + (1.3 * j) ** 2 + (0.8 * k) ** 2)
    shell = np.abs(radius - 20.0) < 0.6  # about one voxel thick, oblique everywhere
    fraction = enclosure_fraction(shell)
    assert fraction[radius < 18.0].min() == 1.0
    assert fraction[radius > 23.0].max() < 0.75


def test_intracranial_mask_fills_a_skull_open_in_several_slices():
    pose = make_head_to_physical()
    head = with_open_skull(synthetic_head(size=(100, 100, 48), spacing=(2.0, 2.0, 4.0)))
    reference = prepare_reference(head, CONFIG)
    brain = sitk.GetArrayFromImage(intracranial_mask(reference, CONFIG)).astype(bool)
    expected = expected_cranium(reference, pose)
    assert dice(brain, expected) > 0.9
    volume_ml = brain.sum() * CONFIG.spacing_mm**3 / 1000.0
    assert volume_ml == pytest.approx(expected.sum() * CONFIG.spacing_mm**3 / 1000.0, rel=0.1)


@pytest.fixture(scope="module")
def yawed_reference() -> tuple[sitk.Image, sitk.Transform]:
    pose = make_head_to_physical((0.0, 0.0, 10.0), (4.0, -3.0, 0.0))
    head = synthetic_head(size=(100, 100, 48), spacing=(2.0, 2.0, 4.0), head_to_physical=pose)
    return prepare_reference(head, CONFIG), pose


def test_region_masks_have_the_documented_keys_and_shapes(yawed_reference):
    reference, _ = yawed_reference
    regions = region_masks(reference, CONFIG)
    assert set(regions) == KEYS
    for mask in regions.values():
        assert mask.dtype == bool and mask.shape == (96, 96, 96)


def test_hemispheres_follow_lps_left_is_plus_x_on_a_yawed_head(yawed_reference):
    reference, pose = yawed_reference
    regions = region_masks(reference, CONFIG)
    left, right = regions["left_hemisphere"], regions["right_hemisphere"]
    assert not np.any(left & right)
    assert 0.9 < left.sum() / right.sum() < 1.1
    # In the head's own frame, left voxels have x > 0 (patient left) and right voxels x < 0.
    matrix = np.asarray(pose.GetMatrix()).reshape(3, 3)
    head_x = (voxel_centers_mm(reference) - pose.TransformPoint((0.0, 0.0, 0.0))) @ matrix[:, 0]
    assert np.mean(head_x[left] > 0) > 0.98 and np.mean(head_x[right] < 0) > 0.98
    plane = midsagittal_plane(reference, intracranial_mask(reference, CONFIG), CONFIG)
    angle = np.rad2deg(np.arccos(np.clip(np.dot(plane.normal, matrix[:, 0]), -1.0, 1.0)))
    assert angle < 2.0


def test_skull_is_bone_around_the_brain_outside_it(yawed_reference):
    reference, _ = yawed_reference
    regions = region_masks(reference, CONFIG)
    brain = regions["left_hemisphere"] | regions["right_hemisphere"]
    skull, head = regions["skull"], regions["head"]
    assert not np.any(skull & brain)
    assert np.all(head[skull]) and np.all(head[brain])
    # The synthetic skull is a 6 mm shell around the brain: about 370 ml above the skull base.
    assert 250.0 < skull.sum() * CONFIG.spacing_mm**3 / 1000.0 < 500.0


def dev_cases() -> list[str]:
    from conftest import DEV_DATA_DIR

    table = Path(DEV_DATA_DIR) / "cases.csv"
    if not table.exists():
        return []
    with open(table, newline="") as handle:
        return [row["case"] for row in csv.DictReader(handle)]


def mirrored(mask: np.ndarray, reference: sitk.Image, normal: np.ndarray, point: np.ndarray) -> np.ndarray:
    """The mask reflected across a plane (nearest voxel)."""
    points = voxel_centers_mm(reference)[mask]
    reflected = points - 2.0 * ((points - point) @ normal)[:, None] * normal
    # The reference grid has identity direction: index = (point - origin) / spacing.
    index = np.round((reflected - np.asarray(reference.GetOrigin())) / np.asarray(reference.GetSpacing()))
    index = index.astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(reference.GetSize())), axis=1)
    out = np.zeros(mask.shape, dtype=bool)
    out[index[inside, 2], index[inside, 1], index[inside, 0]] = True
    return out


@pytest.mark.parametrize("case", dev_cases() or ["no-dev-data"])
def test_region_masks_of_every_dev_case_as_reference(dev_data_dir, case):
    reference = prepare_reference(read_image(dev_data_dir / f"{case}.nii.gz"), DEV_CONFIG)
    regions = region_masks(reference, DEV_CONFIG)
    ml = DEV_CONFIG.spacing_mm**3 / 1000.0
    left, right = regions["left_hemisphere"], regions["right_hemisphere"]
    brain = left | right
    assert 900.0 < brain.sum() * ml < 1900.0
    assert 0.85 < left.sum() / right.sum() < 1.18
    skull, head = regions["skull"], regions["head"]
    assert skull.sum() * ml > 150.0
    assert not np.any(skull & brain)
    assert np.all(head[brain]) and np.all(head[skull])
    # The split is the plane of symmetry: each hemisphere mirrored is the other one.
    plane = midsagittal_plane(reference, intracranial_mask(reference, DEV_CONFIG), DEV_CONFIG)
    assert dice(mirrored(left, reference, np.asarray(plane.normal), np.asarray(plane.point_mm)), right) > 0.8
