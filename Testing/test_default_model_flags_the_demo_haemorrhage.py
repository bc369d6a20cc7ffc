"""The bundled default model on the bundled demo case: the overlay lands on the injury, and nowhere
outside the brain and skull.

This guards the shipped model, calibration and intensity atlas, not the code: a retrained or
recalibrated default model whose overlay drifts to the scalp, the face, the neck or the background
fails here. Same settings as ``./run-demo`` (stride 4, the shown anomaly map at its threshold).

Measured on 2026-11-30 (issue 15): the anomaly map shows 23 % of its flagged voxels inside the
labelled haemorrhage (a thin extra-axial crescent along the occipital skull), none outside the
brain and skull; the position z-map it replaced as the overlay showed 2.5 % inside, most of the
rest on the scalp swelling beside the bleed (its largest flagged region touches the bleed). The
anomaly map's brightest spots here are small dense places in the brain (near the falx and the
ventricles), not the crescent: that is in the model card.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk

from PositionRegressionADLib.detection_logic import default_model_path
from ppr.image.geometry import to_input_space
from ppr.image.imageio import read_image
from ppr.statistics.scores import focus_mask
from ppr.workflows.bundle import load_bundle
from ppr.workflows.detection import DetectOptions, detect


@pytest.fixture(scope="module")
def demo(repo_root):
    sample = repo_root / "Resources" / "Sample"
    bundle = load_bundle(default_model_path())
    assert bundle.calibration is not None and bundle.intensity_atlas is not None, \
        "the default model ships calibrated, with its intensity atlas"
    image = read_image(sample / "ctich_051.nii.gz")
    result = detect(image, bundle, DetectOptions(stride=4, device="cpu"))
    haemorrhage = sitk.GetArrayFromImage(read_image(sample / "ctich_051_ich_mask.nii.gz")) > 0
    return bundle, image, result, haemorrhage


@pytest.mark.slow
def test_the_anomaly_map_shows_the_haemorrhage_and_nothing_outside_brain_and_skull(demo):
    bundle, image, result, haemorrhage = demo
    assert result.shown_map == "anomaly"
    shown = sitk.GetArrayFromImage(result.z_map_input)
    flagged = shown >= result.overlay_threshold_z
    assert flagged.any()
    assert (flagged & haemorrhage).sum() >= 0.15 * flagged.sum()  # 23 % measured; the position z-map: 2.5 %
    focus = focus_mask(bundle.region_masks, sitk.GetArrayFromImage(result.head_mask_model) > 0).astype(np.uint8)
    focus_image = sitk.GetImageFromArray(focus)
    focus_image.CopyInformation(result.head_mask_model)
    inside = sitk.GetArrayFromImage(to_input_space(focus_image, result.registration.transform, image, 0,
                                                   sitk.sitkNearestNeighbor)) > 0
    # Linear resampling spreads a flagged model voxel (2 mm) at most one model voxel beyond the region.
    beyond_mm = scipy.ndimage.distance_transform_edt(~inside, sampling=image.GetSpacing()[::-1])
    assert beyond_mm[flagged].max() <= bundle.preprocess.spacing_mm * 1.8


@pytest.mark.slow
def test_the_position_error_map_still_points_beside_the_haemorrhage(demo):
    bundle, image, result, haemorrhage = demo
    z = sitk.GetArrayFromImage(result.position_z_map_input)
    flagged = z >= result.position_overlay_threshold_z
    assert flagged.any()
    spacing_zyx = image.GetSpacing()[::-1]
    distance_mm = scipy.ndimage.distance_transform_edt(~haemorrhage, sampling=spacing_zyx)
    labels, count = scipy.ndimage.label(flagged)
    sizes = scipy.ndimage.sum(flagged, labels, range(1, count + 1))
    largest = labels == 1 + int(np.argmax(sizes))
    assert distance_mm[largest].min() <= 2.0  # the largest flagged region reaches the haemorrhage
    assert np.mean(distance_mm[flagged] <= 20.0) >= 0.6  # little is shown far from it
