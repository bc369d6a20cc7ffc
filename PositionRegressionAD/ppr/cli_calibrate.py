"""``python -m ppr calibrate``: store healthy error statistics in a model bundle (parsing, printing).

Example::

    python -m ppr calibrate bundle/ healthy/ct_01.nii.gz healthy/ct_02.nii.gz ... --stride 1

Runs the detection on every image (held-out *healthy* head CTs, not the training scans: their
errors are optimistically low), fits ``ppr.calibration`` statistics, writes ``calibration.npz``
into the bundle and refreshes the bundle's checksums. The work is done in ``ppr.calibration``
(``calibrate_bundle``); this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ppr.calibration import CalibrationConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CalibrationConfig()
    parser.add_argument("bundle", type=Path, help="model bundle folder (calibration.npz is written into it)")
    parser.add_argument("images", type=Path, nargs="+", help="held-out healthy head CTs (files or DICOM folders)")
    parser.add_argument("--stride", type=int, default=1, choices=(1, 2, 4), help="error map stride (1 = full)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--factor", type=int, default=defaults.factor,
                        help="statistics on a grid this many times coarser per axis")
    parser.add_argument("--smoothing-voxels", type=float, default=defaults.smoothing_voxels,
                        help="Gaussian sigma of the statistics, in coarse voxels")
    parser.add_argument("--min-spread-mm", type=float, default=defaults.min_spread_mm,
                        help="lowest spread allowed (keeps z finite where healthy errors are all equal)")
    parser.add_argument("--overlay-percentile", type=float, default=defaults.overlay_percentile,
                        help="percentile of healthy z used as the default overlay threshold")
    parser.add_argument("--allow-training-scans", action="store_true",
                        help="accept scans the model was trained on (their errors are optimistically low)")
    parser.add_argument("--json", action="store_true", help="print a summary as one JSON line last on stdout")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ppr.bundle import load_bundle
    from ppr.calibration import calibrate_bundle

    config = CalibrationConfig(
        factor=args.factor,
        smoothing_voxels=args.smoothing_voxels,
        min_spread_mm=args.min_spread_mm,
        overlay_percentile=args.overlay_percentile,
    )
    calibration, path = calibrate_bundle(args.bundle, args.images, config, stride=args.stride, device=args.device,
                                         progress=_progress if args.progress else None,
                                         allow_training_scans=args.allow_training_scans)
    summary = {
        "calibration": str(path),
        "n_scans": calibration.n_scans,
        "case_names": list(calibration.case_names),
        "overlay_threshold_z": calibration.overlay_threshold_z,
        "factor": calibration.factor,
        "grid_shape": list(calibration.grid_shape),
    }
    unit = load_bundle(args.bundle).error_unit
    typical = float(np.median(calibration.median_mm))
    # The healthy error is a position error in mm for PPR, a residual intensity for the autoencoder.
    summary["error_unit"] = unit
    summary["median_error_mm" if unit == "mm" else "median_error"] = typical
    shown = f"{typical:.1f} mm" if unit == "mm" else f"{typical:.4f} ({unit})"
    print(f"calibrated on {calibration.n_scans} scans: typical healthy error {shown}, "
          f"default overlay threshold z = {calibration.overlay_threshold_z:.2f}; written to {path}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
