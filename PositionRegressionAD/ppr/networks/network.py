"""The PPR network: a small 3D CNN that regresses the normalised position of a 31^3 patch.

What it does: defines ``PPRNet`` (Residual and Downsample blocks, spectral-normalised unpadded 3D
convolutions, LeakyReLU, average pooling by 2, a head of 1x1x1 convolutions to 3 outputs), the
normalised position of a voxel, the paper's loss, and ``fold_spectral_norm`` (plain weights for
inference). What it does not: read files, tile volumes or compute error maps (``inference.py``).

Why the network is exactly fully convolutional. Every convolution is unpadded and every layer is
translation-equivariant, so a larger input only adds output positions; no output ever sees a border
or padding. The two average poolings of 2 are the only strided operations. For a 31^3 patch the sizes
are (per axis)::

    stem conv k=4      31 -> 28        Downsample (avgpool 2)   28 -> 14
    Residual(m->2m)    14 -> 10        Downsample (avgpool 2)   10 -> 5
    Residual(2m->4m)    5 -> 1         head (1x1x1 convs)        1 -> 1

Both poolings see an even size, so no voxel is dropped, and a patch reduces to exactly 1x1x1. On a
volume of size L the output at index j is computed from the input window [4j, 4j + 30], with the same
pooling windows as the patch starting at 4j (4j is even at the first pooling, 2j at the second):
the output equals the patch's output number for number. The total stride is 4 and the receptive field
is exactly the patch. ``inference.py`` recovers the stride-1 map by replacing each pooling with
``pool`` (see ``PPRNet.forward``).

Other odd patch sizes s >= 29 keep the same body with a stem kernel of s - 27 (the stem always makes
28), so the arithmetic above holds for them too.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

# pool(x, index) replaces the index-th Downsample pooling; the default is AvgPool3d(2).
PoolFn = Callable[[torch.Tensor, int], torch.Tensor]

NEGATIVE_SLOPE = 0.2
# Size after the stem for every patch size: 28 -> 14 -> 10 -> 5 -> 1 is what makes the patch 1x1x1.
STEM_OUTPUT = 28


def _conv(in_channels: int, out_channels: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv3d(in_channels, out_channels, kernel, padding=0))


def _crop(x: torch.Tensor, margin: int) -> torch.Tensor:
    return x[:, :, margin:-margin, margin:-margin, margin:-margin]


def stem_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The one-channel stem as 2D convolutions over depth windows; equal to conv3d(x, weight, bias).

    A 3D convolution with one input channel is a poor fit for oneDNN (measured 3x slower than
    this on the CPU); folding the k depth taps into k input channels of a 2D convolution needs no
    copy beyond the unfold and returns channels-last 3D memory, which the next layers prefer.
    """
    batch, _, depth, height, width = x.shape
    k = weight.shape[2]
    windows = x[:, 0].unfold(1, k, 1)  # (B, D-k+1, H, W, k): k depth taps last, as NHWC channels
    windows = windows.reshape(batch * (depth - k + 1), height, width, k).permute(0, 3, 1, 2)
    y = nn.functional.conv2d(windows, weight[:, 0], bias)  # (B*(D-k+1), m, H', W')
    out_h, out_w = y.shape[-2:]
    y = y.permute(0, 2, 3, 1).reshape(batch, depth - k + 1, out_h, out_w, -1)
    return y.permute(0, 4, 1, 2, 3)


def default_pool(x: torch.Tensor, index: int) -> torch.Tensor:
    """The network's Downsample: average pooling by 2 (the patch / training path)."""
    return nn.functional.avg_pool3d(x, kernel_size=2, stride=2)


class Residual(nn.Module):
    """conv3 - act - conv3, plus a 1x1x1 skip cropped by 2 per side to the unpadded output size."""

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = NEGATIVE_SLOPE):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3)
        self.conv2 = _conv(out_channels, out_channels, 3)
        self.skip = _conv(in_channels, out_channels, 1)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)  # acts on fresh conv outputs only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.conv2(self.act(self.conv1(x)))
        return main + _crop(self.skip(x), 2)


