"""``python -m ppr detect INPUT --model BUNDLE --out ERRORMAP``: the error map of one head CT.

Argument parsing and printing only: the work is ``ppr.detection.detect``. The error map is written
on the input's own grid. With ``--json`` the last stdout line is one JSON object: ``seconds`` (total)
and ``seconds_per_step``, ``device``, ``stride``, ``method``, ``error_mm`` (max, p99, mean over the
head), ``regions`` (p99 error in mm per region; null where a region misses the scan),
``max_error_lps``, ``registration_metric``, ``output``, ``model``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ppr.inference import STRIDES
from ppr.scores import AGGREGATES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="head CT: NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("--model", type=Path, required=True, help="model bundle (folder or .zip)")
    parser.add_argument("--out", type=Path, required=True, help="error map to write (mm, the input's grid)")
    parser.add_argument("--method", choices=("dense", "patches"), default="dense",
                        help="dense (fast, default) or patches (the paper's one patch per voxel: slow)")
    parser.add_argument("--stride", type=int, choices=STRIDES, default=1,
                        help="compute every K-th voxel and interpolate (4 = fast preview; default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tile", type=int, default=128, help="tile edge in voxels (lower = less memory)")
    parser.add_argument("--aggregate", choices=AGGREGATES, default="p99", help="region score (default p99)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from ppr.bundle import load_bundle
    from ppr.detection import DetectOptions, detect
    from ppr.imageio import read_image, write_image
    from ppr.scores import ScoreOptions

    started = time.perf_counter()
    progress = _progress if args.progress else None
    if progress:
        progress(0.0, "reading the input and the model")
    image = read_image(args.input)
    bundle = load_bundle(args.model)
    loading = time.perf_counter() - started
    options = DetectOptions(method=args.method, stride=args.stride, device=args.device, tile=args.tile,
                            scores=ScoreOptions(args.aggregate))
    result = detect(image, bundle, options, progress)
    write_image(result.error_map_input, args.out)
    per_step = {"load": loading, **result.seconds}
    report = {
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_per_step": {step: round(value, 3) for step, value in per_step.items()},
        "device": result.device,
        "stride": args.stride,
        "method": args.method,
        "aggregate": args.aggregate,
        "error_mm": result.error_mm,
        "regions": result.regions,
        "max_error_lps": list(result.max_error_lps),
        "registration_metric": result.registration.metric,
        "output": str(args.out.resolve()),
        "model": str(args.model),
    }
    if args.json:
        print(json.dumps(report))
    else:
        regions = ", ".join(f"{name} {_mm(value)}" for name, value in result.regions.items())
        print(f"wrote {args.out}: max error {_mm(result.error_mm['max'])}, p99 {_mm(result.error_mm['p99'])}; "
              f"regions ({args.aggregate}): {regions}; {report['seconds']:.1f} s on {result.device}")
    return 0


def _mm(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} mm"
