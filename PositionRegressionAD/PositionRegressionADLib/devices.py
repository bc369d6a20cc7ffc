"""Which compute devices detection can use, described for the user ("GPU: NVIDIA ..., 80 GB").

torch is imported only when it is installed (inside Slicer it arrives later, through the PyTorch
extension); before that, ``nvidia-smi`` tells whether a GPU is there. This module does not choose a
device for a run: the detector does, from the "auto" / "cuda" / "cpu" option.

A GUI never imports torch itself: importing it and initialising CUDA takes seconds, and a broken
install (a Windows DLL error) would break the panel. ``DeviceProbe`` asks a child Python instead
(``python -m PositionRegressionADLib.devices`` prints one JSON line) and is polled from a timer::

    probe = DeviceProbe([python], env)
    ... on each tick: line = probe.poll()   # None until the child has answered
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PositionRegressionADLib.process import ChildProcess, popen_options

PROBE_TIMEOUT_SECONDS = 120.0
CHECKING = "Checking the compute devices..."
# The oldest PyTorch the ppr core is written for (torch.load(weights_only=...), parametrizations,
# inference_mode, CPU/CUDA autocast); only recent versions are tested.
MINIMUM_TORCH = "2.0"
TORCH_REQUIREMENT = f">={MINIMUM_TORCH}"  # for PyTorchUtilsLogic.installTorch(torchVersionRequirement=...)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def torch_too_old(version: str | None = None) -> str | None:
    """Why the installed PyTorch is too old for the core (read from its metadata, not imported), else None."""
    if version is None:
        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None
    if _release(version) >= _release(MINIMUM_TORCH):
        return None
    return (f"PyTorch {version} is installed, but this module needs PyTorch {MINIMUM_TORCH} or newer: "
            "uninstall it with the PyTorch Utils module, restart Slicer and detect again (it is then "
            "installed anew).")


def _release(version: str) -> tuple[int, ...]:
    # "2.13.0+cpu" -> (2, 13, 0); only the numbers count (no dependency on packaging).
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = "".join(itertools.takewhile(str.isdigit, part))
        if not digits:
            break
        numbers.append(int(digits))
    return tuple(numbers)


def torch_gpus() -> list[GpuInfo]:
    """The CUDA GPUs torch sees (empty without a GPU)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [GpuInfo(torch.cuda.get_device_name(index),
                    torch.cuda.get_device_properties(index).total_memory / 1024**3)
            for index in range(torch.cuda.device_count())]


def parse_nvidia_smi(text: str) -> list[GpuInfo]:
    """``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader,nounits`` -> GPUs (MiB -> GB)."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if name.strip() and memory.strip().replace(".", "", 1).isdigit():
            gpus.append(GpuInfo(name.strip(), float(memory) / 1024))
    return gpus


def nvidia_smi_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs the driver reports (empty without the driver)."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return []
    try:
        result = subprocess.run([executable, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                                capture_output=True, text=True, timeout=10, check=False,
                                **popen_options(own_process_group=False))
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(result.stdout) if result.returncode == 0 else []


def describe_devices(has_torch: bool | None = None, gpus: list[GpuInfo] | None = None) -> str:
    """One line for the user: the GPU that "auto" will use, or why the CPU will be used."""
    has_torch = torch_installed() if has_torch is None else has_torch
    if gpus is None:
        gpus = torch_gpus() if has_torch else nvidia_smi_gpus()
    if not gpus:
        suffix = "" if has_torch else " PyTorch will be installed on first use."
        return f"No CUDA GPU found: detection runs on the CPU, more slowly.{suffix}"
    first = gpus[0]
    more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
    suffix = "" if has_torch else " PyTorch will be installed on first use."
    return f"GPU: {first.name}, {first.memory_gb:.0f} GB{more}.{suffix}"


def probe_devices() -> dict[str, Any]:
    """What the child reports: torch's version (None if absent), why torch failed to load, the GPUs."""
    report: dict[str, Any] = {"torch": None, "torch_error": None, "gpus": []}
    gpus = None
    if torch_installed():
        try:
            import torch

            report["torch"] = str(torch.__version__)
            gpus = torch_gpus()
        except Exception as error:  # noqa: BLE001 - a broken install raises anything (OSError on Windows)
            report["torch_error"] = f"{type(error).__name__}: {error}"
    if gpus is None:
        gpus = nvidia_smi_gpus()
    report["gpus"] = [[gpu.name, gpu.memory_gb] for gpu in gpus]
    return report


def describe_report(report: Mapping[str, Any]) -> str:
    """The user's line for a ``probe_devices`` report."""
    if report.get("torch_error"):
        return (f"PyTorch is installed but does not load ({report['torch_error']}): detection cannot run. "
                "Reinstall it with the PyTorch Utils module, then restart Slicer.")
    return describe_devices(report.get("torch") is not None, [GpuInfo(str(n), float(m)) for n, m in report["gpus"]])


class DeviceProbe:
    """``probe_devices`` in a child Python, so the caller never imports torch (see the module docstring)."""

    def __init__(self, python_command: Sequence[str], env: Mapping[str, str],
                 timeout_seconds: float = PROBE_TIMEOUT_SECONDS, launcher=ChildProcess) -> None:
        self._deadline = time.monotonic() + timeout_seconds
        self._line: str | None = None
        self._process = launcher([*python_command, "-m", "PositionRegressionADLib.devices"], env)

    def poll(self) -> str | None:
        """The description once the child has answered (or failed, or timed out); None before."""
        if self._line is not None:
            return self._line
        if self._process.poll() is None:
            if time.monotonic() < self._deadline:
                return None
            self._process.cancel()
            self._line = "The compute devices could not be checked in time: detection chooses when it runs."
            return self._line
        outcome = self._process.outcome()
        try:
            self._line = describe_report(json.loads(outcome.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError, KeyError, TypeError):
            self._line = ("The compute devices could not be checked: "
                          f"{outcome.error_message() or f'exit code {outcome.returncode}'}")
        return self._line

    def cancel(self) -> None:
        if self._line is None and self._process.poll() is None:
            self._process.cancel()


if __name__ == "__main__":
    print(json.dumps(probe_devices()))
    sys.exit(0)
