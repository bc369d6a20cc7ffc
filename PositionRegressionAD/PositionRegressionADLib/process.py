"""Run a command that speaks the ppr progress protocol in a child process, and cancel it.

The child (``python -m ppr detect ... --json --progress``) prints ``PROGRESS <fraction> <message>``
lines on stderr and one JSON object as the last line of stdout. Here the child starts in its own
process group, background threads read both streams (so a full pipe never blocks the child and the
caller never blocks on the child), and cancel kills the whole group, grandchildren included.

This module knows nothing about MRML, about what the command computes or about its JSON: the
detection logic reads those. ``DetectionProcess`` is the seam tests use to pass a fake.

Usage::

    process = ChildProcess([sys.executable, "-m", "ppr", "detect", ...], env=os.environ.copy())
    while process.poll() is None:
        for update in process.take_progress():
            print(update.fraction, update.message)
        time.sleep(0.1)
    outcome = process.outcome()
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

PROGRESS_PREFIX = "PROGRESS "
# Enough of stderr to explain a failure; a chatty child must not grow memory without bound.
STDERR_TAIL_LINES = 200


@dataclass(frozen=True)
class Progress:
    """One progress report of the child: fraction of the work done (0..1) and what it is doing."""

    fraction: float
    message: str


@dataclass(frozen=True)
class ProcessOutcome:
    """How the child ended: exit code, all of stdout, the stderr lines that were not progress."""

    returncode: int
    stdout: str
    stderr: str
    cancelled: bool

    def error_message(self) -> str:
        """The child's ``error: ...`` line if it printed one, else its last stderr lines."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        for line in reversed(lines):
            if line.startswith("error: "):
                return line[len("error: "):]
        return "\n".join(lines[-5:])


class DetectionProcess(Protocol):
    """A running child process as the detection logic sees it (a fake in tests)."""

    def poll(self) -> int | None:
        """Exit code once the child has ended, ``None`` while it runs."""

    def take_progress(self) -> list[Progress]:
        """Progress reported since the previous call, oldest first."""

    def cancel(self) -> None:
        """Stop the child and everything it started; returns when they are gone."""

    def outcome(self) -> ProcessOutcome:
        """Wait for the child to end and return how it ended."""


ProcessLauncher = Callable[[Sequence[str], Mapping[str, str]], DetectionProcess]


def parse_progress_line(line: str) -> Progress | None:
    """``PROGRESS 0.25 registering`` -> Progress(0.25, "registering"); anything else -> None."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    fields = line[len(PROGRESS_PREFIX):].strip().split(maxsplit=1)
    if not fields:
        return None
    try:
        fraction = float(fields[0])
    except ValueError:
        return None
    return Progress(min(max(fraction, 0.0), 1.0), fields[1] if len(fields) > 1 else "")


class ChildProcess:
    """A child process in its own process group, read by two daemon threads.

    Implements ``DetectionProcess``; ``ChildProcess`` itself is a ``ProcessLauncher``.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: Path | None = None,
                 kill_grace_seconds: float = 3.0) -> None:
        self._kill_grace_seconds = kill_grace_seconds
        self._progress: queue.Queue[Progress] = queue.Queue()
        self._stdout_lines: list[str] = []
        self._stderr_lines: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._cancelled = False
        self._popen = subprocess.Popen(
            list(command), env=dict(env), cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **popen_options(own_process_group=True))
        self._readers = [
            threading.Thread(target=self._read_stdout, args=(self._popen.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self._popen.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self, stream: IO[str]) -> None:
        for line in stream:
            self._stdout_lines.append(line)
        stream.close()

    def _read_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            update = parse_progress_line(line)
            if update is None:
                self._stderr_lines.append(line.rstrip("\n"))
            else:
                self._progress.put(update)
        stream.close()

    def poll(self) -> int | None:
        return self._popen.poll()

    def take_progress(self) -> list[Progress]:
        updates = []
        while True:
            try:
                updates.append(self._progress.get_nowait())
            except queue.Empty:
                return updates

    def cancel(self) -> None:
        self._cancelled = True
        _kill_process_group(self._popen, self._kill_grace_seconds)

    def outcome(self) -> ProcessOutcome:
        returncode = self._popen.wait()
        for reader in self._readers:
            reader.join()
        return ProcessOutcome(returncode=returncode, stdout="".join(self._stdout_lines),
                              stderr="\n".join(self._stderr_lines), cancelled=self._cancelled)


# Win32 values, named here because ``subprocess`` defines them only on Windows.
CREATE_NEW_PROCESS_GROUP = 0x00000200
CREATE_NO_WINDOW = 0x08000000
STARTF_USESHOWWINDOW = 0x00000001
SW_HIDE = 0


def popen_options(own_process_group: bool) -> dict:
    """``subprocess`` keyword arguments for a child the GUI starts without a console window.

    own_process_group: a long job (the detector, the trainer) in a group of its own, so cancel
        reaches the workers it or torch started; False for a short tool (taskkill, nvidia-smi).

    On Windows PythonSlicer.exe, taskkill and nvidia-smi are console programs: started plainly from
    Slicer (a GUI program) each opens a console window, and closing that window kills the job. As
    Slicer's ``slicer.util.launchConsoleProcess`` does, the console is created hidden
    (STARTUPINFO with SW_HIDE), so what PythonSlicer starts in turn (python-real.exe) shares that hidden
    console instead of opening its own. A short tool starts no console at all (CREATE_NO_WINDOW).
    """
    if os.name != "nt":
        return {"start_new_session": True} if own_process_group else {}
    startupinfo = subprocess.STARTUPINFO()
    startupinfo.dwFlags |= STARTF_USESHOWWINDOW
    startupinfo.wShowWindow = SW_HIDE
    flags = CREATE_NEW_PROCESS_GROUP if own_process_group else CREATE_NO_WINDOW
    return {"startupinfo": startupinfo, "creationflags": flags}


def kill_windows_process_tree(pid: int) -> None:
    """taskkill /T, the only stock way to reach a Windows process tree, without a console window."""
    subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, check=False,
                   **popen_options(own_process_group=False))


def _kill_process_group(popen: subprocess.Popen, grace_seconds: float) -> None:
    """Terminate the child's group, then kill what is left after ``grace_seconds``."""
    if os.name == "nt":
        kill_windows_process_tree(popen.pid)
        popen.wait()
        return
    group = popen.pid  # start_new_session made the child the leader of its own group
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline and _group_alive(group):
        popen.poll()  # reap the leader so it does not linger as a zombie member of the group
        time.sleep(0.05)
    _signal_group(group, signal.SIGKILL)
    popen.wait()


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
