"""Places whose network patch reaches a cut of the scan's field of view are not measured: not scored,
z 0, not evidence in calibration. Box edges in air are not cuts. On a real dev case cut to its top
160 mm, the band above the cut that the full scan measured is dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.workflows.bundle import load_bundle
from ppr.workflows.detection import DetectOptions, detect
from ppr.image.field_of_view import context_voxels, cut_edge, measured_mask, scanned_box
from ppr.networks.network import PPRNet

CASE = "ctich_111"  # held-out healthy, 39 slices: its top 160 mm drop the lowest 30 mm
KEEP_MM = 160.0


def crop_top(image: sitk.Image, keep_mm: float) -> sitk.Image:
    """The slices within ``keep_mm`` of the top one (the scan's z axis is superior)."""
    heights = [image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(image.GetSize()[2])]
    keep = [k for k, height in enumerate(heights) if height >= max(heights) - keep_mm]
    return image[:, :, min(keep):max(keep) + 1]


def test_only_places_near_a_cut_through_the_head_are_dropped() -> None:
    shape = (64, 64, 64)
    box = np.ones(shape, dtype=bool)
    box[:20] = False  # the scan stops at z = 20, through the head
    box[:, :, 55:] = False  # and at x = 55, in the air beside it
    head = np.zeros(shape, dtype=bool)
    head[10:50, 10:50, 10:50] = True
    head &= box  # a head mask ends where the scan does
    cut = cut_edge(head, box)
    assert set(np.nonzero(cut)[0]) == {20}  # the first slice inside the box, nothing beside the air edge
    measured = measured_mask(head, box, context_voxels=5)
    expected = head.copy()
    expected[20:26] = False  # within 5 voxels of the cut
    np.testing.assert_array_equal(measured, expected)
    np.testing.assert_array_equal(measured_mask(head, box, context_voxels=0), head)
    assert context_voxels(PPRNet(m=2, patch_size=29)) == 14


@pytest.fixture(scope="module")
def full_and_cropped(tiny_bundle: Path, dev_data_dir: Path):
    bundle = load_bundle(tiny_bundle)
    full = sitk.ReadImage(str(dev_data_dir / f"{CASE}.nii.gz"))
    cropped = crop_top(full, KEEP_MM)
    options = DetectOptions(stride=4, device="cpu")
    return bundle, cropped, detect(full, bundle, options), detect(cropped, bundle, options)


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image) > 0


def _input_heights_mm(mask: np.ndarray, result) -> np.ndarray:
    """Superior coordinate, in the scan, of every model voxel of ``mask``."""
    k, j, i = np.nonzero(mask)
    points = (result.error_map_model.TransformIndexToPhysicalPoint((int(a), int(b), int(c))) for a, b, c in zip(i, j, k))
    return np.array([result.registration.transform.TransformPoint(point)[2] for point in points])


@pytest.mark.slow  # two detections with the tiny bundle (~12 s on 2 shared cores)
def test_a_scan_cut_to_its_top_160_mm_drops_the_places_near_the_cut(full_and_cropped) -> None:
    bundle, cropped, full_result, cropped_result = full_and_cropped
    assert cropped.GetSize()[2] == 33  # 6 of 39 slices cut away
    context = context_voxels(bundle.network)  # 14 voxels of 4 mm: the patch reaches 56 mm out
    head = _array(cropped_result.head_mask_model)
    measured = _array(cropped_result.measured_mask_model)
    box = scanned_box(cropped, cropped_result.registration.transform, cropped_result.error_map_model)
    cut = cut_edge(head, box)
    assert cut.sum() > 1000  # the new bottom slice crosses the head
    # Exactly the head less what lies within a patch of the cut.
    np.testing.assert_array_equal(measured, measured_mask(head, box, context))
    assert 0 < measured.sum() < 0.1 * head.sum()  # a 64^3 grid at 4 mm: most of the head is near a cut

    # In the scan's own frame, nothing measured lies within the patch's reach above the cut slice.
    cut_height = cropped.TransformIndexToPhysicalPoint((0, 0, 0))[2]
    assert _input_heights_mm(measured, cropped_result).min() - cut_height >= context * 4.0
    # Places the full scan measured there are dropped by the cut: 30-110 mm above it.
    dropped = _array(full_result.measured_mask_model) & ~measured & head
    assert dropped.sum() > 1000
    assert _input_heights_mm(dropped, cropped_result).min() - cut_height > 0.0

    # The region scores look at measured places only (no calibration here: the error in mm).
    errors = sitk.GetArrayFromImage(cropped_result.error_map_model)
    for name, region in bundle.region_masks.items():
        inside = errors[region & measured]
        if inside.size:
            assert cropped_result.regions[name] == pytest.approx(float(np.percentile(inside, 99.0))), name
        else:
            assert cropped_result.regions[name] is None, name
