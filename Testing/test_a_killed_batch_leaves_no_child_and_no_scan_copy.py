"""kill -9 of a batch during detection (issue 13): the detector child and what it started end with
the batch (``ppr.cli.orphan``), and the copy of the scan in the temporary folder goes with them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppr.cli.orphan import CLEANUP_VARIABLE, PARENT_VARIABLE, watch_parent

DRIVER = """import sys
from pathlib import Path
from PositionRegressionADLib.batch import BatchSettings, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
settings = BatchSettings(output_dir=Path(sys.argv[2]), options=DetectionOptions(model_path=Path(sys.argv[3])),
                         python_command=(sys.executable, "-m", "PositionRegressionADLib.testing"))
run_batch([Path(sys.argv[1])], settings)
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its exit status waits to be collected


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_kill_9_of_a_batch_ends_its_detector_and_removes_the_scan_copy(tmp_path):
    scan = tmp_path / "head.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((12, 12, 12), np.int16)), str(scan))
    (tmp_path / "model").mkdir()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    pid_file = tmp_path / "pids"
    env = {**os.environ, "TMPDIR": str(temporary), "PPR_FAKE_DETECT": "hang", "PPR_FAKE_PID_FILE": str(pid_file)}
    env.pop(PARENT_VARIABLE, None)
    batch = subprocess.Popen([sys.executable, "-c", DRIVER, str(scan), str(tmp_path / "out"), str(tmp_path / "model")],
                             env=env, stderr=subprocess.DEVNULL)
    try:
        assert _wait_until(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"), 60)
        child, worker = map(int, pid_file.read_text().split())
        copies = list(temporary.rglob("*.nii*"))
        assert copies, "the detector reads a copy of the scan in the temporary folder"
        batch.send_signal(signal.SIGKILL)
        batch.wait()
        assert _wait_until(lambda: not _running(child) and not _running(worker), 10), "the detector ran on"
        assert list(temporary.rglob("*.nii*")) == []
    finally:
        for pid in (batch.pid, *(map(int, pid_file.read_text().split()) if pid_file.exists() else ())):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def test_a_command_typed_by_a_user_is_not_watched():
    assert not watch_parent({})
    assert not watch_parent({PARENT_VARIABLE: "", CLEANUP_VARIABLE: "/tmp"})
