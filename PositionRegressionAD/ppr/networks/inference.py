"""Error maps in model space: the position error ||x - f(p_x)|| of every head voxel, in millimetres.

What it does: two ways to get the network's predicted position for voxels of a model-space volume,
which give the same numbers (max abs difference <= 1e-4 in float32):

- ``patches``: the paper's way, one patch per query voxel, batched. The reference and the baseline.
- ``dense``: the network run fully convolutionally over tiles of the volume. Each average pooling is
  replaced by a pooling with stride 1 whose result is split into its 8 phases (x[..., a::2, b::2,
  c::2]) stacked into the batch (space-to-batch); at the end the phases are interleaved back. Every
  voxel is filled exactly and nothing is computed twice.

``stride`` K in (1, 2, 4) computes every K-th voxel along each axis (ordinary strided pooling at the
first log2(K) poolings) and interpolates the error trilinearly to the full grid: a fast preview.

Tiles are T^3 output voxels (T a multiple of 4 so the phases line up) read with a halo of
patch_size - 1 voxels; the volume is padded with 0 (background). Tiles without any head voxel are
skipped. The error map outside the head mask is 0 (not NaN): downstream thresholds, overlays and
percentiles then need no NaN handling, and the region scores only look inside the head anyway.

What it does not: preprocessing, registration or resampling to the input's grid (``detection.py``).
All arrays here are model-space numpy arrays indexed (z, y, x).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.utils import parametrize

from ppr.errors import PPRError
from ppr.networks.network import PPRNet, fold_spectral_norm

ProgressFn = Callable[[float, str], None]

METHODS = ("dense", "patches")
STRIDES = (1, 2, 4)


@dataclass(frozen=True)
class InferenceOptions:
    """How an error map is computed.

    method: "dense" (fully convolutional, fast) or "patches" (one patch per voxel, the reference).
    stride: compute every stride-th voxel per axis and interpolate trilinearly (1 = every voxel).
    device: "auto" (CUDA when present), "cpu" or "cuda".
    tile: output voxels per tile edge in the dense path (multiple of 4); bounds the memory.
    batch: patches per forward pass in the patches path.
    autocast: bf16 (or fp16) autocast on CUDA; ignored on the CPU, which always runs float32.
    """

    method: str = "dense"
    stride: int = 1
    device: str = "auto"
    tile: int = 64
    batch: int = 256
    autocast: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {self.stride}")
        if self.tile < 4 or self.tile % 4:
            raise ValueError(f"tile must be a positive multiple of 4, got {self.tile}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.batch < 1:
            raise ValueError(f"batch must be at least 1, got {self.batch}")


def resolve_device(name: str) -> torch.device:
    """"auto" takes CUDA when present; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PPRError("CUDA was requested but no CUDA GPU is available: use --device cpu or auto.")
    return torch.device(name)


def inference_network(net: PPRNet, device: torch.device) -> PPRNet:
    """The network with plain (folded) weights in eval mode on ``device``."""
    parametrised = any(parametrize.is_parametrized(module) for module in net.modules())
    plain = fold_spectral_norm(net) if parametrised else net.eval()
    return plain.to(device)


def autocast_context(device: torch.device, enabled: bool) -> ContextManager:
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); plain float32 on the CPU."""
    if device.type != "cuda" or not enabled:
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Space-to-batch pooling and its inverse


def _to_phases(x: torch.Tensor) -> torch.Tensor:
    """(B, C, 2a, 2b, 2c) -> (8B, C, a, b, c); batch index = phase * B + b, phase = 4z + 2y + x.

    One permuting copy in channels-last memory (the layout the convolutions run fastest in on the
    CPU); measured no slower than stacking the eight strided slices, and it keeps the layout.
    """
    batch, channels, depth, height, width = x.shape
    voxels_last = x.permute(0, 2, 3, 4, 1)
    split = voxels_last.reshape(batch, depth // 2, 2, height // 2, 2, width // 2, 2, channels)
    split = split.permute(2, 4, 6, 0, 1, 3, 5, 7)
    split = split.reshape(8 * batch, depth // 2, height // 2, width // 2, channels)
    return split.permute(0, 4, 1, 2, 3)


def _phase_pool(strided_poolings: int) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """Pooling that keeps every phase from the pooling number ``strided_poolings`` on."""

    def pool(x: torch.Tensor, index: int) -> torch.Tensor:
        if index < strided_poolings:
            return F.avg_pool3d(x, kernel_size=2, stride=2)
        return _to_phases(F.avg_pool3d(x, kernel_size=2, stride=1))

    return pool


def _interleave(y: torch.Tensor, splits: int, batch: int) -> torch.Tensor:
    """Inverse of ``splits`` phase splits: (8^s B, C, q...) -> (B, C, 2^s q...).

    A later split has the larger weight: the output index is q * 2^s + a_last * 2^(s-1) + ... +
    a_first, because the first split happens at the finer (earlier) resolution.
    """
    if splits == 0:
        return y
    channels, q = y.shape[1], y.shape[-3:]
    y = y.reshape(*([2, 2, 2] * splits), batch, channels, *q)
    n = 3 * splits
    perm = [n, n + 1]
    for axis in range(3):
        perm.append(n + 2 + axis)
        perm.extend(3 * k + axis for k in range(splits))
    y = y.permute(perm)
    return y.reshape(batch, channels, *(qi * 2**splits for qi in q))


def dense_forward(net: PPRNet, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Predicted positions of every ``stride``-th patch of ``x`` (B, 1, T + s - 1, ...).

    Returns (B, 3, T / stride, ...): output j is the patch starting at input index j * stride. T must
    be a multiple of 4 along each axis so that every stride-1 pooling sees an even size.
    """
    if stride not in STRIDES:
        raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
    strided = int(math.log2(stride))
    y = net(x, pool=_phase_pool(strided))
    return _interleave(y, splits=2 - strided, batch=x.shape[0])


