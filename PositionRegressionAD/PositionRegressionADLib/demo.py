"""The one-command demo: detect anomalies in the bundled sample head CT with the bundled model.

    python -m PositionRegressionADLib.demo [--output demo-output] [--device auto|cuda|cpu] [--stride K]

It is the batch (``PositionRegressionADLib.batch``) on one scan with screenshots and a scene, plus a
``scores.json`` beside ``scores.csv`` and a printed summary of the scores and of where every file is.
It does not compute anything the batch does not.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from PositionRegressionADLib.batch import SCORES_FILE_NAME, BatchSettings, run_batch, scan_name
from PositionRegressionADLib.report import WARNING_COLUMN
from PositionRegressionADLib.detection_logic import (
    DEVICES,
    PREVIEW_STRIDE,
    DetectionOptions,
    check_model_path,
    default_model_path,
)
from ppr.errors import PPRError

REPO_ROOT = Path(__file__).resolve().parents[2]
# One haemorrhage case of the CT-ICH dev data (PhysioNet, CC BY 4.0): see Resources/Sample/README.md.
# It is in the source tree only: in an installed extension REPO_ROOT is lib/Slicer-X.Y, where nothing
# is looked up or written (the output then goes to the current folder).
SAMPLE_SCAN = REPO_ROOT / "Resources" / "Sample" / "ctich_051.nii.gz"


def in_source_tree(root: Path = REPO_ROOT) -> bool:
    return (root / "Resources" / "Sample").is_dir()


def default_output_dir(root: Path = REPO_ROOT) -> Path:
    return (root if in_source_tree(root) else Path.cwd()) / "demo-output"
SCORE_COLUMNS = ("Left hemisphere", "Right hemisphere", "Skull", "Whole head")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m PositionRegressionADLib.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=default_output_dir())
    parser.add_argument("--input", type=Path, default=SAMPLE_SCAN, help="scan to use instead of the sample")
    parser.add_argument("--model", type=Path, default=None, help="model bundle (default: the bundled model)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument("--stride", type=int, default=PREVIEW_STRIDE)
    return parser


def write_scores_json(row: dict[str, object], path: Path) -> Path:
    path.write_text(json.dumps(row, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def summary_lines(row: dict[str, object], scan_dir: Path, output_dir: Path) -> list[str]:
    lines = [f"Anomaly scores of {row['Scan']} ({row.get('Region score', '')} of the "
             f"{row.get('Score map', 'mm')} map):"]
    lines += [f"  {column:<17} {row.get(column, '')}" for column in SCORE_COLUMNS if column in row]
    if row.get(WARNING_COLUMN):
        lines.append(f"WARNING: {row[WARNING_COLUMN]}")
    lines.append(f"Detector: {row.get('Seconds', '')} s on {row.get('Device', '')}, stride {row.get('Stride', '')}; "
                 f"whole scan {row.get('Total seconds', '')} s")
    lines.append(f"Results in {output_dir}:")
    lines += [f"  {path.relative_to(output_dir)}" for path in sorted(scan_dir.rglob("*")) if path.is_file()]
    lines += [f"  {SCORES_FILE_NAME}", "  scores.json"]
    lines.append(f"Open {scan_dir / 'scene.mrb'} in 3D Slicer (File > Add Data) to explore the results.")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = check_model_path(args.model or default_model_path())
        if not args.input.exists():
            hint = ("restore it with git" if in_source_tree() else
                    "the sample ships with the source tree only, not with the installed extension")
            raise PPRError(f"The demo scan {args.input} is missing: {hint}, or pass --input SCAN.")
    except PPRError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    output_dir = args.output.resolve()
    settings = BatchSettings(output_dir=output_dir, screenshots=True, scene=True,
                             options=DetectionOptions(model_path=model.resolve(), device=args.device,
                                                      stride=args.stride))
    [row] = run_batch([args.input], settings)
    if row["Status"] != "ok":
        print(f"error: the demo failed: {row['Reason']}", file=sys.stderr)
        return 1
    write_scores_json(row, output_dir / "scores.json")
    print("\n".join(summary_lines(row, output_dir / scan_name(args.input), output_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
