"""Detect anomalies in many head CTs from the command line, without the Slicer desktop.

    python -m PositionRegressionADLib.batch --input DIR_OR_FILES... --output DIR [--model BUNDLE]
        [--device auto|cuda|cpu] [--stride K] [--screenshots] [--scene] [--format standard|mood|dicom]
        [--engine serial|ray [--address ADDRESS] [--workers N]]

or inside Slicer: ``Slicer --no-main-window --python-script <module dir>/batch.py -- <same arguments>``.

Per scan, in ``OUTPUT/<scan>/``: ``error_map.nii.gz`` (input's grid), with a calibrated model
``z_map.nii.gz`` (input's grid; the anomaly map with a model that has an intensity atlas, which then
also gives ``position_z_map.nii.gz``, the position error's own z-map, "PPR position error", in the
row's "Position z-map"), ``skull_surface.vtk`` (LPS, the displayed map per point), with
``--scene`` ``scene.mrb``, with ``--screenshots`` slice and surface PNGs; and one row in
``OUTPUT/scores.csv`` (region scores, score map, overlay threshold, with a calibrated model the
out-of-depth check: "Scores reliable", "Brain median z" and "Warning", the detector's seconds and
the scan's total seconds, status; a scan whose scores are not reliable also gets its warning on the
progress output). With ``--format mood`` also ``OUTPUT/mood/``: the MOOD challenge's
files per scan (``ppr.workflows.mood``: voxel scores in [0, 1] on the input's grid and a ``.txt`` sample
score), from the z-map of a calibrated model, else from the error map. With ``--format dicom``, for a
scan that is a DICOM series folder, also ``OUTPUT/<scan>/dicom/``: a Parametric Map of the shown map,
a Segmentation of the anomaly candidates and a TID 1500 report of the region scores, referencing the
series (``ppr.workflows.dicom_results``; their paths in the row's "DICOM"); a scan read from a file
gets every other file and an "ok" row whose Reason says why it has no DICOM. A scan that fails gets its
reason in its row and the batch goes on; what an earlier run wrote for that scan is removed (the row
says so), so no stale map sits beside a "failed" row. Files in an input folder that are no scan, and
label maps named ``*mask*``, ``*label*`` or ``*seg*`` (skipped as training skips them), get a
"skipped" row that says why. Each scan gets a fresh scene, so memory does not grow with
the batch.

The model bundle is loaded once before the first scan: a damaged one stops the batch with its message.
While a batch runs it holds ``OUTPUT/.ppr-batch.lock``: a second batch into the same folder is refused.
A re-run into the same OUTPUT keeps each scan whose earlier row is "ok" for the same scan bytes
("Input digest") and settings ("Run settings": model, stride, calibration, thresholds, files asked
for) and whose files are there and whole (its Reason says so); every other scan is computed again.

``--engine ray`` runs the scans as Ray tasks, several at once, on a local Ray or on a cluster
(``batch_ray``; Ray is optional: ``pip install ray==2.60.0``); this process still writes every row.
Each row says which engine and which worker ran it ("Engine", "Worker": host:process id).

Exit code: 0 all scans done, 1 some failed (see scores.csv) or scores.csv could not be written (a full
disk: the batch stops, message on stderr), 2 nothing could start (message on stderr).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import SimpleITK as sitk

from PositionRegressionADLib.detection_logic import (
    DEVICES,
    PREVIEW_STRIDE,
    DetectionLogic,
    DetectionOptions,
    check_model_path,
    child_environment,
    default_model_path,
    default_python_command,
)
from PositionRegressionADLib.process import ChildProcess, ProcessLauncher, Progress, popen_options
from PositionRegressionADLib.report import REGION_LABELS, WARNING_COLUMN, error_unit_of, table_row
from PositionRegressionADLib.results import DetectionResults, ResultDisplayOptions
from PositionRegressionADLib.scene_io import SceneContext, load_volume, save_node, save_scene_mrb
from ppr.errors import BundleError, InputImageError, OutputFileError, PPRError
from ppr.image.imageio import (
    LABEL_MAP_PATTERNS, VOLUME_SUFFIXES, file_digest, holds_dicom_series, is_scan, read_image, write_text,
)

SCORES_FILE_NAME = "scores.csv"
LOCK_FILE_NAME = ".ppr-batch.lock"
MOOD_FOLDER_NAME = "mood"
FORMATS = ("standard", "mood", "dicom")
DICOM_FOLDER_NAME = "dicom"
DICOM_COLUMN = "DICOM"
DICOM_SEPARATOR = "; "  # between the DICOM files' paths in the row's DICOM column
FIRST_COLUMNS = ["Scan", "Status", "Reason"]
# "Engine" (serial or ray) and "Worker" (host:process id) say what ran the scan.
POSITION_Z_MAP_COLUMN = "Position z-map"
Z_MAP_FILE_NAME = "z_map.nii.gz"
POSITION_Z_MAP_FILE_NAME = "position_z_map.nii.gz"
LAST_COLUMNS = ["Total seconds", "Engine", "Worker", "Error map", "z-map", POSITION_Z_MAP_COLUMN, "Skull surface",
                DICOM_COLUMN, "Input", "Input digest", "Run settings"]
KEPT = "kept from an earlier run of the same scan with the same settings (its files checked)"
# The sample-level MOOD score: the whole head's region score, in the unit of the pixel scores.
MOOD_SAMPLE_REGION = "head"
ENGINES = ("serial", "ray")
# The Reason of an "ok" row of a scan read from a file in a --format dicom batch (its other files are written).
NO_DICOM_INPUT = ("no DICOM files: DICOM output needs a DICOM input (a folder holding the series), and this "
                  "scan was read from a file; its maps, surface and scores are written")
RAY_REQUIREMENT = "ray==2.60.0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PositionRegressionADLib.batch",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--input", nargs="+", required=True, type=Path,
                        help="scan files (NIfTI, NRRD, MetaImage) or folders holding them")
    parser.add_argument("--output", required=True, type=Path, help="folder for the results and scores.csv")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--stride", type=int, default=PREVIEW_STRIDE,
                        help=f"error map every K voxels: {PREVIEW_STRIDE} preview, 1 full resolution")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold-mm", type=float, default=None,
                           help="overlay and candidate threshold on the error map in mm (default: the z-map with "
                                "its calibrated threshold, or a percentile of the scan's error without calibration)")
    threshold.add_argument("--threshold-z", type=float, default=None,
                           help="overlay and candidate threshold on the z-map (calibrated models only; "
                                "default: the calibrated threshold)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the model's calibration: scores and pictures from the error in mm (to compare)")
    parser.add_argument("--format", choices=FORMATS, default="standard",
                        help="mood: also write the MOOD challenge files (voxel scores in [0, 1], one .txt sample "
                             f"score per scan) into OUTPUT/{MOOD_FOLDER_NAME}/; dicom: for a scan that is a DICOM "
                             "series folder also write a Parametric Map of the shown map, a Segmentation of the "
                             "anomaly candidates and a TID 1500 SR of the region scores, referencing the series, "
                             f"into OUTPUT/<scan>/{DICOM_FOLDER_NAME}/ (a scan from a file gets its other files and "
                             "a row that says why it has no DICOM)")
    parser.add_argument("--bone-threshold", type=float, default=None,
                        help="input intensity of the skull surface (default: chosen from the scan)")
    parser.add_argument("--screenshots", action="store_true", help="write slice and surface PNGs per scan")
    parser.add_argument("--scene", action="store_true", help="write a Slicer scene (.mrb) per scan")
    engine = parser.add_argument_group(
        "engine", "where the scans run; this process writes every row of scores.csv either way")
    engine.add_argument("--engine", choices=ENGINES, default="serial",
                        help="serial (default): one scan after the other in this process's detector child; "
                             "ray: one Ray task per scan, several at once, on a local Ray or on --address "
                             f"(needs `pip install {RAY_REQUIREMENT}`). The input and --output folders must be "
                             "at the same paths on every Ray node (a shared file system)")
    engine.add_argument("--address", default=None,
                        help="ray: the address of a running Ray cluster (e.g. auto, HEAD:6379); without it a "
                             "local Ray on this machine is started and stopped with the batch")
    engine.add_argument("--workers", type=int, default=None, metavar="N",
                        help="ray: how many scans run at once (default: one per GPU where the cluster has GPUs, "
                             "then each scan gets 1 GPU and --device cuda, or a share of one when N is more than "
                             "the GPUs; else one per CPU). Each scan gets "
                             "the cluster's CPUs divided by N (at least 1, at most one node's) as Ray num_cpus, "
                             "and its detector that many threads (OMP_NUM_THREADS, MKL_NUM_THREADS and "
                             "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, read by torch and SimpleITK)")
    return parser


NOT_A_SCAN = (f"not a scan: neither a {', '.join(VOLUME_SUFFIXES)} file nor a folder holding a DICOM series")
LABEL_MAP = (f"a label map by its name ({', '.join(LABEL_MAP_PATTERNS)}), skipped as training skips it; "
             "name it in --input to detect in it")


def find_inputs(inputs: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The scans the inputs name, in order: files, DICOM series folders, and the image files and
    DICOM series sub-folders of other folders (not deeper; ``ppr.image.imageio.is_scan``); and what
    those folders hold that is skipped, with why: anything that is no scan, and label maps by their
    names (``LABEL_MAP_PATTERNS``: ``*_mask*`` beside its scan). Hidden files are left alone."""
    scans: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        if not item.exists():
            raise InputImageError(f"{item} does not exist: check the --input paths.")
        if item.is_file() or holds_dicom_series(item):
            scans.append(item)  # named by the user: detected whatever its name
            continue
        for path in sorted(item.iterdir()):
            if path.name.startswith("."):
                continue
            if not is_scan(path):
                skipped.append((path, NOT_A_SCAN))
            elif any(fnmatch.fnmatch(path.name.lower(), pattern) for pattern in LABEL_MAP_PATTERNS):
                skipped.append((path, LABEL_MAP))
            else:
                scans.append(path)
    if not scans:
        raise InputImageError(f"No scan found in --input (looked for {', '.join(VOLUME_SUFFIXES)} files "
                              f"and folders holding a DICOM series; {len(skipped)} other file(s) skipped).")
    return scans, skipped


