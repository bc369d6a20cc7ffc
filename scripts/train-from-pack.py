"""Run the training steps on another machine (a GPU box with torch but without SimpleITK or the scans).

Preprocessing needs SimpleITK and the raw scans; the training steps need only torch and the
model-space volumes. This script moves the second part:

  here:   python scripts/train-from-pack.py pack --cache CACHE/volumes --reference REF \
              --train A.nii.gz B.nii.gz ... --val C.nii.gz ... --size 128 --spacing 2 --prewindowed \
              --out pack.npz
  there:  python scripts/train-from-pack.py train pack.npz --checkpoint OUT/checkpoint.pt \
              --max-minutes 7 [--mode dense --crops 2 --crop 48 --lr 1e-4 --augment ...]
          (the autoencoder baseline: --method ae [--volumes-per-step 4])
  here:   cp checkpoint.pt CACHE/checkpoint.pt
          python -m ppr train A.nii.gz ... --val C.nii.gz ... --cache CACHE --resume --steps S ...

The last command restores the checkpoint (same scans, same settings, else it refuses), finds the
step count reached, and writes the bundle with the full training log: the bundle records the
device the steps ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "PositionRegressionAD"))

from ppr.networks.augmentation import ScannerAugmentation  # noqa: E402
from ppr.image.equalisation import EqualisationCurve  # noqa: E402
from ppr.networks.training import AugmentationContext, TrainConfig, TrainingVolume, train  # noqa: E402


def pack(args: argparse.Namespace) -> None:
    from ppr.config import PreprocessConfig
    from ppr.image.imageio import read_image
    from ppr.image.preprocess import prepare_reference
    from ppr.networks.training import augmentation_context, prepare_volumes

    config = PreprocessConfig(size=args.size, spacing_mm=args.spacing, prewindowed=args.prewindowed)
    reference = prepare_reference(read_image(args.reference), config)
    volumes = prepare_volumes([*args.train, *args.val], reference, config, args.cache)
    arrays: dict[str, np.ndarray] = {}
    for volume in volumes:
        arrays[f"{volume.name}__volume"] = volume.volume.astype(np.float32)
        arrays[f"{volume.name}__head_mask"] = volume.head_mask.astype(np.uint8)
        arrays[f"{volume.name}__anchored_hu"] = volume.anchored_hu.astype(np.float32)
    # What augmentation needs from the reference travels too: the GPU box has no SimpleITK.
    context = augmentation_context(reference, config)
    arrays["curve_centres_hu"] = np.asarray(context.curve.centres_hu)
    arrays["curve_cumulative"] = np.asarray(context.curve.cumulative)
    arrays["augment_window_centre_spacing"] = np.array([*context.window_hu, context.centre_hu, context.spacing_mm])
    names = [v.name for v in volumes]
    np.savez_compressed(args.out, train=np.array(names[:len(args.train)]),
                        validation=np.array(names[len(args.train):]), **arrays)
    print(f"packed {len(args.train)} training and {len(args.val)} validation volumes into {args.out}")


def _load_pack(path: Path) -> tuple[list[TrainingVolume], list[TrainingVolume], AugmentationContext | None]:
    with np.load(path, allow_pickle=False) as data:
        def volumes(names: np.ndarray) -> list[TrainingVolume]:
            return [TrainingVolume(str(n), data[f"{n}__volume"], data[f"{n}__head_mask"].astype(bool),
                                   data[f"{n}__anchored_hu"] if f"{n}__anchored_hu" in data else None)
                    for n in names]
        context = None
        if "curve_cumulative" in data:  # packs made before augmentation existed have none
            lo, hi, centre, spacing = (float(v) for v in data["augment_window_centre_spacing"])
            curve = EqualisationCurve(data["curve_centres_hu"], data["curve_cumulative"])
            context = AugmentationContext(ScannerAugmentation(), curve, (lo, hi), centre, spacing)
        return volumes(data["train"]), volumes(data["validation"]), context


def train_from_pack(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    training, validation, context = _load_pack(args.pack)
    if args.augment and context is None:
        raise SystemExit(f"{args.pack} was packed without what augmentation needs: pack it again")
    config = TrainConfig(steps=args.steps, max_minutes=args.max_minutes, m=args.m, mode=args.mode,
                         batch=args.batch, crops=args.crops, crop=args.crop, lr=args.lr, seed=args.seed,
                         device=args.device, val_every=args.val_every, method=args.method,
                         volumes_per_step=args.volumes_per_step, ae_loss=args.ae_loss, augment=args.augment)

    def progress(fraction: float, message: str) -> None:
        if "val" in message:
            print(f"{fraction:.3f} {message}", flush=True)

    result = train(training, config, validation, checkpoint=args.checkpoint, progress=progress,
                   augmentation=context if args.augment else None)
    summary = {"steps": result.steps, "seconds": round(result.seconds, 1), "device": result.device,
               "final_loss": result.final_loss, "final_val_loss": result.final_val_loss,
               "initial_val_loss": result.initial_val_loss,
               f"{config.rate_unit}_per_second": round(result.patches_per_second, 3), "config": config.to_dict()}
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack", help="preprocessed (cached) volumes into one .npz")
    p.add_argument("--cache", type=Path, required=True, help="the volumes folder of a training cache")
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--train", type=Path, nargs="+", required=True)
    p.add_argument("--val", type=Path, nargs="+", default=[])
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--spacing", type=float, required=True)
    p.add_argument("--prewindowed", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    t = commands.add_parser("train", help="training steps on a pack; writes the checkpoint")
    t.add_argument("pack", type=Path)
    t.add_argument("--checkpoint", type=Path, required=True)
    t.add_argument("--steps", type=int)
    t.add_argument("--max-minutes", type=float)
    t.add_argument("--m", type=int, default=16)
    t.add_argument("--method", choices=("ppr", "ae"), default="ppr",
                   help="ppr (default) or ae, the autoencoder baseline (the bundle command needs the same)")
    t.add_argument("--volumes-per-step", type=int, default=4, help="ae: whole volumes per step (the paper's 4)")
    t.add_argument("--ae-loss", choices=("head", "volume"), default="head", help="ae: where the L1 is averaged")
    t.add_argument("--mode", default="dense")
    t.add_argument("--batch", type=int, default=256)
    t.add_argument("--crops", type=int, default=2)
    t.add_argument("--crop", type=int, default=48)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--val-every", type=int, default=1000)
    t.add_argument("--threads", type=int, default=4)
    t.add_argument("--augment", action="store_true", help="dense PPR: scanner augmentation (ppr.networks.augmentation)")
    args = parser.parse_args()
    (pack if args.command == "pack" else train_from_pack)(args)


if __name__ == "__main__":
    main()
