"""Training a model bundle from scan files: the ``ppr train`` workflow.

What it does: ``train_bundle`` prepares the reference and the cached model-space volumes, trains
(``ppr.networks.training``), optionally from the network of another bundle (fine-tuning), and writes
the model bundle (``ppr.workflows.bundle``) with its ``training_log.json`` (per-step loss,
validation loss, seconds, world_size).
Under torchrun every process (rank) runs ``train_bundle`` with the same arguments inside one process
group (``ppr.networks.distributed``): the ranks share the preprocessing and train one network
together (``ppr.networks.training``); rank 0 alone writes the checkpoint, ``training_log.json`` and
the bundle, and reports progress, while the other ranks wait for it at a barrier.

What it does not: parse arguments (``ppr.cli.train``) or hold the training loops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.image.imageio import read_image
from ppr.image.preprocess import prepare_reference
from ppr.networks import distributed
from ppr.networks.autoencoder import LEVELS, check_grid
from ppr.networks.training import (
    ProgressFn, TrainConfig, TrainingResult, augmentation_context, case_name, new_network, prepare_volumes, train,
)
from ppr.workflows.bundle import load_bundle, save_bundle

TRAINING_LOG = "training_log.json"


def default_cache_dir(out: Path) -> Path:
    """Preprocessed volumes and the checkpoint live beside the bundle: <out>.cache/."""
    out = Path(out)
    return out.parent / f"{out.name}.cache"


def write_training_log(path: Path, result_log: list[dict[str, Any]], config: TrainConfig,
                       cases: list[str], validation_cases: list[str],
                       initial_val_loss: float | None = None, world_size: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"config": config.to_dict(), "cases": cases, "validation_cases": validation_cases,
               "initial_val_loss": initial_val_loss, "world_size": world_size, "steps": result_log}
    path.write_text(json.dumps(content) + "\n")
    return path


def train_bundle(images: Sequence[Path], out: Path, preprocess: PreprocessConfig, config: TrainConfig,
                 reference_image: Path | None = None, validation_images: Sequence[Path] = (),
                 cache_dir: Path | None = None, resume: bool = False,
                 progress: ProgressFn | None = None,
                 init_from: Path | None = None, check_sync: bool = False) -> tuple[Path, TrainingResult]:
    """Preprocess (cached), train, and write the model bundle with its training_log.json.

    The reference is ``reference_image`` or else the first training image. ``init_from``: a model
    bundle whose network weights training starts from (fine-tuning; same method, m and patch size).
    Progress: 0-0.1 preprocessing, 0.1-0.98 training, then saving. ``check_sync``: every rank writes
    the digest of its weights after each step to ``<cache>/check-sync/rank<R>.txt`` (a test of
    distributed training: the files must be equal). Under torchrun the path returned on ranks other
    than 0 is where rank 0 wrote the bundle.
    """
    with distributed.session(config.device) as dist:
        if not dist.is_main:
            progress = None
        path, result = _train_bundle(images, out, preprocess, config, reference_image, validation_images,
                                     cache_dir, resume, progress, init_from, check_sync, dist.is_main)
        dist.barrier()  # the bundle is written when every rank returns
        return path, result


def _train_bundle(images: Sequence[Path], out: Path, preprocess: PreprocessConfig, config: TrainConfig,
                  reference_image: Path | None, validation_images: Sequence[Path], cache_dir: Path | None,
                  resume: bool, progress: ProgressFn | None, init_from: Path | None, check_sync: bool,
                  writes: bool) -> tuple[Path, TrainingResult]:
    report = progress or (lambda fraction, message: None)
    images = [Path(p) for p in images]
    if not images:
        raise PPRError("No training scans were given: train on at least one healthy head CT.")
    if config.method == "ae":  # before any preprocessing: a wrong grid is known at once
        check_grid((preprocess.size,) * 3, 2**LEVELS)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(out)
    reference_path = Path(reference_image) if reference_image is not None else images[0]
    report(0.0, f"preparing the reference {reference_path.name}")
    reference = prepare_reference(read_image(reference_path), preprocess)
    everything = [*images, *validation_images]
    prepared = prepare_volumes(everything, reference, preprocess, cache_dir / "volumes",
                               lambda f, m: report(0.1 * f, m))
    volumes, validation = prepared[:len(images)], prepared[len(images):]
    result = train(volumes, config, validation, checkpoint=cache_dir / "checkpoint.pt", resume=resume,
                   progress=lambda f, m: report(0.1 + 0.88 * f, m),
                   network=None if init_from is None else _initial_network(Path(init_from), config),
                   augmentation=augmentation_context(reference, preprocess) if config.augment else None,
                   sync_dir=cache_dir / "check-sync" if check_sync else None)
    if not writes:
        return Path(out), result
    report(0.98, "writing the model bundle")
    cases = [v.name for v in volumes]
    validation_cases = [v.name for v in validation]
    log_path = write_training_log(cache_dir / TRAINING_LOG, result.log, config, cases, validation_cases,
                                  result.initial_val_loss, result.world_size)
    summary = {
        "cases": cases, "case_count": len(cases), "validation_cases": validation_cases,
        "reference": case_name(reference_path), "steps": result.steps, "seconds": round(result.seconds, 1),
        "final_loss": result.final_loss, "final_val_loss": result.final_val_loss,
        "initial_val_loss": result.initial_val_loss,
        f"{config.rate_unit}_per_second": round(result.patches_per_second, 3 if config.method == "ae" else 1),
        "device": result.device, "world_size": result.world_size, "method": config.method,
        "config": config.to_dict(),
        "initialised_from": None if init_from is None else Path(init_from).name,
    }
    path = save_bundle(out, result.network, preprocess, reference, summary, {TRAINING_LOG: log_path})
    report(1.0, f"model bundle written to {path}")
    return path, result


def _initial_network(bundle_path: Path, config: TrainConfig) -> nn.Module:
    """The network of a bundle, to fine-tune: it must be what ``config`` would train."""
    network = load_bundle(bundle_path).network
    expected = new_network(config)
    if type(network) is not type(expected) or network.state_dict().keys() != expected.state_dict().keys() or any(
        network.state_dict()[k].shape != v.shape for k, v in expected.state_dict().items()
    ):
        raise PPRError(f"The bundle {bundle_path} holds another network than this training builds "
                       f"(method {config.method}, m {config.m}, patch size {config.patch_size}): "
                       "fine-tune with the bundle's own settings.")
    return network
