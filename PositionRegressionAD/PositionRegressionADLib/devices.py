"""Which compute devices this Python can use, described for the user ("GPU: NVIDIA ..., 80 GB").

torch is imported only when it is installed (inside Slicer it arrives later, through the PyTorch
extension), so asking never fails; without torch the answer says so. This module does not choose a
device for a run: the detector does, from the "auto" / "cuda" / "cpu" option.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuInfo:
    name: str
    memory_gb: float


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def cuda_gpus() -> list[GpuInfo]:
    """The CUDA GPUs torch sees (empty without torch or without a GPU)."""
    if not torch_installed():
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    return [GpuInfo(torch.cuda.get_device_name(index),
                    torch.cuda.get_device_properties(index).total_memory / 1024**3)
            for index in range(torch.cuda.device_count())]


def describe_devices() -> str:
    """One line for the user: the GPU that "auto" will use, or why the CPU will be used."""
    if not torch_installed():
        return "PyTorch is not installed yet: it will be installed on first use."
    gpus = cuda_gpus()
    if not gpus:
        return "No CUDA GPU found: detection runs on the CPU, more slowly than on a GPU."
    first = gpus[0]
    more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
    return f"GPU: {first.name}, {first.memory_gb:.0f} GB{more}"
