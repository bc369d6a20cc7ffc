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
    values = np.clip(sitk.GetArrayViewFromImage(image_hu).astype(np.float32), lo, hi)
    inside = sitk.GetArrayViewFromImage(head_mask).astype(bool)
    if config.equalize and inside.any():
        scaled = _equalize(values, inside)
    else:
        scaled = (values - lo) / (hi - lo)
    scaled[~inside] = 0.0
    result = sitk.GetImageFromArray(scaled.astype(np.float32))
    result.CopyInformation(image_hu)
    return result



def _equalize(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Histogram equalisation with the histogram taken over the head only (air would dominate it)."""
    return exposure.equalize_hist(values, nbins=EQUALIZE_BINS, mask=inside).astype(np.float32)
