"""The autoencoder baseline: a 3D convolutional autoencoder and its residual error map.

The paper (Bieder et al., MIDL 2022) compares PPR with the spatial autoencoder of Baur et al. 2021
("Autoencoders for unsupervised anomaly segmentation in brain MR images: a comparative study"),
adapted to 3D volumes with a width m and trained with an L1 reconstruction loss on whole volumes.
``AutoEncoder3D`` follows Baur et al.'s spatial AE:

- encoder: ``levels`` (default 4) 5^3 convolutions of stride 2 (channels m, 2m, 4m, 8m), each with
  batch normalisation and LeakyReLU, down to a *spatial* bottleneck (a 1^3 convolution to
  ``bottleneck`` channels, default m), so the code keeps a coarse map of the head rather than one
  vector: at a 128^3 grid the code is m x 8^3;
- decoder: the mirror image with 5^3 transposed convolutions of stride 2, and a last 1^3
  convolution to one channel through a sigmoid, so the reconstruction lies in [0, 1] like the
  preprocessed volumes.

The total stride is 2^levels (16), so the model grid must be divisible by it (128^3 at 2 mm, 256^3 at
1 mm); ``check_grid`` refuses other sizes with a ``PPRError``.

``residual_map`` is the AE's anomaly map: |x - AE(x)| on the model grid, post-filtered as in the
paper (``"erosion"``: grey erosion of size 5, for haemorrhage, the default; ``"median"``: median
filter of size 5, for fractures; ``"none"``), 0 outside the head. Its unit is intensity (the
preprocessed [0, 1] scale), not mm.

What it does not: train (``ppr.networks.training``), read bundles (``ppr.workflows.bundle``) or move maps to the
input's grid (``ppr.workflows.detection``). Arrays are model-space numpy arrays indexed (z, y, x). SciPy is
imported only when a post-filter runs, so the network and its training need only torch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ppr.errors import PPRError
from ppr.networks.inference import autocast_context, resolve_device

POST_FILTERS = ("erosion", "median", "none")
FILTER_SIZE = 5  # the paper's post-filter size, in model voxels
NEGATIVE_SLOPE = 0.2
KERNEL = 5  # Baur et al.'s spatial AE uses 5x5 kernels with stride 2
LEVELS = 4


class AutoEncoder3D(nn.Module):
    """Baur et al.'s spatial autoencoder in 3D (see the module docstring).

    >>> net = AutoEncoder3D(m=4)
    >>> net(torch.zeros(2, 1, 32, 32, 32)).shape
    torch.Size([2, 1, 32, 32, 32])
    """

    def __init__(self, m: int = 16, levels: int = LEVELS, bottleneck: int | None = None):
        super().__init__()
        if m < 1:
            raise ValueError(f"width m must be at least 1, got {m}")
        if levels < 1:
            raise ValueError(f"levels must be at least 1, got {levels}")
        self.m = m
        self.levels = levels
        self.bottleneck = bottleneck or m
        widths = [m * 2**level for level in range(levels)]
        encoder: list[nn.Module] = []
        previous = 1
        for width in widths:
            encoder.append(_block(nn.Conv3d(previous, width, KERNEL, stride=2, padding=KERNEL // 2), width))
            previous = width
        encoder.append(nn.Conv3d(previous, self.bottleneck, 1))
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [_block(nn.Conv3d(self.bottleneck, previous, 1), previous)]
        for width in reversed([m, *widths[:-1]]):
            # output_padding 1: a stride-2 transposed 5^3 convolution then doubles the size exactly
            decoder.append(_block(nn.ConvTranspose3d(previous, width, KERNEL, stride=2, padding=KERNEL // 2,
                                                     output_padding=1), width))
            previous = width
        decoder.append(nn.Conv3d(previous, 1, 1))
        self.decoder = nn.Sequential(*decoder)

    @property
    def stride(self) -> int:
        """Total stride of the encoder: every grid edge must be a multiple of it."""
        return 2**self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, D, H, W) intensities in [0, 1] -> their reconstruction, same shape, in [0, 1]."""
        return torch.sigmoid(self.decoder(self.encoder(x)))


def _block(conv: nn.Module, channels: int) -> nn.Sequential:
    return nn.Sequential(conv, nn.BatchNorm3d(channels), nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True))


def check_grid(shape: tuple[int, ...], stride: int) -> None:
    """Refuse a model grid the autoencoder cannot reconstruct voxel for voxel."""
    bad = [int(n) for n in shape if int(n) % stride]
    if bad or not shape:
        raise PPRError(f"The autoencoder needs a model grid whose edges are multiples of {stride} voxels, got "
                       f"{tuple(int(n) for n in shape)}: choose a grid size such as 128 or 256 (--size).")


def reconstruct(volume: np.ndarray, net: AutoEncoder3D, device: torch.device,
                autocast: bool = True) -> np.ndarray:
    """The autoencoder's reconstruction of one model-space volume (float32, same shape)."""
    check_grid(volume.shape, net.stride)
    was_training = net.training
    net.eval().to(device)
    try:
        with torch.inference_mode(), autocast_context(device, autocast):
            x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(device)
            return net(x)[0, 0].float().cpu().numpy()
    finally:
        net.train(was_training)


def post_filter(residual: np.ndarray, kind: str = "erosion", size: int = FILTER_SIZE) -> np.ndarray:
    """The paper's post-filter of a residual map: grey erosion, median, or none (model space)."""
    if kind not in POST_FILTERS:
        raise PPRError(f"Unknown post-filter {kind!r}: use one of {', '.join(POST_FILTERS)}.")
    if kind == "none":
        return residual
    import scipy.ndimage  # here: a bare GPU machine may lack SciPy, and post-filter "none" needs none

    if kind == "erosion":
        return scipy.ndimage.grey_erosion(residual, size=size)
    return scipy.ndimage.median_filter(residual, size=size)


def residual_map(volume: np.ndarray, head_mask: np.ndarray, net: AutoEncoder3D, post_filter_kind: str = "erosion",
                 device: str | torch.device = "auto", autocast: bool = True) -> np.ndarray:
    """|x - AE(x)| of a model-space volume, post-filtered, 0 outside the head (float32, intensity).

    The filter runs on the whole residual before the head mask is applied, so voxels at the edge of
    the head are filtered with their true neighbours rather than with zeros.
    """
    if volume.ndim != 3 or volume.shape != head_mask.shape:
        raise ValueError(f"volume {volume.shape} and head mask {head_mask.shape} must be the same 3D shape")
    if post_filter_kind not in POST_FILTERS:
        raise PPRError(f"Unknown post-filter {post_filter_kind!r}: use one of {', '.join(POST_FILTERS)}.")
    device = resolve_device(device) if isinstance(device, str) else device
    volume = volume.astype(np.float32, copy=False)
    residual = np.abs(volume - reconstruct(volume, net, device, autocast))
    filtered = post_filter(residual, post_filter_kind)
    return np.where(np.asarray(head_mask, dtype=bool), filtered, np.float32(0.0)).astype(np.float32)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean L1 of a reconstruction; with ``weight`` (0/1, same shape) the mean over weighted voxels."""
    difference = (reconstruction.float() - target.float()).abs()
    if weight is None:
        return difference.mean()
    weight = weight.to(difference.dtype)
    return (difference * weight).sum() / weight.sum().clamp_min(1.0)
