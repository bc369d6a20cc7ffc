"""``python -m ppr train IMAGES... --out BUNDLE``: train a PPR model bundle on healthy head CTs.

``--method ae`` trains the paper's autoencoder baseline instead (``ppr.networks.autoencoder``: L1 on
``--volumes-per-step`` whole volumes per step, default 4); its bundle records the method, and its
rate is in volumes per second (``volumes/s`` in the progress lines, ``volumes_per_second`` in JSON).

Argument parsing and printing only: the work is ``ppr.workflows.train.train_bundle``. With ``--progress``
every step prints ``PROGRESS <fraction> step S loss L [val V] patches/s R ETA Ts`` on stderr; with
``--json`` the last stdout line is one JSON object (bundle, steps, seconds, losses, patches/s).
Preprocessed volumes and the checkpoint are kept in ``<BUNDLE>.cache/`` (or ``--cache DIR``), so
a second run skips registration and ``--resume`` continues from the last checkpoint.

Many processes (GPUs or CPU processes) train one network together when started by torchrun:
``torchrun --standalone --nproc_per_node N -m ppr train ...`` on one machine, or on each of M machines
``torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id RUN
-m ppr train ...``; write ``--width`` for ``--m`` there (torchrun's parser takes ``--m`` for one of its
own options). Each process draws its own --batch patches (--crops crops, --volumes-per-step volumes)
per step, so one step uses world size x that many and --steps counts those larger steps. Rank 0 alone
validates, prints, and writes the checkpoint, the training log (with ``world_size``) and the bundle.
Each process computes on cuda:LOCAL_RANK (nccl) or the CPU (gloo). ``--check-sync`` proves that the
processes hold the same weights: each writes the hash of its weights after every step to
``<cache>/check-sync/rank<R>.txt``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.networks import distributed
from ppr.networks.training import AE_LOSSES, METHODS, MODES, TrainConfig

PREPROCESS = PreprocessConfig()
TRAINING = TrainConfig(steps=1)
DEFAULT_MINUTES = 60.0


TORCHRUN_HELP = ("Many processes: torchrun --standalone --nproc_per_node N -m ppr train ... (add --nnodes, "
                 "--rdzv_backend c10d, --rdzv_endpoint HOST:PORT, --rdzv_id on each machine of several; write "
                 "--width for --m). Each process draws its own batch, so one step uses N x --batch patches "
                 "(--crops crops, --volumes-per-step volumes); gradients are averaged, rank 0 alone validates "
                 "and writes the checkpoint, the log (world_size) and the bundle. GPUs: cuda:LOCAL_RANK, nccl; "
                 "CPU: gloo.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = TORCHRUN_HELP
    parser.add_argument("images", type=Path, nargs="+", help="healthy head CTs (files or DICOM folders)")
    parser.add_argument("--out", type=Path, required=True, help="model bundle to write (folder, or .zip)")
    parser.add_argument("--reference", type=Path, help="reference head CT (default: the first image)")
    parser.add_argument("--val", type=Path, nargs="+", default=[], help="healthy scans for the validation loss")
    parser.add_argument("--steps", type=int,
                        help="number of training steps (under torchrun each step takes every process's batch)")
    parser.add_argument("--max-minutes", type=float,
                        help="stop after this many minutes of training, validation not counted "
                             f"(default {DEFAULT_MINUTES:g} when --steps is not given)")
    parser.add_argument("--method", choices=METHODS, default=TRAINING.method,
                        help="ppr: patch position regression (default); ae: the autoencoder baseline")
    parser.add_argument("--volumes-per-step", type=int, default=TRAINING.volumes_per_step,
                        help="ae: whole volumes per step (default %(default)s, the paper's); per process "
                             "under torchrun")
    parser.add_argument("--ae-loss", choices=AE_LOSSES, default=TRAINING.ae_loss,
                        help="ae: L1 averaged over the head mask (default) or the whole volume")
    parser.add_argument("--batch", type=int, default=TRAINING.batch,
                        help="patches per step (sampled mode); per process under torchrun")
    parser.add_argument("--m", "--width", dest="m", type=int, default=TRAINING.m,
                        help="network width m (default %(default)s); write --width under torchrun, whose "
                             "own parser takes --m for an abbreviation of its options")
    parser.add_argument("--mode", choices=MODES, default=TRAINING.mode,
                        help="sampled: the paper's random patches; dense: crops run fully convolutionally")
    parser.add_argument("--crop", type=int, default=TRAINING.crop, help="dense mode: crop edge in voxels")
    parser.add_argument("--crops", type=int, default=TRAINING.crops,
                        help="dense mode: crops per step; per process under torchrun")
    parser.add_argument("--lr", type=float, default=TRAINING.lr, help="Adam learning rate")
    parser.add_argument("--val-every", type=int, default=TRAINING.val_every, help="steps between validations")
    parser.add_argument("--size", type=int, default=PREPROCESS.size, help="model grid voxels per axis")
    parser.add_argument("--spacing", type=float, default=PREPROCESS.spacing_mm, help="model grid spacing in mm")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"), default=list(PREPROCESS.window_hu),
                        help="intensity window in HU")
    parser.add_argument("--prewindowed", action="store_true",
                        help="the data was exported in the window already (air and bone saturate)")
    parser.add_argument("--augment", action="store_true",
                        help="dense PPR: show each crop as another scanner would (sharpness, gain, offset, noise, "
                             "field of view); the validation loss is measured without it")
    parser.add_argument("--init-from", type=Path, metavar="BUNDLE",
                        help="start from this bundle's network weights (fine-tuning; same m and patch size)")
    parser.add_argument("--cache", type=Path, help="folder of preprocessed volumes and the checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in the cache")
    parser.add_argument("--seed", type=int, default=TRAINING.seed)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")
    parser.add_argument("--check-sync", action="store_true",
                        help="under torchrun, a test: every process writes the hash of its weights after each "
                             "step to <cache>/check-sync/rank<R>.txt (the files must be equal)")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.4f} {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ppr.workflows.train import train_bundle  # here: preprocessing (pydicom, registration) only when training runs

    max_minutes = args.max_minutes
    if args.steps is None and max_minutes is None:
        max_minutes = DEFAULT_MINUTES
        print(f"no --steps or --max-minutes given: training for {DEFAULT_MINUTES:g} minutes", file=sys.stderr)
    try:
        preprocess = PreprocessConfig(size=args.size, spacing_mm=args.spacing, window_hu=tuple(args.window),
                                      prewindowed=args.prewindowed)
        config = TrainConfig(steps=args.steps, max_minutes=max_minutes, batch=args.batch, m=args.m,
                             mode=args.mode, crop=args.crop, crops=args.crops, lr=args.lr,
                             val_every=args.val_every, seed=args.seed, device=args.device, method=args.method,
                             volumes_per_step=args.volumes_per_step, ae_loss=args.ae_loss, augment=args.augment)
    except ValueError as error:
        raise PPRError(f"{error}: check the training options (python -m ppr train --help).") from None
    with distributed.session(config.device) as dist:
        if dist.enabled and dist.is_main:
            print(f"{dist.world_size} processes train together (torchrun): each step uses {dist.world_size} x "
                  f"the per-process batch; rank 0 writes the checkpoint, the log and the bundle", file=sys.stderr)
        path, result = train_bundle(args.images, args.out, preprocess, config, args.reference, args.val,
                                    args.cache, args.resume, _progress if args.progress and dist.is_main else None,
                                    init_from=args.init_from, check_sync=args.check_sync)
    if not dist.is_main:
        return 0
    report = {"bundle": str(path), "steps": result.steps, "seconds": round(result.seconds, 1),
              "final_loss": result.final_loss, "final_val_loss": result.final_val_loss,
              "initial_val_loss": result.initial_val_loss,
              f"{config.rate_unit}_per_second": round(result.patches_per_second, 3 if config.method == "ae" else 1),
              "device": result.device, "world_size": result.world_size, "method": config.method}
    if config.method == "ppr":  # dense or sampled: the autoencoder has no such choice
        report["mode"] = config.mode
    val = "n/a" if result.final_val_loss is None else f"{result.final_val_loss:.5f}"
    print(f"trained {result.steps} steps in {result.seconds:.0f} s on {result.device}: loss "
          f"{result.final_loss:.5f}, validation {val}; bundle written to {path}")
    if args.json:
        print(json.dumps(report))
    return 0
