"""The bundled default model on the bundled demo case: the calibrated overlay lands on the injury.

This guards the shipped model and calibration, not the code: a retrained or recalibrated default
model whose overlay drifts to the neck, the face or the background fails here. Same settings as
``./run-demo`` (stride 4, calibrated z-map, the calibration's overlay threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk

from PositionRegressionADLib.detection_logic import default_model_path
from ppr.workflows.bundle import load_bundle
from ppr.workflows.detection import DetectOptions, detect
from ppr.image.imageio import read_image


@pytest.mark.slow
def test_the_largest_flagged_region_touches_the_haemorrhage(repo_root):
    sample = repo_root / "Resources" / "Sample"
    bundle = load_bundle(default_model_path())
    assert bundle.calibration is not None, "the default model ships calibrated"
    result = detect(read_image(sample / "ctich_051.nii.gz"), bundle,
                    DetectOptions(stride=4, device="cpu"))
    z = sitk.GetArrayFromImage(result.z_map_input)
    mask_image = sitk.ReadImage(str(sample / "ctich_051_ich_mask.nii.gz"))
    haemorrhage = sitk.GetArrayFromImage(mask_image) > 0
    flagged = z >= result.overlay_threshold_z
    assert flagged.any()

    spacing_zyx = mask_image.GetSpacing()[::-1]
    distance_mm = scipy.ndimage.distance_transform_edt(~haemorrhage, sampling=spacing_zyx)
    labels, count = scipy.ndimage.label(flagged)
    sizes = scipy.ndimage.sum(flagged, labels, range(1, count + 1))
    largest = labels == 1 + int(np.argmax(sizes))
    assert distance_mm[largest].min() <= 2.0  # the largest flagged region reaches the haemorrhage
    # Flagged regions that reach it are most of what is shown (the retrained model of 2026-11-30
    # shows three such regions around the bleed, 82 % of the flagged voxels; its largest alone is 36 %).
    touching = np.unique(labels[flagged & (distance_mm <= 2.0)])
    assert np.isin(labels[flagged], touching).mean() >= 0.5
    assert np.mean(distance_mm[flagged] <= 20.0) >= 0.6  # little is shown far from it
