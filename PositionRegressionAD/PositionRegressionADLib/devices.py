"""Which compute devices detection can use, described for the user ("GPU: NVIDIA ..., 80 GB").

torch is imported only when it is installed (inside Slicer it arrives later, through the PyTorch
extension); before that, ``nvidia-smi`` tells whether a GPU is there. This module does not choose a
device for a run: the detector does, from the "auto" / "cuda" / "cpu" option.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


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
                                capture_output=True, text=True, timeout=10, check=False)
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
