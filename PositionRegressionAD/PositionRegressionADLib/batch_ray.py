"""The batch on Ray: one Ray task per scan, several at once, on a local Ray or on a cluster.

    python -m PositionRegressionADLib.batch --input DIR --output DIR --engine ray [--address ADDRESS] [--workers N]

Ray (``pip install ray==2.60.0``) is optional: this module is the only one that imports it, and only
``batch.main`` with ``--engine ray`` imports this module (never the Slicer module, never ``ppr``).

Who does what:

- This process (the driver) holds the output folder's lock (``batch.OutputLock``), keeps the finished
  scans of an earlier run (``batch.kept_row``), submits one task per other scan and writes every row
  of scores.csv (atomically, in input order, after each scan), with one progress line per finished
  scan, as the serial batch does.
- A task (``scan_task``, in a Ray worker) runs ``batch.detect_scan`` on its scan: the detector child
  (``ppr detect``), then the scan's files written atomically into its own output names
  (``OUTPUT/<name>/``, chosen by the driver with ``batch.output_names``). It returns the row; it
  writes none. So the input and output folders must be at the same paths on every node.
- A scan that fails for itself (unreadable, refused by the detector) returns its "failed" row at once
  and is not run again. A worker that dies (killed, out of memory, node lost) is a system failure:
  Ray runs its scan again, up to ``MAX_RETRIES`` times; after that the scan gets a "failed" row.

Resources: where the cluster has GPUs (and --device is not cpu), each task asks for 1 GPU (a share of
one, 1/k, when --workers asks for k times more scans at once than there are GPUs: a scan's CPU steps
take longer than its network on a GPU) and runs its detector with device cuda; each task asks for the
cluster's CPUs divided by the workers (``plan``), and its detector gets that many threads (torch: OMP_NUM_THREADS / MKL_NUM_THREADS; SimpleITK:
ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS). With one thread per scan the results are the serial batch's,
byte for byte; the multi-threaded registration of SimpleITK is not repeatable to the last bit, also
in the serial batch.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import ray

from PositionRegressionADLib.batch import (
    KEPT,
    SCORES_FILE_NAME,
    BatchEngineError,
    BatchSettings,
    OutputLock,
    TerminalProgress,
    detect_scan,
    done_status,
    kept_row,
    output_names,
    previous_rows,
    remove_results,
    run_settings_key,
    scan_digest,
    skipped_row,
    worker_name,
    write_scores,
)

try:  # per-scan CPU time and peak memory (not on Windows)
    import resource
except ImportError:  # pragma: no cover
    resource = None

ENGINE = "ray"
# Runs of a scan after its worker died (Ray's max_retries): a scan that kills every worker it meets
# stops after 1 + MAX_RETRIES tries instead of taking the batch down.
MAX_RETRIES = 3
# The environment variables a task sets to its CPUs, read by the detector child (torch, SimpleITK).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
# Tasks in flight per worker: enough that no worker waits for the driver, few enough that the driver
# writes rows as scans finish (it hashes the next scans while these run).
IN_FLIGHT_PER_WORKER = 2


@dataclass(frozen=True)
class RayPlan:
    """How the scans use the cluster: how many at once, and what each task asks Ray for."""

    workers: int
    cpus_per_scan: int
    gpus_per_scan: float
    device: str

    def describe(self) -> str:
        if not self.gpus_per_scan:
            gpu = f", device {self.device}"
        elif self.gpus_per_scan == 1:
            gpu = ", 1 GPU per scan (device cuda)"
        else:
            gpu = f", 1/{round(1 / self.gpus_per_scan)} of a GPU per scan (device cuda)"
        return (f"{self.workers} scan(s) at once, {self.cpus_per_scan} CPU thread(s) per scan{gpu}")


def plan(cluster_cpus: float, cluster_gpus: float, largest_node_cpus: float, workers: int | None,
         device: str) -> RayPlan:
    """The plan for a cluster with these resources (``ray.cluster_resources``, the largest node's CPUs).

    GPUs (and device not "cpu"): 1 GPU per task and device cuda; workers default to the number of
    GPUs; more workers than GPUs share them (1/k GPU per task, k = workers / GPUs rounded up). No GPU: device cpu (``--device cuda`` is refused); workers default to the number of CPUs.
    Each task asks for the CPUs divided by the scans that run at once (at least 1, at most the largest
    node's, so every task fits on a node), and its detector gets as many threads."""
    gpus = int(cluster_gpus)
    cpus = max(1, int(cluster_cpus))
    if device == "cuda" and gpus == 0:
        raise BatchEngineError("--device cuda, but the Ray cluster has no GPU: leave --device auto (the scans "
                               "then run on CPUs) or add GPU nodes.")
    use_gpu = gpus > 0 and device != "cpu"
    if workers is None:
        workers = gpus if use_gpu else cpus
    cpus_per_scan = max(1, min(cpus // max(1, workers), max(1, int(largest_node_cpus))))
    share = -(-workers // gpus) if use_gpu else 0  # tasks per GPU, rounded up
    return RayPlan(workers=workers, cpus_per_scan=cpus_per_scan, gpus_per_scan=1 / share if use_gpu else 0,
                   device="cuda" if use_gpu else "cpu")


@dataclass(frozen=True)
class ScanJob:
    """One scan as a task gets it: everything ``batch.detect_scan`` needs, and its threads."""

    path: Path
    name: str
    settings: BatchSettings
    digest: str
    key: str
    threads: int


def scan_task(job: ScanJob) -> tuple[dict[str, object], dict[str, float]]:
    """Run in a Ray worker: detect in one scan, write its files; returns its row and what it used
    (``cpu_seconds`` of this worker and its detector child, ``wall_seconds``, ``detector_peak_mb``:
    the largest detector child this worker has run so far, ``worker_peak_mb``: this worker's own peak).

    Never raises for the scan's own failure (``detect_scan`` makes it a "failed" row), so Ray runs a
    scan again only when its worker died."""
    for variable in THREAD_VARIABLES:  # the detector child inherits them (detection_logic.child_environment)
        os.environ[variable] = str(job.threads)
    before = _cpu_seconds()
    started = time.monotonic()
    if job.settings.output_dir.is_dir():
        row = detect_scan(job.path, job.name, job.settings, job.digest, job.key, ENGINE)
    else:  # the driver made it: this node does not see the driver's files (and must not write elsewhere)
        row = {"Scan": job.name, "Status": "failed",
               "Reason": f"{job.settings.output_dir} is not there on the Ray node that ran this scan: the input "
                         "and --output folders must be at the same paths on every node (a shared file system)",
               "Input": str(job.path), "Input digest": job.digest, "Run settings": job.key, "Engine": ENGINE,
               "Worker": worker_name()}
    return row, {"cpu_seconds": _cpu_seconds() - before, "wall_seconds": time.monotonic() - started,
                 **_peak_memory_mb()}


def _cpu_seconds() -> float:
    if resource is None:
        return float("nan")
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_memory_mb() -> dict[str, float]:
    if resource is None:
        return {"detector_peak_mb": float("nan"), "worker_peak_mb": float("nan")}
    scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return {"detector_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale,
            "worker_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale}


def start_ray(address: str | None, workers: int | None) -> bool:
    """Connect to the cluster at ``address``, or start a local Ray with one CPU per worker (at least
    this machine's CPUs); True when this call started or connected Ray (the batch then shuts it down),
    False when the process was already connected (tests: a Ray the caller started)."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        else:
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            ray.init(num_cpus=max(cpus, workers or 1), include_dashboard=False, logging_level="WARNING",
                     log_to_driver=False)
    except Exception as error:  # ConnectionError, a timeout, a version mismatch: say which cluster
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        raise BatchEngineError(f"Could not start the batch on {where}: {error}") from None
    return True


def cluster_plan(workers: int | None, device: str) -> RayPlan:
    resources = ray.cluster_resources()
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    largest = max((node.get("CPU", 0) for node in nodes), default=resources.get("CPU", 1))
    return plan(resources.get("CPU", 1), resources.get("GPU", 0), largest, workers, device)


def run_batch_ray(scans: list[Path], settings: BatchSettings, stream: TextIO | None = None,
                  skipped: list[tuple[Path, str]] = (), address: str | None = None, workers: int | None = None,
                  task: Callable[[ScanJob], tuple[dict, dict]] = scan_task, max_retries: int = MAX_RETRIES,
                  on_usage: Callable[[str, dict[str, float]], None] | None = None) -> list[dict[str, object]]:
    """``batch.run_batch`` with one Ray task per scan (see the module docstring); returns the rows in
    input order, as scores.csv holds them.

    task: what a worker runs per scan (tests wrap ``scan_task``); on_usage: called with each computed
    scan's name and what it used (``scan_task``'s second result; the bench collects them)."""
    stream = sys.stderr if stream is None else stream
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(settings.output_dir):  # the driver alone writes rows; a second batch is refused
        started = start_ray(address, workers)
        try:
            return _run(scans, settings, stream, skipped, workers, task, max_retries, on_usage)
        finally:
            if started:
                ray.shutdown()


def _run(scans: list[Path], settings: BatchSettings, stream: TextIO, skipped: list[tuple[Path, str]],
         workers: int | None, task, max_retries: int, on_usage) -> list[dict[str, object]]:
    the_plan = cluster_plan(workers, settings.options.device)
    if the_plan.device != settings.options.device:
        settings = dataclasses.replace(settings, options=dataclasses.replace(settings.options,
                                                                             device=the_plan.device))
    resources = ray.cluster_resources()
    stream.write(f"ray: {the_plan.describe()}; the cluster has {resources.get('CPU', 0):g} CPU(s) and "
                 f"{resources.get('GPU', 0):g} GPU(s)\n")
    remote = ray.remote(task).options(num_cpus=the_plan.cpus_per_scan, num_gpus=the_plan.gpus_per_scan,
                                      max_retries=max_retries, retry_exceptions=False)
    earlier = previous_rows(settings.output_dir / SCORES_FILE_NAME)
    key = run_settings_key(settings)
    bar = TerminalProgress(stream, len(scans))
    first = [skipped_row(path, reason) for path, reason in skipped]
    for path, reason in skipped:
        stream.write(f"skipped {path.name}: {reason}\n")
    names = output_names(scans)
    done: dict[int, dict[str, object]] = {}

    def record(position: int, row: dict[str, object], status: str) -> None:
        done[position] = row
        write_scores(settings.output_dir / SCORES_FILE_NAME, first + [done[i] for i in sorted(done)])
        bar.done(len(done), str(row["Scan"]), status)

    queue: Iterator = iter(enumerate(zip(scans, names)))
    pending: dict = {}  # ObjectRef -> (position, path, name, digest)
    limit = max(1, the_plan.workers) * IN_FLIGHT_PER_WORKER
    more = True
    try:
        while more or pending:
            while more and len(pending) < limit:
                item = next(queue, None)
                if item is None:
                    more = False
                    break
                position, (path, name) = item
                digest = scan_digest(path)
                kept = kept_row(earlier.get(str(path.resolve())), digest, key, settings, path, name) if digest else None
                if kept is not None:
                    record(position, kept, f"ok ({KEPT})")
                    continue
                job = ScanJob(path, name, settings, digest, key, the_plan.cpus_per_scan)
                pending[remote.remote(job)] = (position, path, name, digest)
            if not pending:
                continue
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                position, path, name, digest = pending.pop(ref)
                try:
                    row, usage = ray.get(ref)
                except ray.exceptions.RayError as error:  # its worker died 1 + max_retries times
                    row = _lost_row(path, name, settings, digest, key, max_retries, error)
                else:
                    if on_usage is not None:
                        on_usage(name, usage)
                record(position, row, done_status(row))
    except BaseException:
        for ref in pending:  # Ctrl+C, a full disk: no scan goes on after the batch has stopped
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or the cluster is gone
                pass
        raise
    return first + [done[i] for i in sorted(done)]


def _lost_row(path: Path, name: str, settings: BatchSettings, digest: str, key: str, max_retries: int,
              error: Exception) -> dict[str, object]:
    """The "failed" row of a scan whose worker died on every try (a system failure, not the scan's)."""
    what = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    reason = (f"the Ray worker running this scan died {1 + max_retries} time(s) ({type(error).__name__}: {what}); "
              "run the batch again to retry it")
    if remove_results(settings, path, name):
        reason += " (the results of an earlier run of this scan were removed)"
    return {"Scan": name, "Status": "failed", "Reason": reason, "Input": str(path.resolve()), "Input digest": digest,
            "Run settings": key, "Engine": ENGINE, "Worker": ""}
