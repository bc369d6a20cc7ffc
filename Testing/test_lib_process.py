"""The child-process runner: progress lines, output, exit codes, and cancel killing the whole group."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest

from PositionRegressionADLib.process import ChildProcess, Progress, parse_progress_line
from PositionRegressionADLib.testing import process_alive


def _script(tmp_path: Path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def _wait(process: ChildProcess, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize(("line", "expected"), [
    ("PROGRESS 0.25 registering to the reference", Progress(0.25, "registering to the reference")),
    ("PROGRESS 1 done\n", Progress(1.0, "done")),
    ("PROGRESS 1.7 overshoot", Progress(1.0, "overshoot")),
    ("PROGRESS 0.5", Progress(0.5, "")),
    ("PROGRESS half way", None),
    ("progress 0.5 lower case is not the protocol", None),
    ("error: something", None),
])
def test_progress_lines_are_parsed_and_clamped(line, expected):
    assert parse_progress_line(line) == expected


def test_progress_and_json_are_separated_from_other_output(tmp_path):
    command = _script(tmp_path, """
        import json, sys
        for step in range(5):
            print(f"PROGRESS {step / 4} step {step}", file=sys.stderr, flush=True)
        print("a warning on stderr", file=sys.stderr)
        print("some log on stdout")
        print(json.dumps({"seconds": 1.5}))
    """)
    process = ChildProcess(command, env={})
    _wait(process)
    outcome = process.outcome()
    updates = process.take_progress()
    assert [u.fraction for u in updates] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [u.message for u in updates][-1] == "step 4"
    assert process.take_progress() == []
    assert outcome.returncode == 0 and not outcome.cancelled
    assert outcome.stdout.splitlines()[-1] == '{"seconds": 1.5}'
    assert outcome.stderr == "a warning on stderr"


def test_user_error_message_is_the_error_line(tmp_path):
    command = _script(tmp_path, """
        import sys
        print("PROGRESS 0.1 reading", file=sys.stderr)
        print("error: The input is a single slice: choose a 3D head CT.", file=sys.stderr)
        sys.exit(2)
    """)
    process = ChildProcess(command, env={})
    outcome = process.outcome()
    assert outcome.returncode == 2
    assert outcome.error_message() == "The input is a single slice: choose a 3D head CT."


def test_a_crash_reports_the_last_stderr_lines(tmp_path):
    command = _script(tmp_path, """
        raise RuntimeError("boom in the child")
    """)
    outcome = ChildProcess(command, env={}).outcome()
    assert outcome.returncode == 1
    assert "RuntimeError: boom in the child" in outcome.error_message()


def test_a_chatty_child_does_not_block_on_a_full_pipe(tmp_path):
    # 4 MB on each stream: far more than a pipe buffer, so a runner that did not read would hang.
    command = _script(tmp_path, """
        import sys
        for _ in range(40000):
            sys.stdout.write("x" * 99 + "\\n")
            sys.stderr.write("y" * 99 + "\\n")
        print("PROGRESS 1 done", file=sys.stderr)
    """)
    process = ChildProcess(command, env={})
    _wait(process, 60.0)
    outcome = process.outcome()
    assert outcome.returncode == 0
    assert len(outcome.stdout.splitlines()) == 40000
    assert len(outcome.stderr.splitlines()) == 200  # only the tail is kept
    assert process.take_progress() == [Progress(1.0, "done")]


def test_cancel_kills_the_child_and_its_children(tmp_path):
    pid_file = tmp_path / "pids"
    command = _script(tmp_path, f"""
        import os, subprocess, sys, time
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(f"{{os.getpid()}} {{worker.pid}}")
        print("PROGRESS 0.2 working", file=sys.stderr, flush=True)
        time.sleep(600)
    """)
    process = ChildProcess(command, env={}, kill_grace_seconds=1.0)
    deadline = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child, worker = (int(v) for v in pid_file.read_text().split())
    assert process_alive(child) and process_alive(worker)

    process.cancel()
    outcome = process.outcome()

    assert outcome.cancelled
    assert outcome.returncode != 0
    deadline = time.monotonic() + 5
    while (process_alive(child) or process_alive(worker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child)
    assert not process_alive(worker)
