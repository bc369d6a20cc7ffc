"""Batch detection from Slicer's command line (no main window); the same main as the Lib's batch.

    Slicer --no-main-window --python-script <module dir>/Scripts/batch.py -- --input DIR --output DIR [...]

See ``python -m PositionRegressionADLib.batch --help`` for the arguments. It lives in Scripts/ because
Slicer tries to load every .py file at the top of a module folder as a module.
"""

import sys
from pathlib import Path


def _main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this module's Lib and ppr
    from PositionRegressionADLib.batch import main

    argv = sys.argv[1:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    return main(argv)


if __name__ == "__main__":
    code = _main()
    try:
        import slicer

        slicer.util.exit(code)  # inside Slicer: close the application with the batch's exit code
    except (ImportError, AttributeError):
        sys.exit(code)