# ---------------------------------------------------------------------------------------------
# Coarse grid: the voxels actually computed for a stride


@dataclass(frozen=True)
class _CoarseGrid:
    """Sample points at fine indices stride * c, c < ceil(N / stride), per axis.

    Voxels past the last sample point (at most stride - 1 at the far edge of the model grid, which
    is background in a centred head) take the last point's value instead of a sample outside
    the grid, so a 256 grid at stride 4 needs exactly 64 points per axis.
    """

    stride: int
    count: tuple[int, int, int]

    @classmethod
    def for_volume(cls, shape: tuple[int, ...], stride: int) -> "_CoarseGrid":
        return cls(stride, tuple(math.ceil(n / stride) for n in shape))


def _needed_points(head_mask: np.ndarray, grid: _CoarseGrid) -> np.ndarray:
    """Coarse points that some head voxel is interpolated from.

    Voxel i reads points floor(i / K) and floor(i / K) + 1, so point c is needed when the head
    touches [K c - K + 1, K c + K - 1]: a max pooling of width 2K - 1 centred on K c.
    """
    k = grid.stride
    mask = torch.from_numpy(head_mask.astype(np.float32))[None, None]
    pooled = F.max_pool3d(mask, kernel_size=2 * k - 1, stride=k, padding=k - 1)
    return pooled[0, 0].numpy() > 0


def _axis_chunks(count: int, chunk: int, align: int) -> list[tuple[int, int]]:
    """(start, size) chunks of ``count`` points; the last one rounded up to a multiple of align."""
    chunks = []
    for start in range(0, count, chunk):
        size = min(chunk, count - start)
        chunks.append((start, math.ceil(size / align) * align))
    return chunks


def _computed_count(count: int, chunk: int, align: int) -> int:
    start, size = _axis_chunks(count, chunk, align)[-1]
    return start + size


def _padded_volume(volume: np.ndarray, half: int, extent: tuple[int, ...]) -> torch.Tensor:
    """The volume at offset ``half`` in a zero (background) block covering ``extent`` + halo."""
    padded = np.zeros(tuple(e + 2 * half for e in extent), dtype=np.float32)
    padded[tuple(slice(half, half + n) for n in volume.shape)] = volume
    return torch.from_numpy(padded)


