"""Train a PPR model bundle from folders of healthy head CTs, without a GUI.

    Slicer --no-main-window --python-script <PPRTraining module folder>/Scripts/train.py -- \\
        --data DIR [DIR ...] --out BUNDLE [--val DIR [DIR ...]] [ppr train options]
    python PPRTraining/Scripts/train.py --data DIR [DIR ...] --out BUNDLE [...]

Every image in the --data folders is a training scan (names matching --exclude, by default
*mask*, *label*, *seg*, are skipped); the --val folders give the validation scans. Options this
script does not know (--steps, --max-minutes, --m, --size, --spacing, --window, --prewindowed,
--mode, --resume, --seed, --device, --batch ...) go unchanged to ``python -m ppr train``: see
``python -m ppr train --help``. After training the report (loss curves PNG and JSON summary) is
written beside the bundle. Exit code: 0 success, 2 user error, 130 interrupted, otherwise the
training's own exit code.

This script lives in Scripts/ because Slicer tries to load every .py file at the top of a module
folder as a module of its own.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _make_packages_importable(script: Path) -> None:
    # Installed extension: PPRTrainingLib and ppr sit side by side in the module folder. Source
    # tree: ppr is in the sibling PositionRegressionAD folder.
    module_folder = script.resolve().parent.parent
    for folder in (module_folder.parent / "PositionRegressionAD", module_folder):
        if folder.is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))


def _script_arguments(argv: list[str]) -> list[str]:
    # Slicer passes what follows its own options, sometimes with the "--" separator kept.
    if "--" in argv:
        return argv[argv.index("--") + 1:]
    return argv[1:]


def build_parser() -> argparse.ArgumentParser:
    from PPRTrainingLib.data_folders import DEFAULT_EXCLUDES

    parser = argparse.ArgumentParser(
        prog="train.py",
        description="Train a PPR model bundle from folders of healthy head CTs.",
        epilog="Other options are passed to `python -m ppr train`.",
    )
    parser.add_argument("--data", nargs="+", type=Path, required=True, metavar="DIR",
                        help="folders of healthy head CTs to train on")
    parser.add_argument("--out", type=Path, required=True, metavar="BUNDLE", help="model bundle to write")
    parser.add_argument("--val", nargs="+", type=Path, default=[], metavar="DIR",
                        help="folders of healthy head CTs for the validation loss")
    parser.add_argument("--exclude", action="append", metavar="GLOB",
                        help=f"skip files matching GLOB (repeatable; default: {' '.join(DEFAULT_EXCLUDES)})")
    parser.add_argument("--no-report", action="store_true", help="do not write the training report")
    parser.add_argument("--dry-run", action="store_true", help="list the scans and the command, do not train")
    return parser


def _print_progress(report) -> None:
    if report.fraction is None:
        print(report.message, flush=True)
    else:
        print(f"[{100 * report.fraction:3.0f}%] {report.message}", flush=True)


def main(argv: list[str]) -> int:
    from ppr.errors import PPRError
    from PPRTrainingLib.data_folders import DEFAULT_EXCLUDES
    from PPRTrainingLib.logic import PPRTrainingLogic

    args, ppr_args = build_parser().parse_known_args(argv)
    logic = PPRTrainingLogic()
    try:
        request = logic.request_from_folders(
            args.data, args.out, args.val, ppr_args, exclude=args.exclude or DEFAULT_EXCLUDES
        )
    except PPRError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(request.images)} training scan(s), {len(request.validation_images)} validation scan(s)", flush=True)
    if args.dry_run:
        print(" ".join(logic.command(request)), flush=True)
        return 0
    try:
        outcome = logic.train(request, on_progress=_print_progress)
    except KeyboardInterrupt:
        print("Training interrupted: the training process was stopped.", file=sys.stderr)
        return 130
    if not outcome.succeeded:
        print(f"error: {outcome.error_message}", file=sys.stderr)
        return outcome.returncode or 1
    print(f"Model bundle written to {request.bundle} in {outcome.seconds / 60:.1f} min", flush=True)
    if not args.no_report:
        try:
            report = logic.write_report(request.bundle)
        except (PPRError, ImportError) as error:
            print(f"warning: no training report: {error}", file=sys.stderr)
        else:
            print(f"Training report: {report.figure} and {report.summary_file}", flush=True)
    return 0


if __name__ == "__main__":
    _make_packages_importable(Path(globals().get("__file__") or sys.argv[0]))
    from PositionRegressionADLib.script_exit import run_and_exit

    # Always ends, with the training's exit code: a --no-main-window Slicer must not outlive an error.
    run_and_exit(main, _script_arguments(sys.argv))
