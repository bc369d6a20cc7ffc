"""``python -m ppr preprocess INPUT OUTPUT --reference REF``: one head CT into model space.

Argument parsing and printing only: the work is ``ppr.image.preprocess``. With ``--json`` the last stdout
line is one JSON object with the registration quality, the transform (parameters, fixed parameters,
4x4 matrix, model mm -> input mm) and the seconds of every step (wall, and CPU with the machine's
load beside them, for a fair reading on a shared machine): this is the speed benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.image.imageio import check_outputs, read_image, write_image
from ppr.image.preprocess import prepare_reference, region_masks, to_model_space
from ppr.image.registration import affine_matrix_4x4

DEFAULTS = PreprocessConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="head CT: NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("output", type=Path, help="model-space volume to write (e.g. out.nii.gz)")
    parser.add_argument("--reference", type=Path, required=True,
                        help="reference head CT (any readable format)")
    parser.add_argument("--size", type=int, default=DEFAULTS.size,
                        help="model grid voxels per axis (default %(default)s)")
    parser.add_argument("--spacing", type=float, default=DEFAULTS.spacing_mm,
                        help="model grid spacing in mm (default %(default)s)")
    parser.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                        default=list(DEFAULTS.window_hu), help="intensity window in HU (default %(default)s)")
    parser.add_argument("--no-equalize", action="store_true",
                        help="scale the window linearly instead of equalising")
    parser.add_argument("--prewindowed", action="store_true",
                        help="the data was exported in the window already (air and bone saturate)")
    parser.add_argument("--min-metric", type=float, default=DEFAULTS.min_registration_metric,
                        help="refuse registrations whose quality is below this (default %(default)s)")
    parser.add_argument("--masks", type=Path, metavar="DIR",
                        help="also write the head mask and region masks here")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object with metric, transform, seconds")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(
        size=args.size,
        spacing_mm=args.spacing,
        window_hu=tuple(args.window),
        equalize=not args.no_equalize,
        prewindowed=args.prewindowed,
        min_registration_metric=args.min_metric,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    masks = [] if args.masks is None else [args.masks / "head_mask.nii.gz"]
    check_outputs([args.output, *masks], inputs=[args.input, args.reference])  # before any work
    _progress(args, 0.0, "preparing the reference")
    start = time.perf_counter()
    reference = prepare_reference(read_image(args.reference), config)
    reference_seconds = time.perf_counter() - start
    _progress(args, 0.3, "bringing the scan into model space")
    result = to_model_space(args.input, reference, config)
    write_image(result.volume, args.output)
    if args.masks is not None:
        _progress(args, 0.8, "writing masks")
        _write_masks(args.masks, result.head_mask, reference, config)
    _progress(args, 1.0, "done")
    transform = result.registration.transform
    report = {
        "input": str(args.input),
        "output": str(args.output),
        "config": config.to_dict(),
        "registration_metric": result.registration.metric,
        "registration_note": result.registration.note,
        "flipped_axes": list(result.registration.flipped_axes),
        "brain_shift_hu": result.brain_shift_hu,
        "transform": {
            # An AffineTransform (determinant -1) when the voxels were read mirrored (upside down).
            "kind": f"{transform.GetName()}, model-space mm -> input-space mm (LPS)",
            "parameters": list(transform.GetParameters()),
            "fixed_parameters": list(transform.GetFixedParameters()),
            "matrix": affine_matrix_4x4(transform).tolist(),
        },
        "seconds": result.seconds,
        "total_seconds": sum(result.seconds.values()),
        "cpu_seconds": result.cpu_seconds,
        "load_average_1min": os.getloadavg()[0],
        "reference_seconds": reference_seconds,
    }
    if args.json:
        print(json.dumps(report))
    else:
        steps = ", ".join(f"{step} {value:.2f}" for step, value in result.seconds.items())
        print(f"wrote {args.output} (registration quality {result.registration.metric:.3f}; seconds: {steps})")
        if result.registration.note:
            print(result.registration.note)
    return 0


def _write_masks(folder: Path, head: sitk.Image, reference: sitk.Image, config: PreprocessConfig) -> None:
    write_image(head, folder / "head_mask.nii.gz")
    for name, mask in region_masks(reference, config).items():
        image = sitk.GetImageFromArray(mask.astype("uint8"))
        image.CopyInformation(reference)
        write_image(image, folder / f"region_{name}.nii.gz")


def _progress(args: argparse.Namespace, fraction: float, message: str) -> None:
    if args.progress:
        print(f"PROGRESS {fraction:.2f} {message}", file=sys.stderr, flush=True)
