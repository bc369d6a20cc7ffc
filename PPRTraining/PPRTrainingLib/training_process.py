"""Run ``python -m ppr train`` in a subprocess and follow it: progress, stop, outcome.

Inside Slicer the interpreter is ``PythonSlicer`` (Slicer's own Python, without the GUI), elsewhere
the interpreter running this code. Two reader threads put the child's output lines in a queue and
the caller drains it with ``TrainingRun.poll()`` from its own thread (the Slicer widget from a
QTimer on the GUI thread, a script from ``wait()``), so no callback ever runs on a reader thread.
``stop()`` ends the child and everything it started (its own process group / session).

This module knows the progress protocol (``PROGRESS <fraction> <message>`` on stderr, ``error: ...``
for user errors, one JSON object on the last stdout line) but not how training works, and no Qt.
"""

from __future__ import annotations

import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The Windows console and process-group options live once, with the detector's child process.
from PositionRegressionADLib.process import kill_windows_process_tree, popen_options
from ppr.errors import PPRError

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
_STEP = re.compile(r"\bstep\s*[=:]?\s*(\d+)", re.IGNORECASE)
_LOSS = re.compile(r"\b(?:train[_ ]?)?loss\s*[=:]?\s*" + _NUMBER, re.IGNORECASE)
_VAL_LOSS = re.compile(r"\bval(?:[_ ]?loss|idation(?:[_ ]loss)?)?\s*[=:]?\s*" + _NUMBER, re.IGNORECASE)
_STDERR_LINES_KEPT = 200


@dataclass(frozen=True)
class TrainingRequest:
    """What to train: healthy scans, where the model bundle goes, and extra ``ppr train`` options.

    >>> TrainingRequest(images=(Path("a.nii.gz"),), bundle=Path("model")).ppr_train_args()
    ['train', 'a.nii.gz', '--out', 'model', '--progress']
    """

    images: tuple[Path, ...]
    bundle: Path
    validation_images: tuple[Path, ...] = ()
    extra_args: tuple[str, ...] = ()

    def ppr_train_args(self) -> list[str]:
        """The arguments after ``python -m ppr``."""
        args = ["train", *(str(image) for image in self.images), "--out", str(self.bundle)]
        if self.validation_images:
            args += ["--val", *(str(image) for image in self.validation_images)]
        return args + ["--progress", *self.extra_args]


@dataclass(frozen=True)
class TrainingProgress:
    """One progress report of a running training.

    fraction: 0..1 from a ``PROGRESS`` line; None for a per-step line without one.
    step, loss, val_loss: read from the message when it names them (``step 120 loss 0.08 val 0.1``).
    """

    fraction: float | None
    message: str
    step: int | None = None
    loss: float | None = None
    val_loss: float | None = None


@dataclass(frozen=True)
class TrainingOutcome:
    """How a training run ended. ``error_message`` is empty on success."""

    returncode: int
    stopped: bool
    seconds: float
    error_message: str
    last_progress: TrainingProgress | None
    result: dict[str, Any] | None

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and not self.stopped


def parse_progress_line(line: str) -> TrainingProgress | None:
    """A ``PROGRESS <fraction> <message>`` line or a per-step line (one naming a step and a loss)."""
    text = line.strip()
    fraction = None
    if text.startswith("PROGRESS "):
        parts = text.split(maxsplit=2)
        try:
            fraction = min(max(float(parts[1]), 0.0), 1.0)
        except (IndexError, ValueError):
            return None
        text = parts[2] if len(parts) > 2 else ""
    step, loss, val_loss = _search_int(_STEP, text), _search_float(_LOSS, text), _search_float(_VAL_LOSS, text)
    if fraction is None and (step is None or loss is None):
        return None
    return TrainingProgress(fraction, text, step, loss, val_loss)


def _search_int(pattern: re.Pattern[str], text: str) -> int | None:
    match = pattern.search(text)
    return int(match.group(1)) if match else None


def _search_float(pattern: re.Pattern[str], text: str) -> float | None:
    match = pattern.search(text)
    return float(match.group(1)) if match else None


def python_interpreter() -> str:
    """PythonSlicer inside the Slicer application, the running interpreter anywhere else."""
    slicer = sys.modules.get("slicer")
    app = getattr(slicer, "app", None)
    if app is None:
        return sys.executable
    # Slicer puts PythonSlicer on PATH; the application folder is the fallback.
    found = shutil.which("PythonSlicer")
    if found:
        return found
    name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
    candidate = Path(app.slicerHome) / "bin" / name
    if candidate.exists():
        return str(candidate)
    raise PPRError("PythonSlicer was not found next to Slicer: reinstall Slicer, then try again.")


