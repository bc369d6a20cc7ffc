"""The training subprocess: progress reaches the caller, errors come back as messages, stop ends
the process and its children. A tiny fake trainer stands in for ``python -m ppr train``."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from PPRTrainingLib.logic import PPRTrainingLogic
from PPRTrainingLib.training_process import (
    TrainingRequest,
    TrainingRun,
    child_environment,
    parse_progress_line,
    python_interpreter,
)

# Behaviour is chosen by the first argument after the script: the logic appends "train ...".
FAKE_TRAINER = r'''
import json, os, subprocess, sys, time
mode = os.environ.get("FAKE_MODE", "progress")
if mode == "progress":
    n = int(os.environ.get("FAKE_STEPS", "6"))
    print("loading scans", file=sys.stderr, flush=True)
    for i in range(1, n + 1):
        val = f" val {2.0 / i:.4f}" if i % 3 == 0 else ""
        print(f"PROGRESS {i / n:.4f} step {i}/{n} loss {1.0 / i:.4f}{val}", file=sys.stderr, flush=True)
    print("some other output", flush=True)
    print(json.dumps({"argv": sys.argv[1:], "steps": n}), flush=True)
elif mode == "user_error":
    print("PROGRESS 0.0 reading scans", file=sys.stderr, flush=True)
    print("error: scan a.nii.gz is 2D: give a 3D head CT", file=sys.stderr, flush=True)
    sys.exit(2)
elif mode == "crash":
    print("PROGRESS 0.1 step 1 loss 0.5", file=sys.stderr, flush=True)
    1 / 0
elif mode == "forever":
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    with open(os.environ["FAKE_PID_FILE"], "w") as f:
        f.write(str(child.pid))
    for i in range(100000):
        print(f"PROGRESS {i / 100000:.5f} step {i} loss 1.0", file=sys.stderr, flush=True)
        time.sleep(0.05)
'''


@pytest.fixture()
def fake_trainer(tmp_path: Path) -> Path:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return script


def fake_run(script: Path, mode: str, **env: str) -> TrainingRun:
    environment = {**os.environ, "FAKE_MODE": mode, **env}
    return TrainingRun([sys.executable, str(script), "train"], env=environment)


def test_progress_lines_reach_the_callback_in_order(fake_trainer: Path) -> None:
    reports = []
    outcome = fake_run(fake_trainer, "progress", FAKE_STEPS="6").wait(on_progress=reports.append)
    assert outcome.succeeded and outcome.returncode == 0 and outcome.error_message == ""
    assert [r.fraction for r in reports] == pytest.approx([i / 6 for i in range(1, 7)], abs=1e-4)
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6]
    assert [r.loss for r in reports] == pytest.approx([1.0 / i for i in range(1, 7)], abs=1e-4)
    assert [r.val_loss for r in reports] == pytest.approx([None, None, 2 / 3, None, None, 2 / 6], abs=1e-4)
    assert outcome.last_progress == reports[-1]
    assert outcome.result == {"argv": ["train"], "steps": 6}


def test_failed_run_returns_the_user_error_message(fake_trainer: Path) -> None:
    outcome = fake_run(fake_trainer, "user_error").wait()
    assert outcome.returncode == 2 and not outcome.succeeded and not outcome.stopped
    assert outcome.error_message == "scan a.nii.gz is 2D: give a 3D head CT"


def test_crash_returns_the_end_of_stderr(fake_trainer: Path) -> None:
    outcome = fake_run(fake_trainer, "crash").wait()
    assert outcome.returncode == 1 and not outcome.succeeded
    assert outcome.error_message.startswith("Training failed (exit code 1):")
    assert "ZeroDivisionError" in outcome.error_message
    assert "PROGRESS" not in outcome.error_message


def _is_gone(pid: int) -> bool:
    """True when the process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_stop_ends_the_process_and_its_child(fake_trainer: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    run = fake_run(fake_trainer, "forever", FAKE_PID_FILE=str(pid_file))
    reports = []
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text() and reports) and time.monotonic() < deadline:
        reports += run.poll()
        time.sleep(0.05)
    child_pid = int(pid_file.read_text())
    assert not _is_gone(run.pid) and not _is_gone(child_pid), "the fake training should be running"
    assert reports and reports[0].step == 0

    run.stop(grace_seconds=2.0)
    outcome = run.wait()

    assert outcome.stopped and not outcome.succeeded and outcome.error_message == ""
    assert outcome.returncode < 0  # ended by a signal
    deadline = time.monotonic() + 5
    while not _is_gone(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _is_gone(child_pid), "the training's child process survived stop()"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("PROGRESS 0.25 step 10/40 loss 0.123 val 0.2", (0.25, 10, 0.123, 0.2)),
        # the message ppr.networks.training writes
        ("PROGRESS 0.0500 step 100 loss 0.08123 val 0.09001 patches/s 912 ETA 1900s", (0.05, 100, 0.08123, 0.09001)),
        ("PROGRESS 0.0510 step 101 loss 0.08000 patches/s 912 ETA 1890s", (0.051, 101, 0.08, None)),
        ("PROGRESS 0.5 step=20 train_loss=0.1 val_loss=0.3", (0.5, 20, 0.1, 0.3)),
        ("PROGRESS 1.5 bundle written", (1.0, None, None, None)),
        ("PROGRESS -0.1 starting", (0.0, None, None, None)),
        ("step 5 loss: 5e-2 validation loss: 0.07", (None, 5, 0.05, 0.07)),
    ],
)
def test_progress_line_is_parsed(line: str, expected: tuple) -> None:
    report = parse_progress_line(line)
    assert report is not None
    assert (report.fraction, report.step, report.loss, report.val_loss) == pytest.approx(expected)