def find_scans(inputs: list[Path]) -> list[Path]:
    """The scans of ``find_inputs``."""
    return find_inputs(inputs)[0]


def skipped_row(path: Path, reason: str) -> dict[str, object]:
    """The scores.csv row of a file the batch skipped."""
    return {"Scan": path.name, "Status": "skipped", "Reason": reason, "Input": str(path.resolve())}


def scan_name(path: Path) -> str:
    """``ctich_051.nii.gz`` -> ``ctich_051``: the name of the scan's output folder and row."""
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def output_names(scans: list[Path]) -> list[str]:
    """Each scan's output folder and row name: unique, stable and a plain folder name inside --output.

    The file name without its suffix (``ctich_051``); scans of one name in different folders get as
    many of their parent folders in front as tell them apart (``site_a__ctich_051``); a name that is
    no plain folder name (``..``, ``scores.csv``, ``mood``) is made one; the same file twice gets ``_2``."""
    def safe(text: str) -> str:
        text = re.sub(r"[^\w.-]", "_", text).strip(".") or "scan"
        return f"{text}_scan" if text.lower() in (SCORES_FILE_NAME, MOOD_FOLDER_NAME) else text

    paths = [Path(path).resolve() for path in scans]
    base = [safe(scan_name(path)) for path in paths]
    names = list(base)
    for depth in range(1, max((len(path.parts) for path in paths), default=0)):
        files: dict[str, set[Path]] = {}
        for name, path in zip(names, paths):
            files.setdefault(name.lower(), set()).add(path)
        clashing = [i for i, name in enumerate(names) if len(files[name.lower()]) > 1]
        if not clashing:
            break
        for i in clashing:
            folders = paths[i].parent.relative_to(paths[i].anchor).parts
            names[i] = "__".join([*(safe(part) for part in folders[-depth:]), base[i]])
    seen: Counter = Counter()
    for i, name in enumerate(names):
        seen[name.lower()] += 1
        if seen[name.lower()] > 1:
            names[i] = f"{name}_{seen[name.lower()]}"
    return names


