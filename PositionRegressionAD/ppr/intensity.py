"""Intensity normalisation in model space: windowing and head-foreground histogram equalisation.

Turns a model-space image in HU into the network's input: float32 in [0, 1], background exactly 0.
It does not resample and does not decide what the head is (``ppr.masks`` does).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from skimage import exposure

from ppr.config import PreprocessConfig

EQUALIZE_BINS = 256


def window(image_hu: sitk.Image, window_hu: tuple[float, float]) -> sitk.Image:
    """Clip HU to [lo, hi] (float32, same grid)."""
    lo, hi = window_hu
    return sitk.Clamp(sitk.Cast(image_hu, sitk.sitkFloat32), sitk.sitkFloat32, float(lo), float(hi))


def normalize(image_hu: sitk.Image, head_mask: sitk.Image, config: PreprocessConfig) -> sitk.Image:
    """HU -> [0, 1] on the same grid: window, then equalise over the head (or scale linearly); 0 outside."""
    lo, hi = config.window_hu
    inside = sitk.GetArrayViewFromImage(head_mask).astype(bool)
    # Only head voxels are mapped: the background (most of the grid) is 0 by definition.
    head = np.clip(sitk.GetArrayViewFromImage(image_hu)[inside].astype(np.float32), lo, hi)
    if config.equalize and head.size:
        mapped = _equalize(head)
    else:
        mapped = (head - lo) / (hi - lo)
    scaled = np.zeros(inside.shape, dtype=np.float32)
    scaled[inside] = mapped
    result = sitk.GetImageFromArray(scaled)
    result.CopyInformation(image_hu)
    return result


def _equalize(head_values: np.ndarray) -> np.ndarray:
    """Histogram equalisation with the histogram of the head only (air would dominate it)."""
    return exposure.equalize_hist(head_values, nbins=EQUALIZE_BINS).astype(np.float32)
