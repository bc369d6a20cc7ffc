"""Detect anomalies in many head CTs from the command line, without the Slicer desktop.

    python -m PositionRegressionADLib.batch --input DIR_OR_FILES... --output DIR [--model BUNDLE]
        [--device auto|cuda|cpu] [--stride K] [--screenshots] [--scene]

or inside Slicer: ``Slicer --no-main-window --python-script <module dir>/batch.py -- <same arguments>``.

Per scan, in ``OUTPUT/<scan>/``: ``error_map.nii.gz`` (input's grid), ``skull_surface.vtk`` (LPS, error
per point), with ``--scene`` ``scene.mrb``, with ``--screenshots`` slice and surface PNGs; and one row
in ``OUTPUT/scores.csv`` (region scores, the detector's seconds and the scan's total seconds, status). A scan that fails gets its reason in its
row and the batch goes on. Each scan gets a fresh scene, so memory does not grow with the batch.

Exit code: 0 all scans done, 1 some failed (see scores.csv), 2 nothing could start (message on stderr).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from PositionRegressionADLib.detection_logic import (
    DEVICES,
    PREVIEW_STRIDE,
    DetectionLogic,
    DetectionOptions,
    check_model_path,
    default_model_path,
)
from PositionRegressionADLib.process import ChildProcess, ProcessLauncher, Progress
from PositionRegressionADLib.report import table_row
from PositionRegressionADLib.results import ResultDisplayOptions
from PositionRegressionADLib.scene_io import (
    VOLUME_SUFFIXES,
    SceneContext,
    is_volume_file,
    load_volume,
    save_node,
    save_scene_mrb,
)
from ppr.errors import InputImageError, PPRError

SCORES_FILE_NAME = "scores.csv"
FIRST_COLUMNS = ["Scan", "Status", "Reason"]
LAST_COLUMNS = ["Total seconds", "Error map", "Skull surface", "Input"]


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
    parser.add_argument("--threshold-mm", type=float, default=None,
                        help="overlay and candidate threshold in mm (default: a percentile of the scan's error)")
    parser.add_argument("--bone-threshold", type=float, default=None,
                        help="input intensity of the skull surface (default: chosen from the scan)")
    parser.add_argument("--screenshots", action="store_true", help="write slice and surface PNGs per scan")
    parser.add_argument("--scene", action="store_true", help="write a Slicer scene (.mrb) per scan")
    return parser


def find_scans(inputs: list[Path]) -> list[Path]:
    """Volume files named directly or found (not recursively) in the named folders, in order."""
    scans: list[Path] = []
    for item in inputs:
        if item.is_dir():
            scans += sorted(path for path in item.iterdir() if path.is_file() and is_volume_file(path))
        elif item.exists():
            scans.append(item)
        else:
            raise InputImageError(f"{item} does not exist: check the --input paths.")
    if not scans:
        raise InputImageError(f"No scan found in --input (looked for {', '.join(VOLUME_SUFFIXES)}).")
    return scans


def scan_name(path: Path) -> str:
    """``ctich_051.nii.gz`` -> ``ctich_051``: the name of the scan's output folder and row."""
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


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

    python_command, launcher: how the detector is started (see ``DetectionLogic``); tests swap them.
    """

    output_dir: Path
    options: DetectionOptions
    screenshots: bool = False
    scene: bool = False
    python_command: tuple[str, ...] | None = None
    launcher: ProcessLauncher = ChildProcess


def process_scan(path: Path, settings: BatchSettings, on_progress) -> dict[str, object]:
    """Detect in one scan and write its files; returns its scores.csv row (raises on failure)."""
    out_dir = settings.output_dir / scan_name(path)
    with tempfile.TemporaryDirectory(prefix="ppr-batch-") as cache:
        context = SceneContext.create(Path(cache))
        volume = load_volume(context, path, scan_name(path))
        logic = DetectionLogic(context.scene, launcher=settings.launcher, python_command=settings.python_command)
        results = logic.detect(volume, settings.options, on_progress=on_progress)
        row = {"Error map": save_node(results.error_map, out_dir / "error_map.nii.gz"),
               "Skull surface": save_node(results.skull_surface, out_dir / "skull_surface.vtk")}
        if settings.screenshots:
            from PositionRegressionADLib.rendering import render_slices, render_surface

            render_slices(context, results, volume, out_dir / "slices")
            render_surface(results, out_dir / "skull_surface.png")
        if settings.scene:
            save_scene_mrb(context.scene, out_dir / "scene.mrb")
        row.update(table_row(results.scores))
        return row


def write_scores(path: Path, rows: list[dict[str, object]]) -> None:
    """Rewrite scores.csv with every row so far (the columns are the union of all rows)."""
    middle: list[str] = []
    # Columns of done scans first, so a failure before the first success does not reorder them.
    for row in sorted(rows, key=lambda row: row.get("Status") != "ok"):
        middle += [key for key in row if key not in FIRST_COLUMNS + LAST_COLUMNS + middle]
    columns = FIRST_COLUMNS + middle + LAST_COLUMNS
    # A region that misses the scan has no score (NaN in the table): an empty cell, not "nan".
    rows = [{key: "" if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}
            for row in rows]
    temporary = path.with_suffix(".csv.part")
    with temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)  # a reader never sees a half-written file


def run_batch(scans: list[Path], settings: BatchSettings, stream: TextIO = sys.stderr) -> list[dict[str, object]]:
    """Process every scan; a failing scan gets a "failed" row with its reason and the batch goes on."""
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    bar = TerminalProgress(stream, len(scans))
    rows: list[dict[str, object]] = []
    for index, path in enumerate(scans, start=1):
        name = scan_name(path)
        started = time.monotonic()
        try:
            row = process_scan(path, settings, lambda update: bar.update(index, name, update))
            row.update({"Scan": name, "Status": "ok", "Reason": ""})
        except PPRError as error:
            row = {"Scan": name, "Status": "failed", "Reason": str(error)}
        except Exception as error:  # an unexpected failure of one scan must not stop the others
            row = {"Scan": name, "Status": "failed", "Reason": f"internal error: {error!r}"}
        row["Input"] = str(path.resolve())
        # "Seconds" is the detector's own time; this is the scan's whole time (export, results, files).
        row["Total seconds"] = round(time.monotonic() - started, 3)
        rows.append(row)
        write_scores(settings.output_dir / SCORES_FILE_NAME, rows)
        bar.done(index, name, row["Status"] if row["Status"] == "ok" else f"failed: {row['Reason']}")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = check_model_path(args.model or default_model_path())
        scans = find_scans(args.input)
        options = DetectionOptions(model_path=model.resolve(), device=args.device, stride=args.stride,
                                   display=ResultDisplayOptions(overlay_threshold_mm=args.threshold_mm,
                                                                bone_threshold=args.bone_threshold))
    except (PPRError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = BatchSettings(output_dir=args.output.resolve(), options=options,
                             screenshots=args.screenshots, scene=args.scene)
    rows = run_batch(scans, settings)
    failed = sum(row["Status"] != "ok" for row in rows)
    print(f"{len(rows) - failed} of {len(rows)} scans done; scores in {settings.output_dir / SCORES_FILE_NAME}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
