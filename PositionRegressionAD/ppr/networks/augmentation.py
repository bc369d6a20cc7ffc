"""Training-time augmentation of what differs between CT scanners and protocols.

Works on model-space crops in windowed HU (after the brain anchor, ``ppr.image.intensity``) and maps them
to the network's [0, 1] input with the reference's equalisation curve, on the training device:
- sharpness: a blend towards a blurred copy (thick slices, soft kernels) or away from it (an
  unsharp mask: thin slices, sharp kernels), mostly across slices where protocols differ most;
- gain about the reference brain's median and a small offset (scanners' residual calibration);
- white noise (dose, slice thickness, kernel);
- a field of view cut: everything below a random height under the top of the head is outside the
  scan (as a head protocol that stops at the skull base), both in the input and in the loss.
The validation loss never sees augmentation. It does not read files or choose patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ppr.image.equalisation import EqualisationCurve

# Gaussian sigmas (voxels, z y x) of the blurred copy that sharpness blends with: model z runs
# across the slices of an axial scan.
SHARPNESS_SIGMA_VOXELS = (1.0, 0.5, 0.5)


@dataclass(frozen=True)
class ScannerAugmentation:
    """Ranges drawn uniformly per crop.

    sharpness: -1 is the blurred copy, 0 the crop, +1 the crop plus its difference to the blur.
    gain / offset_hu: hu -> centre + gain * (hu - centre) + offset, centre the reference brain's median.
    noise_sd_hu: standard deviation of added white noise per voxel of the model grid.
    fov_cut_probability / fov_keep_mm: how often the field of view is cut, and how much of the
        head (from its top, in mm) a cut keeps.
    """

    sharpness: tuple[float, float] = (-1.0, 1.0)
    gain: tuple[float, float] = (0.9, 1.1)
    offset_hu: tuple[float, float] = (-4.0, 4.0)
    noise_sd_hu: tuple[float, float] = (0.0, 4.0)
    fov_cut_probability: float = 0.3
    fov_keep_mm: tuple[float, float] = (140.0, 200.0)


def curve_on_device(curve: EqualisationCurve, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """(cumulative values, first centre, centre step) for ``apply_curve`` (centres are evenly spaced)."""
    centres = np.asarray(curve.centres_hu, dtype=np.float64)
    step = float(centres[1] - centres[0]) if centres.size > 1 else 1.0
    return torch.as_tensor(curve.cumulative, dtype=torch.float32, device=device), float(centres[0]), step


def apply_curve(hu: torch.Tensor, curve: tuple[torch.Tensor, float, float]) -> torch.Tensor:
    """EqualisationCurve.apply in torch: linear interpolation, clamped at both ends like np.interp."""
    cumulative, first, step = curve
    position = ((hu - first) / step).clamp(0.0, float(cumulative.numel() - 1))
    below = position.floor().long().clamp(max=cumulative.numel() - 2) if cumulative.numel() > 1 else position.long()
    if cumulative.numel() == 1:
        return cumulative[below]
    fraction = position - below.float()
    return cumulative[below] * (1 - fraction) + cumulative[below + 1] * fraction


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blurred(block: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of a (D, H, W) block (SHARPNESS_SIGMA_VOXELS), edges replicated."""
    out = block[None, None]
    for axis, sigma in enumerate(SHARPNESS_SIGMA_VOXELS):
        kernel = _gaussian_kernel(sigma).to(block.device)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = kernel.numel() // 2
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad, mode="replicate"), kernel.reshape(shape))
    return out[0, 0]


def augment_hu(block_hu: torch.Tensor, augmentation: ScannerAugmentation, window_hu: tuple[float, float],
               centre_hu: float, rng: np.random.Generator) -> torch.Tensor:
    """One scanner's look for a (D, H, W) crop in windowed HU: sharpness, gain, offset, noise, clipped."""
    amount = rng.uniform(*augmentation.sharpness)
    out = block_hu + amount * (block_hu - blurred(block_hu))
    out = centre_hu + rng.uniform(*augmentation.gain) * (out - centre_hu) + rng.uniform(*augmentation.offset_hu)
    noise_sd = rng.uniform(*augmentation.noise_sd_hu)
    if noise_sd > 0:
        generator = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**31)))
        out = out + noise_sd * torch.randn(out.shape, generator=generator).to(out.device)
    return out.clamp(*window_hu)


def fov_cut_index(head_top_index: int, spacing_mm: float, augmentation: ScannerAugmentation,
                  rng: np.random.Generator) -> int | None:
    """The model-grid z index below which a crop is outside the field of view, or None (no cut)."""
    if rng.uniform() >= augmentation.fov_cut_probability:
        return None
    keep_voxels = rng.uniform(*augmentation.fov_keep_mm) / spacing_mm
    return int(round(head_top_index - keep_voxels))
