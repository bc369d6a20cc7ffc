"""How fast the batch runs on a local Ray with 1, 2, ... workers (and serially), on the same scans.

    python -m PositionRegressionADLib.batch_bench --scans DIR_OR_FILES... [--model BUNDLE] [--stride 4]
        [--workers 1 2] [--limit 4] [--serial] [--device auto|cpu|cuda] [--json]

For each worker count: a fresh output folder, the whole Ray batch (``batch_ray.run_batch_ray``) on
one local Ray started once for the bench, timed from the first scan submitted to the last row
written: scans per minute; and per scan, from the task that ran it (``batch_ray.scan_task``): CPU
seconds of the worker and its detector child (``resource.getrusage``, self + children), the
detector child's peak resident memory and the worker's own (``ru_maxrss``). ``--serial`` adds the
serial batch as a baseline (its CPU seconds per scan: this process and its children over the batch,
divided by the scans). The machine's CPU count and load are printed with the figures: on a machine
other jobs share, wall times are upper bounds.

Needs Ray (``pip install ray==2.60.0``), like ``--engine ray``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PositionRegressionADLib.batch import BatchSettings, check_model, find_inputs, run_batch
from PositionRegressionADLib.detection_logic import (
    DEVICES,
    PREVIEW_STRIDE,
    DetectionOptions,
    check_model_path,
    default_model_path,
)
from ppr.errors import PPRError

try:
    import resource
except ImportError:  # pragma: no cover (Windows)
    resource = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PositionRegressionADLib.batch_bench",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="+", required=True, type=Path, help="scan files or folders (as --input)")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    parser.add_argument("--stride", type=int, default=PREVIEW_STRIDE)
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    parser.add_argument("--limit", type=int, default=4, help="the first N scans of --scans (default 4)")
    parser.add_argument("--serial", action="store_true", help="also measure the serial batch, as a baseline")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return parser


def machine() -> dict[str, object]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpus": cpus, "load_average": [round(value, 2) for value in load]}


def _usage() -> tuple[float, float]:
    """CPU seconds of this process and its waited-for children, and the children's peak memory (MB)."""
    if resource is None:
        return float("nan"), float("nan")
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime), children.ru_maxrss / 1024


def bench_serial(scans: list[Path], options: DetectionOptions, work: Path) -> dict[str, object]:
    output = work / "serial"
    cpu_before, _ = _usage()
    started = time.monotonic()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        rows = run_batch(scans, BatchSettings(output_dir=output, options=options), stream=quiet)
    wall = time.monotonic() - started
    cpu_after, peak = _usage()
    done = sum(row["Status"] == "ok" for row in rows)
    return {"engine": "serial", "workers": 1, "threads_per_scan": "default", "scans": done, "wall_s": round(wall, 1),
            "scans_per_min": round(60 * done / wall, 2),
            "cpu_s_per_scan_mean": round((cpu_after - cpu_before) / len(rows), 1),
            "cpu_s_per_scan_max": None, "detector_peak_mb_max": round(peak), "worker_peak_mb_max": None,
            "failed": [row["Reason"] for row in rows if row["Status"] != "ok"]}


def bench_ray(scans: list[Path], options: DetectionOptions, work: Path, workers: int) -> dict[str, object]:
    import ray

    from PositionRegressionADLib.batch_ray import cluster_plan, run_batch_ray

    output = work / f"ray-{workers}"
    usage: dict[str, dict[str, float]] = {}
    started = time.monotonic()
    with open(os.devnull, "w", encoding="utf-8") as quiet:
        rows = run_batch_ray(scans, BatchSettings(output_dir=output, options=options), stream=quiet, workers=workers,
                             on_usage=lambda name, used: usage.__setitem__(name, used))
    wall = time.monotonic() - started
    the_plan = cluster_plan(workers, options.device)
    done = sum(row["Status"] == "ok" for row in rows)
    cpu = [used["cpu_seconds"] for used in usage.values()]
    assert ray.is_initialized()
    return {"engine": "ray", "workers": workers, "threads_per_scan": the_plan.cpus_per_scan, "scans": done,
            "wall_s": round(wall, 1), "scans_per_min": round(60 * done / wall, 2),
            "cpu_s_per_scan_mean": round(statistics.mean(cpu), 1) if cpu else None,
            "cpu_s_per_scan_max": round(max(cpu), 1) if cpu else None,
            "detector_peak_mb_max": round(max(used["detector_peak_mb"] for used in usage.values())) if usage else None,
            "worker_peak_mb_max": round(max(used["worker_peak_mb"] for used in usage.values())) if usage else None,
            "failed": [row["Reason"] for row in rows if row["Status"] != "ok"]}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import ray
    except ImportError as error:
        print(f"error: the bench needs Ray ({error}): pip install ray==2.60.0", file=sys.stderr)
        return 2
    try:
        model = check_model_path(args.model or default_model_path()).resolve()
        scans = find_inputs(args.scans)[0][: args.limit]
        check_model(model)
        options = DetectionOptions(model_path=model, device=args.device, stride=args.stride)
    except (PPRError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    here = machine()
    print(f"Batch bench: {len(scans)} scan(s) ({', '.join(path.name for path in scans)}), model {model.name}, "
          f"stride {args.stride}, device {args.device}")
    print(f"This machine: {here['cpus']} CPU core(s), load average {here['load_average']} before the bench "
          "(other jobs on it make wall times upper bounds)")
    results = []
    work = Path(tempfile.mkdtemp(prefix="ppr-batch-bench-"))
    try:
        if args.serial:
            results.append(bench_serial(scans, options, work))
        ray.init(num_cpus=max([here["cpus"], *args.workers]), include_dashboard=False, logging_level="WARNING",
                 log_to_driver=False)
        try:
            for workers in args.workers:
                results.append(bench_ray(scans, options, work, workers))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'engine':<7} {'workers':>7} {'threads/scan':>12} {'wall s':>7} {'scans/min':>9} "
          f"{'CPU s/scan (mean, max)':>22} {'detector peak MB':>16} {'worker peak MB':>14}")
    for result in results:
        cpu = f"{result['cpu_s_per_scan_mean']}, {result['cpu_s_per_scan_max'] or '-'}"
        print(f"{result['engine']:<7} {result['workers']:>7} {result['threads_per_scan']!s:>12} {result['wall_s']:>7} "
              f"{result['scans_per_min']:>9} {cpu:>22} {result['detector_peak_mb_max']!s:>16} "
              f"{result['worker_peak_mb_max'] or '-'!s:>14}")
        for reason in result["failed"]:
            print(f"  failed: {reason}")
    print(f"Ray figures include starting its worker processes (once per worker); CPU s/scan counts the worker and "
          f"its detector child, not Ray's own daemons. This machine has {here['cpus']} cores: one worker already "
          "gets them all as threads, so more workers gain only what one scan leaves idle (its single-threaded "
          "steps); on a cluster, scans per minute grow with the nodes.")
    if args.json:
        print(json.dumps({"machine": here, "model": str(model), "stride": args.stride, "results": results}))
    return 0 if all(not result["failed"] for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