class TerminalProgress:
    """One progress line per scan on a terminal; plain lines when stderr goes to a file."""

    def __init__(self, stream: TextIO, total: int, width: int = 28) -> None:
        self.stream = stream
        self.total = total
        self.width = width
        self.interactive = stream.isatty()
        self._last_message = ""

    def update(self, index: int, name: str, progress: Progress) -> None:
        filled = int(round(progress.fraction * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{index}/{self.total}] {name} [{bar}] {progress.fraction:4.0%} {progress.message}"
        if self.interactive:
            self.stream.write("\r" + line[:150].ljust(150))
        elif progress.message != self._last_message:
            self.stream.write(line + "\n")
        self._last_message = progress.message
        self.stream.flush()

    def done(self, index: int, name: str, status: str) -> None:
        if self.interactive:
            self.stream.write("\r" + " " * 150 + "\r")
        self.stream.write(f"[{index}/{self.total}] {name}: {status}\n")
        self.stream.flush()


@dataclass(frozen=True)
class BatchSettings:
    """What to compute and write for every scan.

    output_format: "standard", "mood" to also write the MOOD challenge files (``write_mood``), or "dicom"
        to also write DICOM results for scans read from a DICOM series (``write_dicom``).
    python_command, launcher: how the detector is started (see ``DetectionLogic``); tests swap them.
    """

    output_dir: Path
    options: DetectionOptions
    screenshots: bool = False
    scene: bool = False
    python_command: tuple[str, ...] | None = None
    launcher: ProcessLauncher = ChildProcess
    output_format: str = "standard"

    def __post_init__(self) -> None:
        if self.output_format not in FORMATS:
            raise ValueError(f"output_format must be one of {FORMATS}, got {self.output_format!r}")


def process_scan(path: Path, settings: BatchSettings, on_progress, name: str | None = None) -> dict[str, object]:
    """Detect in one scan and write its files into ``OUTPUT/<name>/`` (``output_names``); returns its
    scores.csv row (raises on failure)."""
    name = name or output_names([path])[0]
    with tempfile.TemporaryDirectory(prefix="ppr-batch-") as cache:
        context = SceneContext.create(Path(cache))
        volume = load_volume(context, path, name)
        logic = DetectionLogic(context.scene, launcher=settings.launcher, python_command=settings.python_command)
        results = logic.detect(volume, settings.options, on_progress=on_progress)
        return write_scan_outputs(context, volume, results, path, settings, settings.output_dir / name)


def write_scan_outputs(context: SceneContext, volume, results: DetectionResults, path: Path,
                       settings: BatchSettings, out_dir: Path) -> dict[str, object]:
    """Write every file of one scan's results (its folder ``out_dir`` = ``OUTPUT/<name>/``, and its MOOD
    files), each whole or not at all; returns the scan's scores.csv row so far (files and scores).

    The one place that writes a scan's outputs, in whichever process runs the scan (the batch itself,
    or a Ray worker): a new kind of output goes here (and into ``kept_row``'s list of files)."""
    row = {"Error map": save_node(results.error_map, out_dir / "error_map.nii.gz"),
           "Skull surface": save_node(results.skull_surface, out_dir / "skull_surface.vtk")}
    # Each map this run has; one it has not (another model or --no-calibration) must not stay from an earlier run.
    for column, node, file_name in (("z-map", results.z_map, Z_MAP_FILE_NAME),
                                    (POSITION_Z_MAP_COLUMN, results.position_z_map, POSITION_Z_MAP_FILE_NAME)):
        if node is not None:
            row[column] = save_node(node, out_dir / file_name)
        else:
            (out_dir / file_name).unlink(missing_ok=True)
    if settings.output_format == "mood":
        write_mood(path, results, row["z-map"] if results.z_map is not None else row["Error map"],
                   settings.output_dir / MOOD_FOLDER_NAME)
    dicom_dir = out_dir / DICOM_FOLDER_NAME
    if settings.output_format == "dicom" and holds_dicom_series(path):
        shown = row["z-map"] if results.displayed_map_kind == "z" else row["Error map"]
        row[DICOM_COLUMN] = DICOM_SEPARATOR.join(str(p) for p in write_dicom(path, results, shown, settings, dicom_dir))
    else:
        # No DICOM for this run (another format, or a scan from a file): none of an earlier run stays beside it.
        shutil.rmtree(dicom_dir, ignore_errors=True)
        if settings.output_format == "dicom":
            row.update({DICOM_COLUMN: "", "Reason": NO_DICOM_INPUT})
    if settings.screenshots:
        from PositionRegressionADLib.rendering import render_slices, render_surface

        render_slices(context, results, volume, out_dir / "slices")
        render_surface(results, out_dir / "skull_surface.png")
    if settings.scene:
        save_scene_mrb(context.scene, out_dir / "scene.mrb")
    row.update(table_row(results.scores))
    return row


def worker_name() -> str:
    """Who runs a scan, for its row's "Worker": this host and process id ("node-3:41207")."""
    return f"{socket.gethostname()}:{os.getpid()}"


def detect_scan(path: Path, name: str, settings: BatchSettings, digest: str, key: str, engine: str = "serial",
                on_progress=None) -> dict[str, object]:
    """Everything one scan needs, in the process that runs it: detect, write its files (``process_scan``)
    and return its whole scores.csv row. A scan that fails gets a "failed" row with its reason (never
    raises for the scan's own failure), and what an earlier run wrote for it is removed
    (``remove_results``), so no map beside a "failed" row looks current. Writes no row: the batch does."""
    started = time.monotonic()
    try:
        row = process_scan(path, settings, on_progress or (lambda update: None), name)
        row.update({"Scan": name, "Status": "ok", "Reason": row.get("Reason", "")})  # a note (no DICOM) stays
    except PPRError as error:
        row = {"Scan": name, "Status": "failed", "Reason": str(error)}
    except Exception as error:  # an unexpected failure of one scan must not stop the others
        row = {"Scan": name, "Status": "failed", "Reason": f"internal error: {error!r}"}
    if row["Status"] == "failed" and remove_results(settings, path, name):
        row["Reason"] = f"{row['Reason']} (the results of an earlier run of this scan were removed)"
    row.update({"Input": str(path.resolve()), "Input digest": digest, "Run settings": key})
    # "Seconds" is the detector's own time; this is the scan's whole time (export, results, files).
    row["Total seconds"] = round(time.monotonic() - started, 3)
    row.update({"Engine": engine, "Worker": worker_name()})
    return row


def done_status(row: dict[str, object]) -> str:
    """What the progress output says when a scan is done: ok (with its note) or why it failed, and its warning."""
    if row["Status"] == "ok":
        status = f"ok ({row['Reason']})" if row.get("Reason") else "ok"
    else:
        status = f"failed: {row['Reason']}"
    return f"{status}. {row[WARNING_COLUMN]}" if row.get(WARNING_COLUMN) else status


def mood_normalisation(results: DetectionResults):
    """The fixed [0, 1] map of this model's scores: ``MoodNormalisation.for_z(calibration)`` for z-maps
    (centred on the calibration's overlay threshold, which the detector reported and the z-map node
    keeps), the default of the error map's unit otherwise (mm for PPR, intensity for the autoencoder)."""
    from ppr.workflows.mood import MoodNormalisation

    if results.z_map is None:
        return MoodNormalisation.for_error(error_unit_of(results.scores))
    # for_z reads only the calibration's overlay threshold; the Lib gets it from the detector's report.
    return MoodNormalisation(kind="z", centre=results.calibrated_threshold_z)


def mood_sample_normalisation(results: DetectionResults):
    """The [0, 1] map of the MOOD sample score (the whole head's region score), None when it is the
    pixel map's (``mood_normalisation``). Beside an anomaly map the region scores are the position z's,
    so the sample score is centred on the position z-map's own threshold (the calibration's), as
    ``ppr evaluate --mood`` does."""
    from ppr.workflows.mood import MoodNormalisation

    if results.position_z_map is None:
        return None
    return MoodNormalisation(kind="z", centre=results.position_threshold_z)


def mood_case_name(scan: Path) -> str:
    """MOOD names the outputs after the input file ("00000.nii.gz" -> "00000.nii.gz", "00000.nii.gz.txt");
    a scan in another format is named after the scan ("head.nrrd" -> "head.nii.gz", "head.txt")."""
    return scan.name if scan.name.lower().endswith((".nii.gz", ".nii")) else scan_name(scan)


def write_mood(scan: Path, results: DetectionResults, map_path: Path, mood_dir: Path) -> None:
    """The scan's MOOD files: the voxels of its score map (``map_path``: the z-map of a calibrated
    model, the anomaly map with an intensity atlas, else the error map) on the input's exact grid,
    normalised to [0, 1], and the whole head's region score (same unit) mapped the same way; beside an
    anomaly map the region score is the position z's, mapped around its own threshold
    (``mood_sample_normalisation``)."""
    from ppr.image.geometry import Grid
    from ppr.workflows.mood import write_mood_outputs

    score = table_row(results.scores).get(REGION_LABELS[MOOD_SAMPLE_REGION], math.nan)
    if not math.isfinite(score):
        raise PPRError(f"{scan.name} has no whole-head score, so it has no MOOD sample score: check that the "
                       "scan shows a head.")
    score_map = sitk.ReadImage(str(map_path), sitk.sitkFloat32)
    source = read_image(scan)
    if not Grid.of(source).matches(score_map, tolerance_mm=0.01):
        raise PPRError(f"The map of {scan.name} is not on the scan's grid, so no MOOD file was written.")
    # The map went through a NIfTI written by Slicer (float32 geometry): give it the scan's exact one.
    score_map.CopyInformation(source)
    write_mood_outputs(score_map, score, mood_dir, mood_case_name(scan), mood_normalisation(results),
                       mood_sample_normalisation(results))


def write_dicom(scan: Path, results: DetectionResults, map_path: Path, settings: BatchSettings,
                dicom_dir: Path) -> list[Path]:
    """The scan's DICOM results (``ppr.workflows.dicom_results``), referencing its series: the shown map
    (``map_path``, the z-map or error map as written; within half a quantisation step) as a Parametric Map,
    its anomaly candidates (the module's: same threshold, minimum volume and count) as a Segmentation,
    and the region scores as a TID 1500 report. Each file whole or not at all."""
    from ppr.image.geometry import Grid
    from ppr.workflows.dicom_results import ShownMap, candidates_image, write_dicom_results

    source = read_image(scan)
    shown_map = sitk.ReadImage(str(map_path), sitk.sitkFloat32)
    if not Grid.of(source).matches(shown_map, tolerance_mm=0.01):
        raise PPRError(f"The map of {scan.name} is not on the series' grid, so no DICOM file was written.")
    # The map went through a NIfTI written by Slicer (float32 geometry): give it the series' exact one.
    shown_map.CopyInformation(source)
    error_unit = error_unit_of(results.scores)  # mm (PPR) or intensity (autoencoder)
    shown = ShownMap(shown_map, "z" if results.displayed_map_kind == "z" else error_unit, results.overlay_threshold)
    display = settings.options.display
    scores = table_row(results.scores)
    regions = {region: scores.get(label) for region, label in REGION_LABELS.items() if label in scores}
    return write_dicom_results(scan, dicom_dir, shown.image, shown.unit,
                               candidates_image(shown, display.min_candidate_volume_mm3, display.max_candidates),
                               regions, threshold=shown.threshold, aggregate=str(scores.get("Region score") or "p99"),
                               score_unit="z" if results.score_map == "z" else error_unit,
                               # the detector's report: the z-map is the anomaly map or the position z-map
                               shown_map=results.shown_map if shown.unit == "z" else "none")


def write_scores(path: Path, rows: list[dict[str, object]]) -> None:
    """Rewrite scores.csv with every row so far (the columns are the union of all rows), atomically
    (``ppr.image.imageio.write_text``)."""
    middle: list[str] = []
    # Columns of done scans first, so a failure before the first success does not reorder them.
    for row in sorted(rows, key=lambda row: row.get("Status") != "ok"):
        middle += [key for key in row if key not in FIRST_COLUMNS + LAST_COLUMNS + middle]
    columns = FIRST_COLUMNS + middle + LAST_COLUMNS
    # A region that misses the scan has no score (NaN in the table): an empty cell, not "nan".
    rows = [{key: "" if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
            for row in rows]
    with io.StringIO(newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        text = handle.getvalue()
    # A reader never sees a half-written file; a full disk raises OutputFileError ("no space left").
    write_text(path, text)


class BatchLockedError(OutputFileError):
    """Another batch is writing into the same --output folder."""


class BatchEngineError(PPRError):
    """The engine cannot run the batch (a Ray cluster that cannot be reached, --device cuda without a GPU)."""


class OutputLock:
    """Holds ``OUTPUT/.ppr-batch.lock`` while a batch writes into OUTPUT, so a second batch into the
    same folder is refused (``BatchLockedError``) instead of mixing its rows into scores.csv.

    An operating-system lock on the open file (flock; on Windows msvcrt.locking): it ends with the
    process, also on kill -9, so no stale lock is left to delete by hand.

        with OutputLock(output_dir):
            ...  # write results and scores.csv
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE_NAME
        self.handle = None

    def __enter__(self) -> OutputLock:
        while True:
            handle = open(self.path, "a+", encoding="utf-8")
            try:
                _lock(handle)
            except OSError:
                try:
                    handle.seek(0)
                    holder = handle.read().strip() or "a process"
                except OSError:  # Windows: the locked byte cannot be read either
                    holder = "a process"
                handle.close()
                raise BatchLockedError(
                    f"Another batch ({holder}) is writing into {self.folder}: wait for it to end, or give "
                    "another --output.") from None
            try:  # the file may have been removed by the holder that just ended: lock the current one
                same = os.path.samestat(os.fstat(handle.fileno()), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            handle.close()
        try:  # who holds it, for the message of a second batch; a full disk must not stop the batch here
            os.ftruncate(handle.fileno(), 0)
            os.write(handle.fileno(), f"process {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        except OSError:
            pass
        self.handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.path.unlink()  # while still locked (on Windows an open file stays: harmless)
        except OSError:
            pass
        self.handle.close()  # closing releases the lock
        self.handle = None


def _lock(handle) -> None:
    if os.name == "nt":
        import msvcrt

        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def run_batch(scans: list[Path], settings: BatchSettings, stream: TextIO | None = None,
              skipped: list[tuple[Path, str]] = ()) -> list[dict[str, object]]:
    """Process every scan; a failing scan gets a "failed" row with its reason and the batch goes on,
    and the results an earlier run left for it are removed (``remove_results``), so no map beside a
    "failed" row looks current. ``skipped``: (path, why) of files the inputs held that are no scans;
    each gets a "skipped" row first."""
    stream = sys.stderr if stream is None else stream  # at call time: tests and callers swap sys.stderr
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    with OutputLock(settings.output_dir):  # a second batch into this folder is refused (BatchLockedError)
        return _run_batch(scans, settings, stream, skipped)


def run_settings_key(settings: BatchSettings) -> str:
    """What makes a scan's results: the model (its path and checksums), stride, calibration, display
    thresholds and the files asked for; not the device. A row with another key is computed again."""
    options = settings.options
    model = Path(options.model_path)
    listing = model / "checksums.json" if model.is_dir() else model
    described = {"model": str(model.resolve()), "model_files": file_digest(listing) if listing.is_file() else "",
                 "stride": options.stride, "use_calibration": options.use_calibration, "display": repr(options.display),
                 "screenshots": settings.screenshots, "scene": settings.scene, "format": settings.output_format}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def previous_rows(path: Path) -> dict[str, dict[str, str]]:
    """The rows of an earlier run's scores.csv by their Input (none when it is missing or unreadable)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return {row["Input"]: row for row in csv.DictReader(handle) if row.get("Input")}
    except (OSError, UnicodeDecodeError, csv.Error, KeyError):
        return {}


def kept_row(previous: dict[str, str] | None, digest: str, key: str, settings: BatchSettings, scan: Path,
             name: str) -> dict[str, object] | None:
    """The earlier run's row of this scan when it can stand: "ok", the same scan bytes and settings,
    and its files where they belong and whole (maps read back in full); else None (detect again)."""
    if (previous is None or previous.get("Status") != "ok" or previous.get("Input digest") != digest
            or previous.get("Run settings") != key):
        return None
    folder = settings.output_dir / name
    files = [folder / "error_map.nii.gz", folder / "skull_surface.vtk"]
    if Path(previous.get("Error map", "")) != files[0] or Path(previous.get("Skull surface", "")) != files[1]:
        return None
    maps = [files[0]] + ([Path(previous["z-map"])] if previous.get("z-map") else [])
    if previous.get(POSITION_Z_MAP_COLUMN):
        if Path(previous[POSITION_Z_MAP_COLUMN]) != folder / POSITION_Z_MAP_FILE_NAME:
            return None
        maps.append(folder / POSITION_Z_MAP_FILE_NAME)
    if settings.screenshots:
        files += [folder / f"slices_{view}.png" for view in ("axial", "coronal", "sagittal")]
        files.append(folder / "skull_surface.png")
    if settings.scene:
        files.append(folder / "scene.mrb")
    if settings.output_format == "mood":
        from ppr.workflows.mood import mood_file_names

        try:
            files += [settings.output_dir / MOOD_FOLDER_NAME / n for n in mood_file_names(mood_case_name(scan))]
        except ValueError:
            return None
    note = ""
    if settings.output_format == "dicom":
        if holds_dicom_series(scan):
            from ppr.workflows.dicom_results import dicom_result_paths

            dicom = dicom_result_paths(folder / DICOM_FOLDER_NAME)
            if previous.get(DICOM_COLUMN) != DICOM_SEPARATOR.join(str(path) for path in dicom):
                return None
            files += dicom
        else:
            note = f"; {NO_DICOM_INPUT}"
    if not all(path.is_file() and path.stat().st_size > 0 for path in files + maps):
        return None
    try:
        for path in maps:
            read_image(path)  # refuses a map cut short
    except PPRError:
        return None
    return {**previous, "Scan": name, "Reason": KEPT + note}


def _run_batch(scans: list[Path], settings: BatchSettings, stream: TextIO,
               skipped: list[tuple[Path, str]]) -> list[dict[str, object]]:
    earlier = previous_rows(settings.output_dir / SCORES_FILE_NAME)
    key = run_settings_key(settings)
    bar = TerminalProgress(stream, len(scans))
    rows: list[dict[str, object]] = [skipped_row(path, reason) for path, reason in skipped]
    for path, reason in skipped:
        stream.write(f"skipped {path.name}: {reason}\n")
    names = output_names(scans)  # unique per scan: two "head.nii.gz" never share a result folder
    for index, (path, name) in enumerate(zip(scans, names), start=1):
        digest = scan_digest(path)
        kept = kept_row(earlier.get(str(path.resolve())), digest, key, settings, path, name) if digest else None
        if kept is not None:
            rows.append(kept)
            write_scores(settings.output_dir / SCORES_FILE_NAME, rows)
            bar.done(index, name, f"ok ({KEPT})")
            continue
        row = detect_scan(path, name, settings, digest, key, "serial",
                          lambda update: bar.update(index, name, update))
        rows.append(row)
        write_scores(settings.output_dir / SCORES_FILE_NAME, rows)
        bar.done(index, name, done_status(row))
    return rows


def scan_digest(path: Path) -> str:
    """The scan's "Input digest" ("" when it is missing: it then fails with the reader's message)."""
    return file_digest(path) if path.exists() else ""


# Run in the detector's Python (torch, the bundle's checks): load the bundle once, say why it cannot be.
_CHECK_MODEL = """import sys
from ppr.errors import PPRError
from ppr.workflows.bundle import load_bundle
try:
    load_bundle(sys.argv[1])
except PPRError as error:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
"""


def check_model(model: Path, python_command: list[str] | None = None, timeout_s: float = 600.0) -> None:
    """Load the model bundle once, in the detector's Python (``ppr.workflows.bundle.load_bundle``:
    checksums, format, weights), before the first scan: a damaged bundle stops the batch with its
    message instead of failing every scan. Raises ``BundleError``."""
    python = list(python_command or default_python_command())
    try:
        done = subprocess.run([*python, "-c", _CHECK_MODEL, str(model)], capture_output=True, text=True,
                              env=child_environment(), timeout=timeout_s, **popen_options(False))
    except (OSError, subprocess.TimeoutExpired) as error:
        raise BundleError(f"The model bundle {model} could not be checked ({error}).") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        message = next((line[len("error: "):] for line in reversed(lines) if line.startswith("error: ")), None)
        raise BundleError(message or f"The model bundle {model} could not be loaded: {lines[-1] if lines else ''}")


def remove_results(settings: BatchSettings, scan: Path, name: str) -> bool:
    """Remove what this scan has in ``--output`` (its folder ``OUTPUT/<name>/`` and its MOOD files), from
    an earlier run or cut short by this one; True when there was something."""
    removed = False
    folder = settings.output_dir / name
    if folder.is_dir() and folder.parent == settings.output_dir:
        shutil.rmtree(folder)
        removed = True
    if settings.output_format == "mood":
        from ppr.workflows.mood import mood_file_names

        try:
            names = mood_file_names(mood_case_name(scan))
        except ValueError:  # no MOOD name, so no MOOD file was written for it
            names = ()
        for file_name in names:
            path = settings.output_dir / MOOD_FOLDER_NAME / file_name
            if path.is_file():
                path.unlink()
                removed = True
    return removed


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.engine != "ray" and (args.address is not None or args.workers is not None):
        print("error: --address and --workers are for --engine ray", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    if args.engine == "ray":
        try:  # only this engine imports Ray (an optional package): the serial batch and Slicer never do
            from PositionRegressionADLib import batch_ray
        except ImportError as error:
            print(f"error: --engine ray needs Ray, which is not installed here ({error}): install it with "
                  f"`{Path(sys.executable).name} -m pip install {RAY_REQUIREMENT}` (in the project "
                  f"environment: .venv/bin/pip install {RAY_REQUIREMENT}), or use --engine serial.",
                  file=sys.stderr)
            return 2
    if args.format == "dicom":
        try:  # before any scan: without it every DICOM scan would fail the same way
            import highdicom  # noqa: F401
        except ImportError as error:
            print(f"error: --format dicom needs highdicom, which is not installed here ({error}): install it "
                  f"with `{Path(sys.executable).name} -m pip install highdicom==0.28.2`.", file=sys.stderr)
            return 2
    try:
        model = check_model_path(args.model or default_model_path())
        scans, skipped = find_inputs(args.input)
        check_model(model)  # once, before the first scan
        options = DetectionOptions(model_path=model.resolve(), device=args.device, stride=args.stride,
                                   use_calibration=not args.no_calibration,
                                   display=ResultDisplayOptions(overlay_threshold_mm=args.threshold_mm,
                                                                overlay_threshold_z=args.threshold_z,
                                                                bone_threshold=args.bone_threshold))
    except (PPRError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = BatchSettings(output_dir=args.output.resolve(), options=options, screenshots=args.screenshots,
                             scene=args.scene, output_format=args.format)
    try:
        if args.engine == "ray":
            rows = batch_ray.run_batch_ray(scans, settings, skipped=skipped, address=args.address,
                                           workers=args.workers)
        else:
            rows = run_batch(scans, settings, skipped=skipped)
    except BatchLockedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OutputFileError as error:  # scores.csv could not be written (a full disk): the batch stops
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BatchEngineError as error:  # the Ray cluster could not be reached or cannot run the scans
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = sum(row["Status"] == "failed" for row in rows)
    shown = f"; {len(skipped)} file(s) skipped (see their rows)" if skipped else ""
    print(f"{len(scans) - failed} of {len(scans)} scans done{shown}; scores in "
          f"{settings.output_dir / SCORES_FILE_NAME}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
