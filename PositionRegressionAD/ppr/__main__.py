"""``python -m ppr <command>``: the command-line entry point.

Each command lives in its own module ``ppr.cli.<command>`` exposing ``add_arguments(parser)`` and
``run(args) -> int``; they are imported only when used so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ppr.cli.orphan import watch_parent
from ppr.errors import PPRError

COMMANDS: dict[str, str] = {
    "preprocess": "Resample, register and normalise a head CT into model space.",
    "train": "Train a model bundle (PPR, or the autoencoder baseline) on healthy head CTs.",
    "detect": "Compute the error map of a head CT with a model bundle.",
    "calibrate": "Store per-voxel healthy error statistics in a model bundle.",
    "evaluate": "Evaluate a model bundle on labelled cases (AUROC, AP, Dice).",
    "bench": "Benchmark inference and training speed and memory.",
}


def _command_module(name: str):
    return importlib.import_module(f"ppr.cli.{name}")


def build_parser(available: dict[str, str], chosen: str | None = None) -> argparse.ArgumentParser:
    """All commands; with ``chosen`` only that command's module is imported, so a command that
    needs only torch (``bench``) runs where SimpleITK is not installed (a bare GPU machine)."""
    parser = argparse.ArgumentParser(prog="python -m ppr", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, summary in available.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        if chosen is None or name == chosen:
            _command_module(name).add_arguments(sub)
    return parser


def available_commands() -> dict[str, str]:
    """Commands whose module is present (a command lands with its module)."""
    found = {}
    for name, summary in COMMANDS.items():
        if importlib.util.find_spec(f"ppr.cli.{name}") is not None:
            found[name] = summary
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    watch_parent()  # a child of the Lib ends with its parent (ppr.cli.orphan)
    available = available_commands()
    chosen = argv[0] if argv and argv[0] in available else None
    args = build_parser(available, chosen).parse_args(argv)
    try:
        return int(_command_module(args.command).run(args) or 0)
    except PPRError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
