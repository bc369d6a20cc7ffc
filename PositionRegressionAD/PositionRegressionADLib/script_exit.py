"""End a command-line script with an exit code, in plain Python and inside Slicer.

``Slicer --no-main-window --python-script SCRIPT`` keeps the application running after a script
whose code raised: without a main window nobody can close it, so a batch job or a headless training
never ends. ``run_and_exit(main, argv)`` runs ``main`` and always ends with a code: what ``main``
returned, argparse's code for a usage error or ``--help``, 130 after Ctrl+C, 1 (traceback printed)
for anything else. Inside Slicer the code becomes the application's exit status
(``slicer.util.exit``); elsewhere it is ``sys.exit``.

Used by ``Scripts/batch.py`` and PPRTraining's ``Scripts/train.py``::

    if __name__ == "__main__":
        run_and_exit(main, sys.argv[1:])
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence

INTERRUPTED = 130
INTERNAL_ERROR = 1


def run_and_exit(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> None:
    """Run ``main(argv)`` and end the process (or the Slicer application) with its exit code."""
    try:
        code = int(main(list(argv)) or 0)
    except SystemExit as stop:  # argparse: usage errors and --help
        code = _system_exit_code(stop)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        code = INTERRUPTED
    except BaseException:  # noqa: BLE001 - whatever happened, the process must end
        traceback.print_exc()
        code = INTERNAL_ERROR
    exit_process(code)


def exit_process(code: int) -> None:
    """``slicer.util.exit(code)`` inside the Slicer application, ``sys.exit(code)`` anywhere else."""
    sys.stdout.flush()
    sys.stderr.flush()
    slicer = sys.modules.get("slicer")
    if getattr(slicer, "app", None) is not None:
        slicer.util.exit(code)  # ends the application once pending events are processed
        return
    sys.exit(code)


def _system_exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)  # sys.exit("message") prints it and means failure
    return INTERNAL_ERROR