def ppr_command(request: TrainingRequest, python: str | None = None) -> list[str]:
    """The command line that trains ``request``."""
    return [python or python_interpreter(), "-m", "ppr", *request.ppr_train_args()]


def child_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of the training process: ``ppr`` importable, output not buffered."""
    env = dict(os.environ if base is None else base)
    spec = importlib.util.find_spec("ppr")
    if spec is None or spec.origin is None:
        raise PPRError("The ppr package was not found: reinstall the PositionRegressionAD extension.")
    # In Slicer the extension's module folder is not on a PythonSlicer child's path by default.
    ppr_root = str(Path(spec.origin).resolve().parent.parent)
    paths = [ppr_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != ppr_root]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class TrainingRun:
    """One training subprocess, started on construction.

    >>> run = TrainingRun(ppr_command(request), env=child_environment())  # doctest: +SKIP
    >>> outcome = run.wait(on_progress=lambda p: print(p.fraction, p.message))  # doctest: +SKIP
    >>> run.stop()  # from another thread or a GUI timer, ends the child and its children

    A GUI calls ``poll()`` on a timer instead of ``wait()`` and ``outcome()`` once ``finished()``.
    """

    def __init__(self, command: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None):
        self.command = list(command)
        self._started = time.monotonic()
        self._ended: float | None = None
        self._stopped = False
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES_KEPT)
        self._last_stdout_line = ""
        self._last_progress: TrainingProgress | None = None
        self._process = subprocess.Popen(
            self.command, env=dict(env) if env is not None else None, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", bufsize=1, **popen_options(own_process_group=True),
        )
        self._readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr))
        ]
        for reader in self._readers:
            reader.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def _read(self, name: str, stream) -> None:
        for line in iter(stream.readline, ""):
            self._lines.put((name, line.rstrip("\r\n")))
        stream.close()

    def poll(self) -> list[TrainingProgress]:
        """Progress reports that arrived since the last call (never blocks)."""
        reports = []
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                return reports
            if name == "stdout":
                if line.strip():
                    self._last_stdout_line = line
            elif not line.startswith("PROGRESS "):
                self._stderr_tail.append(line)
            report = parse_progress_line(line)
            if report is not None:
                self._last_progress = report
                reports.append(report)

    def finished(self) -> bool:
        """True once the child has exited and its output is read."""
        if self._process.poll() is None:
            return False
        if self._ended is None:
            self._ended = time.monotonic()
        # A grandchild that outlives the child keeps the pipes open: do not wait on it for ever.
        readers_done = not any(reader.is_alive() for reader in self._readers)
        return readers_done or time.monotonic() - self._ended > 5.0

    def stop(self, grace_seconds: float = 3.0) -> None:
        """End the child and every process it started; the outcome then says ``stopped``."""
        self._stopped = True
        if os.name == "nt":
            kill_windows_process_tree(self.pid)
            return
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self._process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            pass
        # Whatever ignored SIGTERM, or outlived the child, goes now.
        _signal_group(self.pid, signal.SIGKILL)
        self._process.wait(timeout=10.0)

    def wait(
        self,
        on_progress: Callable[[TrainingProgress], None] | None = None,
        poll_seconds: float = 0.1,
    ) -> TrainingOutcome:
        """Block until the run ends, handing each progress report to ``on_progress``."""
        while True:
            done = self.finished()
            for report in self.poll():
                if on_progress is not None:
                    on_progress(report)
            if done:
                return self.outcome()
            time.sleep(poll_seconds)

    def outcome(self) -> TrainingOutcome:
        """How the run ended; only valid once ``finished()``."""
        if not self.finished():
            raise RuntimeError("the training process is still running")
        self.poll()
        returncode = self._process.returncode
        return TrainingOutcome(
            returncode=returncode,
            stopped=self._stopped,
            seconds=(self._ended or time.monotonic()) - self._started,
            error_message="" if returncode == 0 or self._stopped else self._error_message(returncode),
            last_progress=self._last_progress,
            result=_json_object(self._last_stdout_line),
        )

    def _error_message(self, returncode: int) -> str:
        user_errors = [line[len("error: "):] for line in self._stderr_tail if line.startswith("error: ")]
        if user_errors:
            return "\n".join(user_errors)
        tail = [line for line in self._stderr_tail if line.strip()][-20:]
        if tail:
            return f"Training failed (exit code {returncode}):\n" + "\n".join(tail)
        return f"Training failed (exit code {returncode}) without a message."


def _signal_group(pid: int, signal_number: int) -> None:
    try:
        os.killpg(pid, signal_number)
    except (ProcessLookupError, PermissionError):
        pass


def _json_object(line: str) -> dict[str, Any] | None:
    if not line.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
