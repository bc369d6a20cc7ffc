"""A child started by the Lib (``ppr detect`` in Slicer, batch or the web viewer) ends with its parent.

When the parent dies without cancelling it (kill -9, a crash), the child would compute on for minutes
and the copy of the patient's scan it reads would stay in the temporary folder. The Lib names its own
process in ``PPR_PARENT_PID`` and the run's temporary folder in ``PPR_ORPHAN_CLEANUP``; ``watch_parent``
then starts a thread that, once the parent is gone, removes that folder and kills the child's process
group (the child leads its own group, ``process.popen_options``), so torch's workers go too.

What it does not: anything without ``PPR_PARENT_PID`` (a command typed by a user), or on Windows
(a dead parent's id is not replaced there; the Lib's cancel still kills the process tree).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping

PARENT_VARIABLE = "PPR_PARENT_PID"
CLEANUP_VARIABLE = "PPR_ORPHAN_CLEANUP"


def watch_parent(env: Mapping[str, str] | None = None, interval_s: float = 0.5) -> bool:
    """Start the watch when the environment names a parent (POSIX); True when it was started."""
    env = os.environ if env is None else env
    parent = env.get(PARENT_VARIABLE, "")
    if os.name == "nt" or not parent.isdigit():
        return False
    cleanup = env.get(CLEANUP_VARIABLE) or None
    threading.Thread(target=_watch, args=(int(parent), cleanup, interval_s), daemon=True,
                     name="ppr-parent-watch").start()
    return True


def _watch(parent: int, cleanup: str | None, interval_s: float) -> None:
    # The named parent may be a grandparent (Slicer starts PythonSlicer, a launcher, which starts
    # Python): the watch ends when the named process is gone, or when this process's own parent
    # changes (an orphan is adopted by init or a subreaper; a killed parent not yet reaped still
    # answers os.kill as a zombie).
    own_parent = os.getppid()
    while os.getppid() == own_parent and _alive(parent):
        time.sleep(interval_s)
    if cleanup:
        shutil.rmtree(cleanup, ignore_errors=True)
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(137)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the number: ours is gone
        return False
    return True
