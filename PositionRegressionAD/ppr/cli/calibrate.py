"""``python -m ppr calibrate``: store healthy error statistics in a model bundle (parsing, printing).

Examples::

    python -m ppr calibrate BUNDLE my-healthy-scans/ --out my-scanner-bundle    # a new bundle
    python -m ppr calibrate bundle/ healthy/ct_01.nii.gz healthy/ct_02.nii.gz ... --stride 1  # in place

Runs the detection on every scan (held-out *healthy* head CTs, not the training scans: their
errors are optimistically low; files, DICOM series folders, or folders holding either), fits
``ppr.statistics.calibration`` statistics and writes ``calibration.npz`` with fresh checksums: into a copy of
the bundle at ``--out`` (the way to adapt a model to one's own scanner), or into the bundle itself
without ``--out``. The bundles that ship with the extension are calibrated in place only with
``--in-place``. The work is done in ``ppr.workflows.calibrate`` (``calibrate_bundle``); this module only
parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ppr.errors import PPRError
from ppr.statistics.calibration import CalibrationConfig
from ppr.statistics.reliability import healthy_ranges


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = CalibrationConfig()
    parser.add_argument("bundle", type=Path, help="model bundle (folder, or .zip with --out)")
    parser.add_argument("images", type=Path, nargs="+",
                        help="held-out healthy head CTs: files, DICOM series folders, or folders holding either")
    parser.add_argument("--out", type=Path, default=None,
                        help="write a new calibrated bundle to this (new or empty) folder; the bundle given stays "
                             "as it is (without --out the calibration goes into the bundle itself)")
    parser.add_argument("--in-place", action="store_true",
                        help="allow calibrating a bundle that ships with the extension in place")
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
    parser.add_argument("--atlas-scans", type=Path, nargs="+", default=[],
                        help="more healthy head CTs for the intensity atlas only (the shown anomaly map); the "
                             "training scans may be among them. The atlas is fitted from these and the "
                             "calibration scans together when they are 4 or more")
    parser.add_argument("--allow-training-scans", action="store_true",
                        help="accept scans the model was trained on (their errors are optimistically low)")
    parser.add_argument("--json", action="store_true", help="print a summary as one JSON line last on stdout")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)


def shipped_models_dir() -> Path:
    """Where the extension's own model bundles live (``<module>/Resources/Models``)."""
    return Path(__file__).resolve().parents[2] / "Resources" / "Models"


def run(args: argparse.Namespace) -> int:
    # here: torch and SimpleITK only when the command runs, so --help and argument errors stay fast
    from ppr.workflows.bundle import load_bundle
    from ppr.workflows.calibrate import calibrate_bundle

    if args.out is None and not args.in_place and shipped_models_dir() in args.bundle.resolve().parents:
        raise PPRError(f"{args.bundle} ships with the extension: give --out NEW_BUNDLE to write a calibrated "
                       "copy (then detect with --model NEW_BUNDLE), or --in-place to change it.")

    config = CalibrationConfig(
        factor=args.factor,
        smoothing_voxels=args.smoothing_voxels,
        min_spread_mm=args.min_spread_mm,
        overlay_percentile=args.overlay_percentile,
    )
    calibration, path = calibrate_bundle(args.bundle, args.images, config, stride=args.stride, device=args.device,
                                         progress=_progress if args.progress else None,
                                         allow_training_scans=args.allow_training_scans, output=args.out,
                                         atlas_images=args.atlas_scans)
    bundle_path = path.parent
    atlas = load_bundle(bundle_path).intensity_atlas
    summary = {
        "calibration": str(path),
        "n_scans": calibration.n_scans,
        "case_names": list(calibration.case_names),
        "overlay_threshold_z": calibration.overlay_threshold_z,
        "factor": calibration.factor,
        "grid_shape": list(calibration.grid_shape),
    }
    unit = load_bundle(bundle_path).error_unit
    summary["intensity_atlas"] = None if atlas is None else {
        "n_scans": atlas.n_scans, "overlay_threshold": atlas.overlay_threshold_z}
    (low, high), (fraction_low, fraction_high), _ = healthy_ranges(calibration)
    summary["bundle"] = str(bundle_path)
    summary["healthy_brain_median_z"] = [low, high]
    summary["healthy_fraction_above_threshold"] = [fraction_low, fraction_high]
    typical = float(np.median(calibration.median_mm))
    # The healthy error is a position error in mm for PPR, a residual intensity for the autoencoder.
    summary["error_unit"] = unit
    summary["median_error_mm" if unit == "mm" else "median_error"] = typical
    shown = f"{typical:.1f} mm" if unit == "mm" else f"{typical:.4f} ({unit})"
    print(f"calibrated on {calibration.n_scans} scans: typical healthy error {shown}, "
          f"default overlay threshold z = {calibration.overlay_threshold_z:.2f}; brain median z of these scans "
          f"(each against the others) {low:.2f} to {high:.2f}, {100 * fraction_low:.1f}-{100 * fraction_high:.1f} % "
          f"of brain and skull above the threshold; written to {path}")
    if atlas is None:
        print("no intensity atlas (fewer than 4 healthy scans in all): the overlay shows the position z-map")
    else:
        print(f"intensity atlas of {atlas.n_scans} scans: the overlay shows the anomaly map, threshold "
              f"{atlas.overlay_threshold_z:.2f}")
    if args.out is not None:
        print(f"detect with this calibration: python -m ppr detect SCAN --model {bundle_path} --out ERRORMAP")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