@pytest.mark.parametrize("line", ["loading scans", "PROGRESS abc loading", "step 5 of 10", "val_loss 0.3"])
def test_other_lines_are_not_progress(line: str) -> None:
    assert parse_progress_line(line) is None


def test_logic_passes_scans_bundle_validation_and_options_to_the_trainer(
    fake_trainer: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_dir, val_dir = tmp_path / "healthy", tmp_path / "validation"
    for folder, names in ((train_dir, ["b.nii.gz", "a.nrrd", "a_mask.nii.gz"]), (val_dir, ["v.mha"])):
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
    logic = PPRTrainingLogic(command_prefix=[sys.executable, str(fake_trainer)])
    request = logic.request_from_folders([train_dir], tmp_path / "bundle", [val_dir], ["--steps", "3"])
    monkeypatch.setenv("FAKE_MODE", "progress")
    outcome = logic.train(request)
    assert outcome.succeeded
    assert outcome.result["argv"] == [
        "train", str(train_dir / "a.nrrd"), str(train_dir / "b.nii.gz"), "--out", str(tmp_path / "bundle"),
        "--val", str(val_dir / "v.mha"), "--progress", "--steps", "3",
    ]


def test_request_without_validation_has_no_val_option() -> None:
    request = TrainingRequest(images=(Path("x.nii.gz"),), bundle=Path("out"), extra_args=("--m", "8"))
    assert request.ppr_train_args() == ["train", "x.nii.gz", "--out", "out", "--progress", "--m", "8"]


def test_child_environment_makes_the_ppr_package_importable_first(repo_root: Path) -> None:
    env = child_environment({"PYTHONPATH": os.pathsep.join(["/somewhere", "/else"])})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(repo_root / "PositionRegressionAD"), "/somewhere", "/else"]
    assert env["PYTHONUNBUFFERED"] == "1"


def test_interpreter_is_this_python_outside_slicer_and_pythonslicer_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "slicer", raising=False)
    assert python_interpreter() == sys.executable
    # slicer-core gives a `slicer` module without `app`: still not the Slicer application.
    monkeypatch.setitem(sys.modules, "slicer", SimpleNamespace())
    assert python_interpreter() == sys.executable

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python_slicer = bin_dir / "PythonSlicer"
    python_slicer.write_text("#!/bin/sh\n")
    python_slicer.chmod(0o755)
    monkeypatch.setitem(sys.modules, "slicer", SimpleNamespace(app=SimpleNamespace(slicerHome=str(tmp_path))))
    monkeypatch.setenv("PATH", "/nonexistent")
    assert python_interpreter() == str(python_slicer)  # found in the application folder
    monkeypatch.setenv("PATH", str(bin_dir))
    assert python_interpreter() == str(python_slicer)  # found on PATH


def test_progress_json_result_is_only_a_json_object(fake_trainer: Path, tmp_path: Path) -> None:
    script = tmp_path / "prints_list.py"
    script.write_text("print('[1, 2]')\n")
    assert TrainingRun([sys.executable, str(script)]).wait().result is None
    script.write_text("print(" + repr(json.dumps({"ok": 1})) + ")\n")
    assert TrainingRun([sys.executable, str(script)]).wait().result == {"ok": 1}


def test_request_arguments_are_what_ppr_train_accepts() -> None:
    from ppr.__main__ import COMMANDS, build_parser

    request = TrainingRequest(
        images=(Path("a.nii.gz"), Path("b.nii.gz")), bundle=Path("models/m"),
        validation_images=(Path("v.nii.gz"),), extra_args=("--max-minutes", "30", "--m", "8"),
    )
    args = build_parser({"train": COMMANDS["train"]}).parse_args(request.ppr_train_args())
    assert args.images == [Path("a.nii.gz"), Path("b.nii.gz")] and args.out == Path("models/m")
    assert args.val == [Path("v.nii.gz")] and args.progress is True
    assert (args.max_minutes, args.m) == (30.0, 8)
