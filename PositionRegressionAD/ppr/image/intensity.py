"""Intensity normalisation in model space: windowing and histogram equalisation.

Turns a model-space image in HU into the network's input: float32 in [0, 1], background exactly 0.
Two equalisation curves:
- "reference" (default): the curve of the reference head's histogram, the same for every scan. A
  scan's own histogram depends on its field of view (how much face and neck it holds) and on its
  noise, so a curve taken from it maps the same brain to different values on different scanners.
- "scan": each scan's own head histogram (bundles made before the reference curve existed).
With ``equalize`` off the window is mapped linearly. With ``anchor_brain`` a scan's HU are first
shifted so that its brain's median equals the reference brain's: scanners and the dev data's export
disagree by up to 15 HU on brain tissue (CT-ICH 33-40 HU, a Siemens scan 24 HU), and the curve is
steepest there, so without the shift another site's healthy brain reads as a different tissue. It does not resample and does not decide
what the head is (``ppr.image.masks`` does). numpy only: it runs in 3D Slicer's child processes.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.image.equalisation import EqualisationCurve

# Soft tissue as a fraction of the window (-14 to 64 HU for [-20, 100]): brain, not air or bone.
SOFT_TISSUE_FRACTION = (0.05, 0.7)
MIN_BRAIN_VOXELS = 1000


def window(image_hu: sitk.Image, window_hu: tuple[float, float]) -> sitk.Image:
    """Clip HU to [lo, hi] (float32, same grid)."""
    lo, hi = window_hu
    return sitk.Clamp(sitk.Cast(image_hu, sitk.sitkFloat32), sitk.sitkFloat32, float(lo), float(hi))


def head_values(image_hu: sitk.Image, head_mask: sitk.Image, window_hu: tuple[float, float]) -> np.ndarray:
    """The windowed HU of the head voxels (flat float32)."""
    inside = sitk.GetArrayViewFromImage(head_mask).astype(bool)
    return np.clip(sitk.GetArrayViewFromImage(image_hu)[inside].astype(np.float32), *window_hu)


def reference_curve(reference_hu: sitk.Image, reference_head: sitk.Image, config: PreprocessConfig) -> EqualisationCurve:
    """The equalisation curve of the reference head (model space), used for every scan."""
    return EqualisationCurve.of(head_values(reference_hu, reference_head, config.window_hu))


def brain_median_hu(image_hu: sitk.Image, brain: np.ndarray, config: PreprocessConfig) -> float | None:
    """Median HU of the soft tissue (between air and bone) inside ``brain`` (bool, model space);
    None when fewer than MIN_BRAIN_VOXELS are soft tissue (the scan does not cover the brain)."""
    lo, hi = config.window_hu
    values = sitk.GetArrayViewFromImage(image_hu)[brain]
    soft = values[(values > lo + SOFT_TISSUE_FRACTION[0] * (hi - lo)) & (values < lo + SOFT_TISSUE_FRACTION[1] * (hi - lo))]
    return float(np.median(soft)) if soft.size >= MIN_BRAIN_VOXELS else None


def normalize(
    image_hu: sitk.Image,
    head_mask: sitk.Image,
    config: PreprocessConfig,
    curve: EqualisationCurve | None = None,
    shift_hu: float = 0.0,
) -> sitk.Image:
    """HU -> [0, 1] on the same grid, 0 outside the head.

    curve: the reference curve; needed when config.equalize_over is "reference".
    shift_hu: added to the windowed HU (then clipped to the window again) before the mapping.
    """
    lo, hi = config.window_hu
    inside = sitk.GetArrayViewFromImage(head_mask).astype(bool)
    # Only head voxels are mapped: the background (most of the grid) is 0 by definition.
    head = head_values(image_hu, head_mask, config.window_hu)
    if shift_hu:
        head = np.clip(head + np.float32(shift_hu), lo, hi)
    if not config.equalize or not head.size:
        mapped = (head - lo) / (hi - lo)
    elif config.equalize_over == "reference":
        if curve is None:
            raise ValueError("equalize_over='reference' needs the reference head's curve")
        mapped = curve.apply(head)
    else:
        mapped = EqualisationCurve.of(head).apply(head)
    scaled = np.zeros(inside.shape, dtype=np.float32)
    scaled[inside] = mapped
    result = sitk.GetImageFromArray(scaled)
    result.CopyInformation(image_hu)
    return result