class PPRNet(nn.Module):
    """Patch position regressor: a patch_size^3 patch in, its normalised (z, y, x) position out.

    >>> net = PPRNet(m=16)
    >>> net(torch.zeros(8, 1, 31, 31, 31)).shape
    torch.Size([8, 3, 1, 1, 1])

    Fed a larger volume it returns the positions of every 4th patch (stride 4), exactly.
    """

    stride = 4

    def __init__(self, m: int = 16, patch_size: int = 31):
        super().__init__()
        if m < 1:
            raise ValueError(f"width m must be at least 1, got {m}")
        if patch_size < 29 or patch_size % 2 == 0:
            raise ValueError(f"patch_size must be odd and at least 29, got {patch_size}")
        self.m = m
        self.patch_size = patch_size
        self.stem = _conv(1, m, patch_size - STEM_OUTPUT + 1)
        self.res1 = Residual(m, 2 * m)
        self.res2 = Residual(2 * m, 4 * m)
        self.head1 = _conv(4 * m, 4 * m, 1)
        self.head2 = _conv(4 * m, 3, 1)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)  # acts on fresh outputs only
        # Start at the grid centre: positions lie in [0, 1], so early steps learn shape, not offset.
        with torch.no_grad():
            self.head2.bias.fill_(0.5)

    @property
    def half(self) -> int:
        """Offset of the patch centre from the patch start (15 for 31)."""
        return self.patch_size // 2

    def forward(self, x: torch.Tensor, pool: PoolFn = default_pool) -> torch.Tensor:
        """(B, 1, D, H, W) intensities -> (B, 3, D', H', W') normalised positions.

        ``pool`` replaces the two Downsample poolings; inference passes a space-to-batch pooling
        that keeps every phase, so the same weights give the stride-1 map.
        """
        x = self.act(stem_conv(x, self.stem.weight, self.stem.bias))
        x = pool(x, 0)
        x = self.act(self.res1(x))
        x = pool(x, 1)
        x = self.act(self.res2(x))
        return self.head2(self.act(self.head1(x)))


def fold_spectral_norm(net: PPRNet) -> PPRNet:
    """An eval-mode copy with the spectral norm folded into plain weights.

    In eval mode the parametrisation divides by a sigma from the stored power-iteration vectors;
    folding computes that division once, so dense and patch inference use identical numbers and
    skip the per-call normalisation. The original network is not touched.
    """
    # A fresh network, not copy.deepcopy: a deep copy shares the parametrised classes with the
    # original, and removing the parametrisation from the copy would break the original.
    folded = PPRNet(net.m, net.patch_size).to(next(net.parameters()).device)
    folded.load_state_dict(net.state_dict())
    folded.eval()
    for module in folded.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    for parameter in folded.parameters():
        parameter.requires_grad_(False)
    return folded


def normalised_positions(indices: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
    """Voxel indices (n, 3) on a (z, y, x) grid of ``size`` -> positions (i + 0.5) / N in [0, 1]."""
    sizes = torch.as_tensor(size, dtype=torch.float32, device=indices.device)
    return (indices.to(torch.float32) + 0.5) / sizes


def position_loss(predicted: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None = None) -> torch.Tensor:
    """The paper's loss: mean over patches of ||x - f(p_x)|| (channel dimension 1).

    ``weight`` (same shape without the channel dimension, 0/1) restricts the mean to some
    positions, as dense training does for positions whose centre is outside the head.
    """
    distance = torch.linalg.vector_norm(predicted.float() - target.float(), dim=1)
    if weight is None:
        return distance.mean()
    weight = weight.to(distance.dtype)
    return (distance * weight).sum() / weight.sum().clamp_min(1.0)


def count_parameters(net: nn.Module) -> int:
    return sum(parameter.numel() for parameter in net.parameters())
