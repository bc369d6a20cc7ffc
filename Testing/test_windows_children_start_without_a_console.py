"""On Windows every child the modules start (PythonSlicer for detection, training and the device probe;
taskkill for cancel; nvidia-smi) starts without a console window, as Slicer's own
``slicer.util.launchConsoleProcess`` does (STARTUPINFO, STARTF_USESHOWWINDOW, SW_HIDE): otherwise a
console shows for the whole run and closing it kills the job. Checked here with ``os.name`` set to
"nt" and ``subprocess`` stood in for, so no Windows is needed: the test reads the options chosen.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

import PositionRegressionADLib.devices as devices
import PositionRegressionADLib.process as process
from PositionRegressionADLib.process import ChildProcess, popen_options
from PPRTrainingLib.training_process import TrainingRun

# Win32 values (WinBase.h / WinUser.h), the ones subprocess exposes on Windows.
WIN32 = {"CREATE_NEW_PROCESS_GROUP": 0x200, "CREATE_NO_WINDOW": 0x08000000, "STARTF_USESHOWWINDOW": 1, "SW_HIDE": 0}


class FakeStartupInfo:
    """subprocess.STARTUPINFO as on Windows: flags and show-window both start at 0."""

    def __init__(self) -> None:
        self.dwFlags = 0
        self.wShowWindow = 1  # SW_SHOWNORMAL, so a test sees that SW_HIDE was set on purpose


class FakePopen:
    started: list[tuple[list[str], dict]] = []

    def __init__(self, args, **kwargs) -> None:
        FakePopen.started.append((list(args), kwargs))
        self.args, self.pid, self.returncode = list(args), 4242, 0
        self.stdout, self.stderr = io.StringIO(""), io.StringIO("")

    def poll(self) -> int:
        return 0

    def wait(self, timeout=None) -> int:
        return 0


@pytest.fixture
def windows(monkeypatch):
    """``os.name == "nt"`` and a subprocess module whose Popen/run only record what they are given."""
    FakePopen.started = []
    ran: list[tuple[list[str], dict]] = []

    def run(args, **kwargs):
        ran.append((list(args), kwargs))
        return subprocess.CompletedProcess(args, 0, stdout="NVIDIA RTX A4000, 16376\n", stderr="")

    monkeypatch.setattr(subprocess, "STARTUPINFO", FakeStartupInfo, raising=False)
    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(devices.shutil, "which", lambda name: "C:/Windows/System32/nvidia-smi.exe")
    with monkeypatch.context() as patch:
        patch.setattr(os, "name", "nt")
        yield ran


def assert_hidden_console(options: dict, creation_flag: int) -> None:
    assert options["creationflags"] == creation_flag
    info = options["startupinfo"]
    assert info.dwFlags & WIN32["STARTF_USESHOWWINDOW"] and info.wShowWindow == WIN32["SW_HIDE"]
    assert "start_new_session" not in options


def test_the_win32_values_are_the_documented_ones():
    for name, value in WIN32.items():
        assert getattr(process, name) == value
        if os.name == "nt":
            assert getattr(subprocess, name) == value


def test_long_jobs_get_a_hidden_console_and_a_group_of_their_own(windows):
    assert_hidden_console(popen_options(own_process_group=True), WIN32["CREATE_NEW_PROCESS_GROUP"])


def test_short_tools_get_no_console_at_all(windows):
    assert_hidden_console(popen_options(own_process_group=False), WIN32["CREATE_NO_WINDOW"])


def test_the_detector_child_and_its_cancel_start_hidden(windows):
    child = ChildProcess(["C:/Slicer/bin/PythonSlicer.exe", "-m", "ppr", "detect"], env={})
    (command, options), = FakePopen.started
    assert command[0].endswith("PythonSlicer.exe")
    assert_hidden_console(options, WIN32["CREATE_NEW_PROCESS_GROUP"])
    child.cancel()
    (taskkill, kill_options), = windows
    assert taskkill == ["taskkill", "/F", "/T", "/PID", "4242"]
    assert_hidden_console(kill_options, WIN32["CREATE_NO_WINDOW"])


def test_the_trainer_child_and_its_stop_start_hidden(windows):
    run = TrainingRun(["C:/Slicer/bin/PythonSlicer.exe", "-m", "ppr", "train"], env={})
    (_, options), = FakePopen.started
    assert_hidden_console(options, WIN32["CREATE_NEW_PROCESS_GROUP"])
    run.stop()
    (taskkill, kill_options), = windows
    assert taskkill[:4] == ["taskkill", "/F", "/T", "/PID"]
    assert_hidden_console(kill_options, WIN32["CREATE_NO_WINDOW"])


def test_nvidia_smi_starts_hidden(windows):
    assert devices.nvidia_smi_gpus() == [devices.GpuInfo("NVIDIA RTX A4000", 16376 / 1024)]
    (command, options), = windows
    assert command[0].endswith("nvidia-smi.exe")
    assert_hidden_console(options, WIN32["CREATE_NO_WINDOW"])


def test_the_device_probe_starts_through_the_hidden_child(windows):
    devices.DeviceProbe(["C:/Slicer/bin/PythonSlicer.exe"], env={})
    (command, options), = FakePopen.started
    assert command == ["C:/Slicer/bin/PythonSlicer.exe", "-m", "PositionRegressionADLib.devices"]
    assert_hidden_console(options, WIN32["CREATE_NEW_PROCESS_GROUP"])


@pytest.mark.skipif(os.name == "nt", reason="POSIX behaviour")
def test_on_posix_long_jobs_get_a_session_and_tools_nothing():
    assert popen_options(own_process_group=True) == {"start_new_session": True}
    assert popen_options(own_process_group=False) == {}
    assert sys.platform != "win32"
