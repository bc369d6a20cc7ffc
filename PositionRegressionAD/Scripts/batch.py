"""Batch detection from Slicer's command line (no main window); the same main as the Lib's batch.

    Slicer --no-main-window --python-script <module dir>/Scripts/batch.py -- --input DIR --output DIR [...]

See ``python -m PositionRegressionADLib.batch --help`` for the arguments. It lives in Scripts/ because
Slicer tries to load every .py file at the top of a module folder as a module.
"""

import sys
from pathlib import Path


def _main(argv: list) -> int:
    from PositionRegressionADLib.batch import main

    if argv[:1] == ["--"]:
        argv = argv[1:]
    return main(argv)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this module's Lib and ppr
    from PositionRegressionADLib.script_exit import run_and_exit

    # Always ends, with the batch's exit code: a --no-main-window Slicer must not outlive an error.
    run_and_exit(_main, sys.argv[1:])
