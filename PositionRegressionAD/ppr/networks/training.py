"""Training a PPR network on healthy head CTs in model space.

What it does:
- ``prepare_volumes``: preprocess each scan once (``ppr.image.preprocess.to_model_space``) and cache the
  model-space volume and head mask (``.npz``) keyed by the file's hash, the configuration and the
  reference, so a second run (or a resumed one) skips registration.
- ``train``: Adam (lr 1e-4) on the paper's loss ||x - f(p_x)||, either
  ``sampled`` (the paper's way: ``batch`` patch centres drawn uniformly over the head mask of one
  volume per step, so no patch is background only) or ``dense`` (random crops run fully
  convolutionally: every stride-4 output of the crop is a patch, those whose centre is outside the
  head are masked out of the loss). A fixed seeded sample of validation patches gives the
  validation loss; checkpoints allow ``resume``; the run is seeded and repeatable on one device.
- ``train`` with ``method="ae"``: the autoencoder baseline (``ppr.networks.autoencoder``) instead, Adam on
  the L1 reconstruction loss of ``volumes_per_step`` whole volumes per step (the paper's batch of 4),
  by default inside the head mask (``ae_loss``); its validation loss is the same L1 over the
  validation volumes. Same checkpoints, resume, log and progress as PPR.
- Under ``torchrun`` (``ppr.networks.distributed``): every process (rank) draws its own patches, crops
  or volumes from all training scans with its own random stream (rank 0's is the single-process
  one), DistributedDataParallel averages the gradients, so one step uses world_size x the per-rank
  batch; the logged loss is the mean over ranks (the autoencoder's batch norm normalises each rank's
  own batch; its running statistics are averaged over ranks after each step). Rank 0 alone
  validates, reports progress and writes checkpoints (with every rank's random stream, so a resumed
  run continues each); ``resume`` reads the checkpoint on rank 0 and hands it to all; steps and the
  time limit are counted on rank 0's clock. ``prepare_volumes`` splits the preprocessing between ranks.

What it does not: write model bundles (``ppr.workflows.train.train_bundle``), parse arguments
(``ppr.cli.train``) or compute error maps (``ppr.networks.inference``).
Arrays are model-space numpy arrays indexed (z, y, x).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ppr.networks import distributed
from ppr.networks.augmentation import ScannerAugmentation, apply_curve, augment_hu, curve_on_device, fov_cut_index
from ppr.networks.autoencoder import AutoEncoder3D, check_grid, reconstruction_loss
from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.networks.inference import autocast_context, resolve_device
from ppr.image.equalisation import EqualisationCurve
from ppr.networks.network import PPRNet, normalised_positions, position_loss

if TYPE_CHECKING:  # for annotations only: training steps run without SimpleITK (see load_or_preprocess)
    from ppr.image.preprocess import IntensityAnchor

ProgressFn = Callable[[float, str], None]
MODES = ("sampled", "dense")
METHODS = ("ppr", "ae")
AE_LOSSES = ("head", "volume")
# 2: volumes carry their anchored HU (for augmentation) and the preprocessing anchors the brain.
CACHE_FORMAT = 2


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained.

    steps / max_minutes: stop at whichever comes first (at least one must be given); minutes of
        training steps, validation not counted.
    batch: patches per step (sampled mode), all from one volume as in the paper.
    crops, crop: dense mode: ``crops`` crops per step, each ``crop`` voxels per edge of patch
        centres (a multiple of 4; the crop read is crop + patch_size - 1), one volume per crop.
    mode: "dense" is the default because it learned more per second of compute on the dev data:
        16 healthy dev CTs at 2 mm (128^3), m = 16, 7 minutes of training steps each on the 2 shared
        CPU cores, validation loss 0.241 (dense, 451 positions/s) against 0.255 (sampled, 10
        patches/s). ``sampled`` is the paper's scheme and stays available.
    val_patches: size of the fixed validation sample; val_every: steps between validations.
    checkpoint_minutes: wall time between checkpoints (one is always written at the end).
    method: "ppr" (patch position regression) or "ae" (the autoencoder baseline of the paper's
        comparison, ``ppr.networks.autoencoder``; mode, batch, crop(s) and patch_size do not apply to it).
    volumes_per_step: AE batch, whole volumes per step (the paper's 4).
    ae_loss: where the AE's L1 is averaged. "head" (default): over head-mask voxels only, because
        the anomaly map is only read inside the head and the background, most of the grid and
        trivially 0, would otherwise dominate the mean and reward a blurry head; "volume": over
        the whole grid, as Baur et al. trained on whole images.
    augment: dense PPR training sees each crop as another scanner would show it
        (``ppr.networks.augmentation``: sharpness, gain, offset, noise, field of view); validation does not.
    """

    steps: int | None = None
    max_minutes: float | None = None
    batch: int = 256
    m: int = 16
    patch_size: int = 31
    lr: float = 1e-4
    mode: str = "dense"
    crops: int = 1
    crop: int = 64
    seed: int = 0
    device: str = "auto"
    val_patches: int = 1024
    val_every: int = 100
    checkpoint_minutes: float = 5.0
    autocast: bool = True
    method: str = "ppr"
    volumes_per_step: int = 4
    ae_loss: str = "head"
    augment: bool = False

    def __post_init__(self) -> None:
        if self.steps is None and self.max_minutes is None:
            raise ValueError("give a number of steps, a time limit in minutes, or both")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.crop < 4 or self.crop % 4:
            raise ValueError(f"crop must be a positive multiple of 4, got {self.crop}")
        if self.batch < 1 or self.crops < 1 or self.val_every < 1:
            raise ValueError("batch, crops and val_every must be at least 1")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.volumes_per_step < 1:
            raise ValueError(f"volumes_per_step must be at least 1, got {self.volumes_per_step}")
        if self.ae_loss not in AE_LOSSES:
            raise ValueError(f"ae_loss must be one of {AE_LOSSES}, got {self.ae_loss!r}")
        if self.augment and (self.method != "ppr" or self.mode != "dense"):
            raise ValueError("augment is implemented for dense PPR training (method ppr, mode dense)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return cls(**{"augment": False, **data})

    @property
    def rate_unit(self) -> str:
        """What ``patches_per_second`` counts: patches (positions) for PPR, volumes for the AE."""
        return "volumes" if self.method == "ae" else "patches"


def new_network(config: TrainConfig) -> nn.Module:
    """The untrained network a configuration trains: PPRNet or the autoencoder baseline."""
    if config.method == "ae":
        return AutoEncoder3D(config.m)
    return PPRNet(config.m, config.patch_size)


@dataclass(frozen=True)
class TrainingVolume:
    """One preprocessed scan: intensities in [0, 1] and its head mask on the model grid, and the
    windowed HU after the brain anchor that the intensities were mapped from (for augmentation)."""

    name: str
    volume: np.ndarray
    head_mask: np.ndarray
    anchored_hu: np.ndarray | None = None


@dataclass(frozen=True)
class AugmentationContext:
    """What augmentation needs beside the volumes: the ranges, the reference's curve, the window,
    the reference brain's median (the centre of gains) and the model grid's spacing."""

    augmentation: ScannerAugmentation
    curve: EqualisationCurve
    window_hu: tuple[float, float]
    centre_hu: float
    spacing_mm: float


@dataclass
class TrainingResult:
    """The trained network (train mode; PPRNet with its spectral norm kept, or AutoEncoder3D) and
    what happened. ``patches_per_second`` counts volumes per second for the AE (``TrainConfig.rate_unit``)."""

    network: nn.Module
    log: list[dict[str, Any]]
    steps: int
    seconds: float
    patches_per_second: float
    final_loss: float | None
    final_val_loss: float | None
    initial_val_loss: float | None
    device: str
    extra: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  # processes that trained together (torchrun); the log is rank 0's
    rank: int = 0


# ---------------------------------------------------------------------------------------------
# Cached preprocessing


def case_name(path: Path) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _cache_key(image_digest: str, reference_digest: str, config: PreprocessConfig) -> str:
    text = f"{CACHE_FORMAT}|{image_digest}|{reference_digest}|{config.to_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _reference_digest(reference: "sitk.Image") -> str:  # noqa: F821 - SimpleITK imported where used
    import SimpleITK as sitk  # here: training steps from a pack run without SimpleITK

    digest = hashlib.sha256(sitk.GetArrayViewFromImage(reference).tobytes())
    digest.update(repr((reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())).encode())
    return digest.hexdigest()


def load_or_preprocess(path: Path, reference: "sitk.Image", config: PreprocessConfig,  # noqa: F821
                       cache_dir: Path, reference_digest: str | None = None,
                       anchor: IntensityAnchor | None = None) -> TrainingVolume:
    """The model-space volume of one scan, from the cache or preprocessed (and cached) now
    (``anchor``: the reference's ``intensity_anchor``, when kept for many scans)."""
    # here: reading scans brings SimpleITK, pydicom and registration, which training steps need not
    import SimpleITK as sitk

    from ppr.image.imageio import file_digest
    from ppr.image.preprocess import to_model_space

    reference_digest = reference_digest or _reference_digest(reference)
    cached = Path(cache_dir) / f"{_cache_key(file_digest(path), reference_digest, config)}.npz"
    if cached.is_file():
        try:
            with np.load(cached, allow_pickle=False) as data:
                return TrainingVolume(case_name(path), data["volume"], data["head_mask"].astype(bool),
                                      data["anchored_hu"])
        except (OSError, ValueError, KeyError, EOFError):
            cached.unlink(missing_ok=True)  # a cache file cut short by an interrupted run
    result = to_model_space(path, reference, config, anchor)
    volume = sitk.GetArrayFromImage(result.volume).astype(np.float32)
    head = sitk.GetArrayFromImage(result.head_mask) > 0
    anchored = np.clip(sitk.GetArrayFromImage(result.windowed_hu) + np.float32(result.brain_shift_hu),
                       *config.window_hu).astype(np.float32)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.savez(handle, volume=volume, head_mask=head.astype(np.uint8), anchored_hu=anchored,
                 metric=np.float64(result.registration.metric), brain_shift_hu=np.float64(result.brain_shift_hu))
    partial.replace(cached)
    return TrainingVolume(case_name(path), volume, head, anchored)


def prepare_volumes(paths: Sequence[Path], reference: "sitk.Image", config: PreprocessConfig,  # noqa: F821
                    cache_dir: Path, progress: ProgressFn | None = None) -> list[TrainingVolume]:
    """Every scan in model space (cached); all unusable scans are named in one error.

    Under torchrun each rank first preprocesses its share of the scans into the cache, then every
    rank reads them all from it (a cache that a rank does not see, on another node, it fills itself)."""
    from ppr.image.preprocess import intensity_anchor  # here: see load_or_preprocess

    reference_digest = _reference_digest(reference)
    anchor = intensity_anchor(reference, config)  # once, not per scan
    dist = distributed.current()
    if dist.enabled:
        share = list(paths)[dist.rank::dist.world_size]
        _, problems = _prepare(share, reference, config, cache_dir, progress, reference_digest, anchor)
        problems = [problem for found in dist.gather(problems) for problem in found]
        if problems:
            raise _unusable(problems)
        progress = None  # the second pass reads the cache
    volumes, problems = _prepare(paths, reference, config, cache_dir, progress, reference_digest, anchor)
    if problems:
        raise _unusable(problems)
    return volumes


def _unusable(problems: list[str]) -> PPRError:
    return PPRError("These scans cannot be used for training; remove them or fix them:\n  "
                    + "\n  ".join(problems))


def _prepare(paths: Sequence[Path], reference: "sitk.Image", config: PreprocessConfig,  # noqa: F821
             cache_dir: Path, progress: ProgressFn | None, reference_digest: str,
             anchor: IntensityAnchor) -> tuple[list[TrainingVolume], list[str]]:
    volumes, problems = [], []
    for index, path in enumerate(paths):
        if progress is not None:
            progress(index / len(paths), f"preprocessing {Path(path).name}")
        try:
            volumes.append(load_or_preprocess(Path(path), reference, config, cache_dir, reference_digest, anchor))
        except PPRError as error:
            problems.append(f"{path}: {error}")
    return volumes, problems


# ---------------------------------------------------------------------------------------------
# Batches


class _PaddedVolume:
    """A training volume padded by patch_size // 2 with background, ready for patch reads.

    The padded intensities live on the training device: on a GPU, gathering 256 patches of 31^3 on
    the CPU and copying them over was what held the paper's sampled mode to ~10k patches/s.
    """

    def __init__(self, volume: TrainingVolume, half: int, device: torch.device = torch.device("cpu"),
                 augmentation: AugmentationContext | None = None):
        if not volume.head_mask.any():
            raise PPRError(f"The scan {volume.name} has an empty head mask in model space: it cannot be "
                           "used for training. Check that it is a head CT.")
        self.name = volume.name
        self.shape = volume.volume.shape
        self.padded = torch.from_numpy(np.pad(volume.volume.astype(np.float32), half)).to(device)
        self.head_mask = volume.head_mask
        self.head_indices = np.flatnonzero(volume.head_mask)
        self.head_top_index = int(np.nonzero(volume.head_mask.any(axis=(1, 2)))[0].max())
        self.augmentation = augmentation
        if augmentation is not None:
            if volume.anchored_hu is None:
                raise PPRError(f"The scan {volume.name} has no HU volume to augment: preprocess it again "
                               "(delete its cached volume) or train without augmentation.")
            lo = float(augmentation.window_hu[0])
            self.padded_hu = torch.from_numpy(np.pad(volume.anchored_hu.astype(np.float32), half,
                                                     constant_values=lo)).to(device)
            self.padded_head = torch.from_numpy(np.pad(volume.head_mask.astype(np.float32), half)).to(device)
            self.curve = curve_on_device(augmentation.curve, device)


def sample_centres(volume: _PaddedVolume, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` voxel indices (n, 3) drawn uniformly (with replacement) over the head mask."""
    flat = volume.head_indices[rng.integers(0, len(volume.head_indices), size=count)]
    return np.stack(np.unravel_index(flat, volume.shape), axis=1)


def extract_patches(padded: torch.Tensor, centres: np.ndarray, size: int) -> torch.Tensor:
    """(n, 1, s, s, s) patches centred on ``centres`` of a volume padded by s // 2."""
    offsets = torch.arange(size, device=padded.device)
    starts = torch.as_tensor(centres, dtype=torch.long, device=padded.device)
    z = (starts[:, 0, None] + offsets)[:, :, None, None]
    y = (starts[:, 1, None] + offsets)[:, None, :, None]
    x = (starts[:, 2, None] + offsets)[:, None, None, :]
    return padded[z, y, x][:, None]


def sampled_batch(volume: _PaddedVolume, count: int, size: int,
                  rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches and their normalised positions (n, 3, 1, 1, 1)."""
    centres = sample_centres(volume, count, rng)
    targets = normalised_positions(torch.from_numpy(centres), volume.shape)
    return extract_patches(volume.padded, centres, size), targets[:, :, None, None, None]


def dense_crop(volume: _PaddedVolume, crop: int, size: int,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One crop around a random head voxel: input (1, 1, crop + s - 1, ...), the positions of its
    stride-4 outputs (1, 3, crop/4, ...) and their weights (1 inside the head, 0 outside).

    On a grid smaller than crop + 4 the crop shrinks to fit (so crops of one step match in size
    only on one grid size: volumes of a training set share the model grid)."""
    # Outputs are 4 voxels apart: the crop must be able to start at 4 consecutive places, or
    # the patches centred between them would never be trained on (a crop as large as the grid).
    crop = max(4, min(crop, 4 * ((min(volume.shape) - 4) // 4)))
    centre = sample_centres(volume, 1, rng)[0]
    starts = [int(np.clip(c - crop // 2, 0, max(n - crop, 0))) for c, n in zip(centre, volume.shape)]
    reads = tuple(slice(s, s + crop + size - 1) for s in starts)
    block = volume.padded[reads]
    cut = None
    if volume.augmentation is not None:
        block, cut = _augmented_block(volume, reads, starts[0] - size // 2, rng)
    # Near the far edge of a small grid the read can be short: pad with background.
    missing = [crop + size - 1 - n for n in block.shape]
    if any(missing):
        block = torch.nn.functional.pad(block, (0, missing[2], 0, missing[1], 0, missing[0]))
    axes = [s + 4 * np.arange(crop // 4) for s in starts]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0)  # (3, c, c, c) centre indices
    inside = np.all(grid < np.asarray(volume.shape)[:, None, None, None], axis=0)
    clipped = np.minimum(grid, (np.asarray(volume.shape) - 1)[:, None, None, None])
    weights = volume.head_mask[tuple(clipped)] & inside
    if cut is not None:
        weights &= grid[0] >= cut  # centres outside the field of view teach nothing
    sizes = torch.tensor(volume.shape, dtype=torch.float32)[:, None, None, None]
    targets = (torch.from_numpy(grid).float() + 0.5) / sizes
    return block[None, None], targets[None], torch.from_numpy(weights)[None]


def _augmented_block(volume: _PaddedVolume, reads: tuple[slice, ...], first_z: int,
                     rng: np.random.Generator) -> tuple[torch.Tensor, int | None]:
    """The crop as another scanner would show it, and the field of view cut (z index) or None.

    first_z: the model-grid z index of the block's first slice (negative inside the padding)."""
    context = volume.augmentation
    hu = augment_hu(volume.padded_hu[reads], context.augmentation, context.window_hu, context.centre_hu, rng)
    block = apply_curve(hu, volume.curve) * volume.padded_head[reads]
    cut = fov_cut_index(volume.head_top_index, context.spacing_mm, context.augmentation, rng)
    if cut is not None and cut > first_z:
        block = block.clone()
        block[: cut - first_z] = 0.0
    return block, cut


# ---------------------------------------------------------------------------------------------
# Validation


@dataclass(frozen=True)
class ValidationSet:
    """A fixed sample of patch centres over the validation volumes (same every evaluation)."""

    volumes: tuple[_PaddedVolume, ...]
    centres: tuple[np.ndarray, ...]

    @classmethod
    def sample(cls, volumes: Sequence[_PaddedVolume], total: int, seed: int) -> "ValidationSet":
        rng = np.random.default_rng([seed, 7919])  # its own stream: training draws do not move it
        per_volume = max(1, math.ceil(total / max(len(volumes), 1)))
        return cls(tuple(volumes), tuple(sample_centres(v, per_volume, rng) for v in volumes))

    def loss(self, net: PPRNet, device: torch.device, batch: int = 256) -> float | None:
        if not self.volumes:
            return None
        total, count = 0.0, 0
        was_training = net.training
        net.eval()
        with torch.no_grad():
            for volume, centres in zip(self.volumes, self.centres):
                for first in range(0, len(centres), batch):
                    chunk = centres[first:first + batch]
                    patches = extract_patches(volume.padded, chunk, net.patch_size).to(device)
                    targets = normalised_positions(torch.from_numpy(chunk), volume.shape).to(device)
                    predicted = net(patches).float().reshape(-1, 3)
                    total += float(torch.linalg.vector_norm(predicted - targets, dim=1).sum())
                    count += len(chunk)
        net.train(was_training)
        return total / count


# ---------------------------------------------------------------------------------------------
# The autoencoder baseline: whole volumes


@dataclass(frozen=True)
class _WholeVolume:
    """A training volume as a (1, D, H, W) tensor with its head mask, ready for AE batches."""

    name: str
    volume: torch.Tensor
    head_mask: torch.Tensor

    @classmethod
    def of(cls, volume: TrainingVolume, stride: int) -> "_WholeVolume":
        check_grid(volume.volume.shape, stride)
        if not volume.head_mask.any():
            raise PPRError(f"The scan {volume.name} has an empty head mask in model space: it cannot be "
                           "used for training. Check that it is a head CT.")
        return cls(volume.name, torch.from_numpy(volume.volume.astype(np.float32))[None],
                   torch.from_numpy(volume.head_mask.astype(bool))[None])


def _ae_weight(volumes: Sequence[_WholeVolume], config: TrainConfig) -> torch.Tensor | None:
    return torch.stack([v.head_mask for v in volumes]) if config.ae_loss == "head" else None


def _ae_step_loss(net: AutoEncoder3D, volumes: Sequence[_WholeVolume], config: TrainConfig,
                  rng: np.random.Generator, device: torch.device) -> tuple[torch.Tensor, int]:
    """L1 of one batch of ``volumes_per_step`` whole volumes (without repeats while there are enough)."""
    count = config.volumes_per_step
    chosen = rng.choice(len(volumes), size=count, replace=count > len(volumes))
    batch = [volumes[int(i)] for i in chosen]
    x = torch.stack([v.volume for v in batch]).to(device)
    weight = _ae_weight(batch, config)
    with autocast_context(device, config.autocast):
        reconstruction = net(x)
    return reconstruction_loss(reconstruction, x, None if weight is None else weight.to(device)), count


def _ae_validation_loss(net: AutoEncoder3D, volumes: Sequence[_WholeVolume], config: TrainConfig,
                        device: torch.device) -> float | None:
    """Mean over the validation volumes of each volume's L1 (same region as the training loss)."""
    if not volumes:
        return None
    was_training = net.training
    net.eval()
    losses = []
    with torch.no_grad():
        for volume in volumes:
            x = volume.volume[None].to(device)
            weight = _ae_weight([volume], config)
            with autocast_context(device, config.autocast):
                reconstruction = net(x)
            losses.append(float(reconstruction_loss(reconstruction, x, None if weight is None else weight.to(device))))
    net.train(was_training)
    return float(np.mean(losses))


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class _State:
    step: int = 0
    seconds: float = 0.0
    patches: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    initial_val_loss: float | None = None
    # Where the steps ran: a run resumed on another machine (GPU steps, bundle written here) must
    # not be reported as trained on this one.
    devices: list[str] = field(default_factory=list)


def _checkpoint(path: Path, net: nn.Module, optimizer: torch.optim.Optimizer, state: _State,
                rng: np.random.Generator, config: TrainConfig, names: list[str],
                dist: distributed.Distributed = distributed.SINGLE) -> None:
    """Rank 0 writes the checkpoint, with every rank's random stream (all ranks must call this)."""
    rank_rngs = dist.gather(json.dumps(rng.bit_generator.state))
    if not dist.is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"network": net.state_dict(), "optimizer": optimizer.state_dict(), "step": state.step,
                "seconds": state.seconds, "patches": state.patches, "log": state.log,
                "initial_val_loss": state.initial_val_loss, "devices": state.devices,
                "rng": json.dumps(rng.bit_generator.state), "torch_rng": torch.get_rng_state(),
                "config": config.to_dict(), "cases": names, "world_size": dist.world_size,
                "rank_rngs": rank_rngs}, partial)
    partial.replace(path)  # never leave a half-written checkpoint under the real name


def _read_checkpoint(path: Path | None, dist: distributed.Distributed) -> dict[str, Any] | None:
    """The checkpoint at ``path`` as rank 0 reads it, on every rank; None when there is none."""
    payload: tuple[str, Any] | None = None
    if dist.is_main and path is not None and Path(path).is_file():
        try:
            payload = ("saved", torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # any unreadable checkpoint means the same to the user
            payload = ("error", f"The checkpoint {path} cannot be read ({error}): delete it to start afresh.")
    payload = dist.broadcast(payload)
    if payload is None:
        return None
    if payload[0] == "error":
        raise PPRError(payload[1])
    return payload[1]


def _rank_rng(seed: int, rank: int, step: int = 0) -> np.random.Generator:
    """Rank 0 draws the single-process stream; every other rank an independent one of its own."""
    if rank == 0 and step == 0:
        return np.random.default_rng(seed)
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(rank, step)))


def _restore(saved: dict[str, Any], path: Path, net: nn.Module, optimizer: torch.optim.Optimizer,
             rng: np.random.Generator, config: TrainConfig, names: list[str],
             dist: distributed.Distributed = distributed.SINGLE) -> _State:
    before = TrainConfig.from_dict(saved["config"])
    # The method first: a PPR checkpoint cannot continue as an autoencoder, nor the reverse.
    keys = (("method", "m", "volumes_per_step", "ae_loss", "lr", "seed") if config.method == "ae" else
            ("method", "m", "patch_size", "mode", "batch", "crop", "crops", "lr", "seed"))
    for key in keys:
        if getattr(before, key) != getattr(config, key):
            raise PPRError(f"The checkpoint {path} was trained with {key}={getattr(before, key)!r}, not "
                           f"{getattr(config, key)!r}: resume with the same settings or start afresh.")
    if saved["cases"] != names:
        raise PPRError(f"The checkpoint {path} was trained on other scans: resume with the same scans or "
                       "start afresh.")
    net.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    rank_rngs = saved.get("rank_rngs") or [saved["rng"]]
    if dist.rank < len(rank_rngs) and saved.get("world_size", 1) == dist.world_size:
        rng.bit_generator.state = json.loads(rank_rngs[dist.rank])
    elif dist.is_main:
        rng.bit_generator.state = json.loads(saved["rng"])
    else:  # the run had fewer processes before: this rank's stream starts here
        rng.bit_generator.state = _rank_rng(config.seed, dist.rank, saved["step"]).bit_generator.state
    torch.set_rng_state(saved["torch_rng"])
    # Checkpoints written before devices were recorded name the device in their config.
    devices = list(saved.get("devices") or [saved["config"].get("device", "unknown")])
    return _State(saved["step"], saved["seconds"], saved["patches"], list(saved["log"]),
                  saved["initial_val_loss"], devices)


def _step_loss(net: PPRNet, volumes: Sequence[_PaddedVolume], config: TrainConfig,
               rng: np.random.Generator, device: torch.device) -> tuple[torch.Tensor, int]:
    """Loss of one step and the number of patches (positions) it used."""
    if config.mode == "sampled":
        volume = volumes[int(rng.integers(len(volumes)))]
        patches, targets = sampled_batch(volume, config.batch, config.patch_size, rng)
        with autocast_context(device, config.autocast):
            predicted = net(patches.to(device))
        return position_loss(predicted, targets.to(device)), len(patches)
    blocks, targets, weights = [], [], []
    for _ in range(config.crops):
        volume = volumes[int(rng.integers(len(volumes)))]
        block, target, weight = dense_crop(volume, config.crop, config.patch_size, rng)
        blocks.append(block)
        targets.append(target)
        weights.append(weight)
    weight = torch.cat(weights).to(device)
    with autocast_context(device, config.autocast):
        predicted = net(torch.cat(blocks).to(device))
    return position_loss(predicted, torch.cat(targets).to(device), weight), int(weight.sum())


def train(volumes: Sequence[TrainingVolume], config: TrainConfig,
          validation: Sequence[TrainingVolume] = (), checkpoint: Path | None = None,
          resume: bool = False, progress: ProgressFn | None = None,
          network: nn.Module | None = None,
          augmentation: AugmentationContext | None = None,
          sync_dir: Path | None = None) -> TrainingResult:
    """Train a network (PPR, or the autoencoder with ``config.method == "ae"``) on model-space
    volumes; returns it with its per-step log.

    The log has one record per step: step (from 1), loss, seconds (of training steps so far,
    validation excluded) and, every ``val_every`` steps and at the end, val_loss (None without
    validation volumes). ``augmentation`` is required when ``config.augment`` is set (training
    crops only; the validation loss is measured on the volumes as they are). ``network``: start
    from these weights (fine-tuning) instead of a new network.

    Under torchrun (WORLD_SIZE > 1) every rank calls this with the same arguments: see the module's
    notes; the log, the validation losses and the checkpoint are rank 0's. ``sync_dir``: a check for
    tests and debugging: each rank writes ``rank<R>.txt`` there, one line "step sha256-of-weights"
    before the first step and after every step (the files of all ranks must be equal).
    """
    with distributed.session(config.device) as dist:
        return _train(volumes, config, validation, checkpoint, resume, progress, network, augmentation,
                      sync_dir, dist)


def _train(volumes: Sequence[TrainingVolume], config: TrainConfig, validation: Sequence[TrainingVolume],
           checkpoint: Path | None, resume: bool, progress: ProgressFn | None, network: nn.Module | None,
           augmentation: AugmentationContext | None, sync_dir: Path | None,
           dist: distributed.Distributed) -> TrainingResult:
    if config.augment and augmentation is None:
        raise ValueError("config.augment needs the augmentation context (the reference's curve and window)")
    if not volumes:
        raise PPRError("No training scans were given: train on at least one healthy head CT.")
    named_device = resolve_device(config.device)
    device = dist.local_device(named_device)
    torch.manual_seed(config.seed)  # the same initial network on every rank (DDP broadcasts rank 0's too)
    rng = _rank_rng(config.seed, dist.rank)
    if not dist.is_main:  # rank 0 alone validates and reports
        validation, progress = (), None
    net = (network or new_network(config)).to(device).train()
    model = net  # what the training steps call: net, or net in DistributedDataParallel below
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    names = [v.name for v in volumes]
    if config.method == "ae":
        whole = [_WholeVolume.of(v, net.stride) for v in volumes]
        whole_validation = [_WholeVolume.of(v, net.stride) for v in validation]

        def step_loss() -> tuple[torch.Tensor, int]:
            return _ae_step_loss(model, whole, config, rng, device)

        def validation_loss() -> float | None:
            return _ae_validation_loss(net, whole_validation, config, device)
    else:
        half = net.patch_size // 2
        padded = [_PaddedVolume(v, half, device, augmentation if config.augment else None) for v in volumes]
        validation_set = ValidationSet.sample([_PaddedVolume(v, half, device) for v in validation],
                                              config.val_patches, config.seed)

        def step_loss() -> tuple[torch.Tensor, int]:
            return _step_loss(model, padded, config, rng, device)

        def validation_loss() -> float | None:
            return validation_set.loss(net, device)
    state = _State()
    limit_s = None if config.max_minutes is None else config.max_minutes * 60.0
    saved = _read_checkpoint(checkpoint, dist) if resume else None
    if saved is not None:
        state = _restore(saved, Path(checkpoint), net, optimizer, rng, config, names, dist)
        if progress is not None:
            before = saved.get("world_size", 1)
            note = "" if before == dist.world_size else (
                f" (the checkpoint was written by {before} processes, this run has {dist.world_size})")
            progress(_fraction(state, config, limit_s), f"resumed at step {state.step}{note}")
    else:
        if resume and progress is not None:
            progress(0.0, f"no checkpoint at {checkpoint}: starting afresh")
        state.initial_val_loss = validation_loss()  # the untrained network's
    if dist.enabled:
        model = dist.wrap(net, device)
        if progress is not None:
            progress(_fraction(state, config, limit_s), f"{dist.world_size} processes: each step averages their "
                     f"gradients ({_per_rank_batch(config)} per process)")
    _write_sync(sync_dir, dist, state.step, net, first=True)
    last_checkpoint = time.perf_counter()

    def finished() -> bool:
        return ((config.steps is not None and state.step >= config.steps)
                or (limit_s is not None and state.seconds >= limit_s))

    while not finished():
        # The clock counts training steps only: validation time would penalise the mode that
        # validates more often per minute when modes are compared by learning per second.
        step_started = time.perf_counter()
        loss, used = step_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        dist.average_running_statistics(net)  # the autoencoder's batch norm
        if device.type == "cuda":
            torch.cuda.synchronize()
        state.step += 1
        if str(named_device) not in state.devices:
            state.devices.append(str(named_device))
        elapsed = time.perf_counter() - step_started
        loss_value = float(loss.detach())
        due = checkpoint is not None and time.perf_counter() - last_checkpoint > config.checkpoint_minutes * 60
        if dist.enabled:
            # One all-reduce: the mean loss and the patches of all ranks, rank 0's clock and rank 0's
            # checkpoint decision, so that every rank stops and checkpoints at the same step.
            mine = state.seconds + elapsed if dist.is_main else 0.0
            total_loss, used, state.seconds, due = dist.sum([loss_value, used, mine, due and dist.is_main])
            loss_value, used, due = total_loss / dist.world_size, int(used), bool(due)
        else:
            state.seconds += elapsed
        state.patches += used
        record: dict[str, Any] = {"step": state.step, "loss": loss_value, "seconds": round(state.seconds, 3)}
        if state.step % config.val_every == 0 or finished():
            record["val_loss"] = validation_loss()
        state.log.append(record)
        _write_sync(sync_dir, dist, state.step, net)
        if progress is not None:
            progress(_fraction(state, config, limit_s), _progress_message(state, record, config, limit_s))
        if due:
            _checkpoint(Path(checkpoint), net, optimizer, state, rng, config, names, dist)
            last_checkpoint = time.perf_counter()
    if state.log and "val_loss" not in state.log[-1]:
        state.log[-1]["val_loss"] = validation_loss()  # resumed at the very end
    if checkpoint is not None:
        _checkpoint(Path(checkpoint), net, optimizer, state, rng, config, names, dist)
    final_val = next((r["val_loss"] for r in reversed(state.log) if r.get("val_loss") is not None), None)
    return TrainingResult(
        network=net, log=state.log, steps=state.step, seconds=state.seconds,
        patches_per_second=state.patches / state.seconds if state.seconds > 0 else 0.0,
        final_loss=_recent_mean(state.log), final_val_loss=final_val,
        initial_val_loss=state.initial_val_loss, device=", ".join(state.devices) or str(named_device),
        world_size=dist.world_size, rank=dist.rank)


def _per_rank_batch(config: TrainConfig) -> str:
    if config.method == "ae":
        return f"{config.volumes_per_step} volumes"
    if config.mode == "sampled":
        return f"{config.batch} patches"
    return f"{config.crops} crops of {config.crop}^3 positions"


def _write_sync(sync_dir: Path | None, dist: distributed.Distributed, step: int, net: nn.Module,
                first: bool = False) -> None:
    """The sync check (``train(sync_dir=...)``): this rank's weights digest after ``step``."""
    if sync_dir is None:
        return
    path = Path(sync_dir) / f"rank{dist.rank}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w" if first else "a") as handle:
        handle.write(f"{step} {distributed.weights_digest(net)}\n")


def _recent_mean(log: list[dict[str, Any]]) -> float | None:
    """Mean loss of the last 10 % of steps (one step is noisy)."""
    if not log:
        return None
    recent = log[-max(1, len(log) // 10):]
    return float(np.mean([r["loss"] for r in recent]))


def _fraction(state: _State, config: TrainConfig, limit_s: float | None) -> float:
    parts = []
    if config.steps is not None:
        parts.append(state.step / config.steps)
    if limit_s is not None:
        parts.append(state.seconds / limit_s)
    return min(1.0, max(parts))


def _progress_message(state: _State, record: dict[str, Any], config: TrainConfig,
                      limit_s: float | None) -> str:
    fraction = _fraction(state, config, limit_s)
    eta = state.seconds * (1 - fraction) / fraction if fraction > 0 else float("nan")
    val = record.get("val_loss")
    val_text = f" val {val:.5f}" if val is not None else ""
    rate = state.patches / state.seconds if state.seconds > 0 else 0.0
    # Volumes per second of the AE are small numbers: they keep two decimals.
    rate_text = f"{rate:.2f}" if config.method == "ae" else f"{rate:.0f}"
    return (f"step {state.step} loss {record['loss']:.5f}{val_text} {config.rate_unit}/s {rate_text} "
            f"ETA {eta:.0f}s")


def augmentation_context(reference: "sitk.Image", preprocess: PreprocessConfig,  # noqa: F821
                         augmentation: ScannerAugmentation = ScannerAugmentation()) -> AugmentationContext:
    """The reference's curve and brain median, for augmenting crops in HU (``ppr.networks.augmentation``)."""
    from ppr.image.preprocess import intensity_anchor  # here: see load_or_preprocess

    anchor = intensity_anchor(reference, preprocess)
    centre = anchor.brain_median_hu if anchor.brain_median_hu is not None else float(np.mean(preprocess.window_hu))
    return AugmentationContext(augmentation, anchor.curve, preprocess.window_hu, centre, preprocess.spacing_mm)