def _target_positions(points: np.ndarray, stride: int, shape: tuple[int, ...]) -> np.ndarray:
    """Normalised positions (i + 0.5) / N of coarse points (n, 3) at fine indices stride * c."""
    return (points * stride + 0.5) / np.asarray(shape, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The two paths


def patch_positions(net: PPRNet, padded: torch.Tensor, starts: np.ndarray, batch: int,
                    device: torch.device, autocast: bool = True,
                    progress: ProgressFn | None = None) -> np.ndarray:
    """Predicted positions (n, 3) of the patches starting at ``starts`` (n, 3) in ``padded``.

    In a volume padded by patch_size // 2, a patch starting at i is centred on voxel i.
    """
    size = net.patch_size
    offsets = torch.arange(size)
    out = np.empty((len(starts), 3), dtype=np.float32)
    starts_t = torch.as_tensor(starts, dtype=torch.long)
    with torch.inference_mode(), autocast_context(device, autocast):
        for first in range(0, len(starts), batch):
            chunk = starts_t[first:first + batch]
            z = (chunk[:, 0, None] + offsets)[:, :, None, None]
            y = (chunk[:, 1, None] + offsets)[:, None, :, None]
            x = (chunk[:, 2, None] + offsets)[:, None, None, :]
            patches = padded[z, y, x][:, None].to(device)
            out[first:first + len(chunk)] = net(patches).float().reshape(-1, 3).cpu().numpy()
            if progress is not None:
                progress(min(1.0, (first + len(chunk)) / len(starts)), "patches")
    return out


def dense_positions(net: PPRNet, padded: torch.Tensor, needed: np.ndarray, stride: int,
                    tile: int, device: torch.device, autocast: bool = True,
                    progress: ProgressFn | None = None) -> np.ndarray:
    """Predicted positions (3, *needed.shape) at coarse points stride * c, tile by tile.

    Tiles are ``tile`` fine voxels per edge; the last tile along an axis is shorter (still a
    multiple of 4 fine voxels), so ``padded`` must cover ``_computed_count`` points per axis plus
    the halo. Tiles with no needed point are skipped and left at 0.
    """
    tile_c, align = tile // stride, 4 // stride  # coarse points per tile edge, per 4 voxels
    halo = net.patch_size - 1
    counts = needed.shape
    computed = tuple(_computed_count(c, tile_c, align) for c in counts)
    out = np.zeros((3, *computed), dtype=np.float32)
    tiles = [(z, y, x) for z in _axis_chunks(counts[0], tile_c, align)
             for y in _axis_chunks(counts[1], tile_c, align)
             for x in _axis_chunks(counts[2], tile_c, align)]
    tiles = [t for t in tiles if needed[tuple(slice(start, start + size) for start, size in t)].any()]
    with torch.inference_mode(), autocast_context(device, autocast):
        for done, tile_chunks in enumerate(tiles):
            inputs = tuple(slice(start * stride, (start + size) * stride + halo)
                           for start, size in tile_chunks)
            outputs = tuple(slice(start, start + size) for start, size in tile_chunks)
            prediction = dense_forward(net, padded[inputs][None, None].to(device), stride)
            out[(slice(None), *outputs)] = prediction[0].float().cpu().numpy()
            if progress is not None:
                progress((done + 1) / len(tiles), f"tile {done + 1}/{len(tiles)}")
    return out[(slice(None), *(slice(0, c) for c in counts))]


def error_map(volume: np.ndarray, head_mask: np.ndarray, net: PPRNet, spacing_mm: float,
              options: InferenceOptions = InferenceOptions(),
              progress: ProgressFn | None = None) -> np.ndarray:
    """Position error in mm of every voxel of a model-space volume (z, y, x); 0 outside the head.

    volume: float32 intensities in [0, 1] on the model grid; head_mask: bool, same shape.
    The error is ||x - f(p_x)|| per axis scaled by N_axis * spacing_mm (the grid is a cube, so this
    is ||x - f(p_x)|| * N * spacing_mm).
    """
    if volume.ndim != 3 or volume.shape != head_mask.shape:
        raise ValueError(f"volume {volume.shape} and head mask {head_mask.shape} must be the same 3D shape")
    device = resolve_device(options.device)
    plain = inference_network(net, device)
    grid = _CoarseGrid.for_volume(volume.shape, options.stride)
    needed = _needed_points(head_mask.astype(bool), grid)
    half = plain.patch_size // 2
    tile_c, align = options.tile // options.stride, 4 // options.stride
    extent = tuple(_computed_count(c, tile_c, align) * options.stride for c in grid.count)
    padded = _padded_volume(volume.astype(np.float32, copy=False), half, extent)

    if options.method == "dense":
        predicted = dense_positions(plain, padded, needed, options.stride, options.tile, device,
                                    options.autocast, progress)
        points = np.argwhere(needed)
        predicted = predicted[:, needed].T
    else:
        points = np.argwhere(needed)
        predicted = patch_positions(plain, padded, points * options.stride, options.batch, device,
                                    options.autocast, progress)

    scale_mm = np.asarray(volume.shape, dtype=np.float64) * spacing_mm
    errors = np.linalg.norm((predicted - _target_positions(points, options.stride, volume.shape))
                            * scale_mm, axis=1)
    coarse = np.zeros(grid.count, dtype=np.float32)
    coarse[tuple(points.T)] = errors
    return _to_full_grid(coarse, grid, volume.shape) * head_mask


def _to_full_grid(coarse: np.ndarray, grid: _CoarseGrid, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear interpolation from the coarse sample points to every voxel (identity for K = 1).

    Points sit at fine indices K c, so with align_corners the grid of (count + 1) points maps
    onto count * K + 1 voxels exactly; the extra point repeats the last one (see _CoarseGrid).
    """
    if grid.stride == 1:
        return coarse
    extended = F.pad(torch.from_numpy(coarse)[None, None], (0, 1, 0, 1, 0, 1), mode="replicate")
    size = tuple(c * grid.stride + 1 for c in grid.count)
    fine = F.interpolate(extended, size=size, mode="trilinear", align_corners=True)
    return fine[0, 0, :shape[0], :shape[1], :shape[2]].numpy()
