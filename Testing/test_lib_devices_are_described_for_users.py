"""The device line of the widget: which GPU "auto" uses, with its memory, or why the CPU is used."""

from __future__ import annotations

from PositionRegressionADLib.devices import GpuInfo, describe_devices, parse_nvidia_smi


def test_nvidia_smi_output_gives_names_and_memory_in_gb():
    text = "NVIDIA H100 80GB HBM3, 81559\nNVIDIA GeForce RTX 3060, 12288\n"
    assert parse_nvidia_smi(text) == [GpuInfo("NVIDIA H100 80GB HBM3", 81559 / 1024),
                                      GpuInfo("NVIDIA GeForce RTX 3060", 12.0)]
    assert parse_nvidia_smi("No devices were found\n") == []


def test_the_first_gpu_is_named_with_its_memory():
    line = describe_devices(has_torch=True, gpus=[GpuInfo("NVIDIA H100", 79.6), GpuInfo("NVIDIA H100", 79.6)])
    assert line == "GPU: NVIDIA H100, 80 GB (+1 more)."


def test_without_torch_the_user_learns_it_comes_on_first_use():
    assert describe_devices(has_torch=False, gpus=[GpuInfo("NVIDIA RTX A4000", 16.0)]) == (
        "GPU: NVIDIA RTX A4000, 16 GB. PyTorch will be installed on first use.")


def test_without_a_gpu_the_cpu_is_announced():
    assert describe_devices(has_torch=True, gpus=[]) == "No CUDA GPU found: detection runs on the CPU, more slowly."


def test_this_machine_is_described_without_error():
    # The CI machine has the CPU build of torch and no GPU.
    assert describe_devices().startswith(("No CUDA GPU found", "GPU: "))
