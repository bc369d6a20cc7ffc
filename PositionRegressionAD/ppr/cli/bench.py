"""``python -m ppr bench``: measured speed and memory of inference and training (one JSON object).

What it measures, on a synthetic head-like volume (an ellipsoid head of realistic head fraction,
~16 % of the grid, with a bright skull and textured inside) and a PPRNet with random weights (speed
does not depend on the weights; ``--model`` uses a bundle's network instead):

- ``dense_vs_patches_speedup``: the same voxels, a block of B^3 head voxels (default 16^3 = 4096):
  the patches path runs one 31^3 patch per voxel (batched), the dense path runs the one tile that
  covers the block (B^3 outputs plus its 15-voxel halo). Ratio of the two wall times, and
  ``dense_max_abs_diff``: the largest difference of their predicted positions (normalised units).
- ``full_res_seconds``: the whole error map of an N^3 volume (default 256), every head voxel;
  ``stride4_seconds``: the stride-4 preview; ``peak_memory_mb``: the largest resident memory of the
  process during the full-resolution map (CPU) or the CUDA peak allocation (GPU).
- ``*_cpu_seconds``: process CPU time of the same runs, and ``load_average_1min`` at the start:
  on a shared machine wall time depends on the other jobs; CPU time much less.
- ``train_patches_per_second``: sampled (batch 256 patches) and dense (one 64^3 crop per step)
  training steps on a 128^3 synthetic volume.

``--detect SCAN`` (with ``--model``) measures the whole detection of a real scan at ``--detect-stride``
(default 4, the preview), ``detection``: wall and CPU seconds and peak process memory, once with the
bundle as it is (its shown map: the anomaly map when it carries an intensity atlas) and once with
the position z-map only (the atlas left out), each after one warm-up, and the ratio of their CPU times.

``--method ae`` measures the paper's comparison with the autoencoder baseline instead, on the
same synthetic head at ``--size`` (a multiple of 16), both networks of width ``--m`` with random
weights (``--model`` does not apply):

- ``training_peak_memory_mb``: ``ppr_sampled`` (``--ppr-batch`` patches per step, the paper's 256),
  ``ppr_dense`` (``--crops`` crops of ``--crop``^3 positions) and ``ae`` (``--volumes-per-step``
  whole volumes, the paper's 4): CUDA peak allocation on a GPU, peak process RSS on the CPU (RSS
  also counts what earlier parts left allocated: ``rss_start_mb`` says how much that was);
  ``training_seconds_per_step`` of the same ``--train-steps`` steps.
- ``inference_seconds_per_volume``: ``ppr`` (the full-resolution dense error map) and ``ae`` (the
  reconstruction and its post-filter, ``ae_post_filter``), after one warm-up each, with
  ``inference_peak_memory_mb``.

Timing code lives here because it is only ever used by this command; it prints figures and
asserts nothing. Everything is measured, nothing is extrapolated.
"""

from __future__ import annotations

import argparse
import json
import gc
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from ppr.networks.autoencoder import AutoEncoder3D, check_grid, residual_map
from ppr.networks.inference import InferenceOptions, dense_forward, error_map, inference_network, patch_positions, resolve_device
from ppr.networks.network import PPRNet


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--size", type=int, default=256, help="grid edge N of the error map runs (default 256)")
    parser.add_argument("--m", type=int, default=16, help="network width (default 16)")
    parser.add_argument("--model", help="use this bundle's network instead of random weights")
    parser.add_argument("--tile", type=int, default=128, help="dense tile edge (default 128)")
    parser.add_argument("--block", type=int, default=16, help="edge of the voxel block of the speedup (multiple of 4)")
    parser.add_argument("--skip-full", action="store_true", help="skip the full-resolution map (the slowest part)")
    parser.add_argument("--skip-training", action="store_true", help="skip the training throughput")
    parser.add_argument("--method", choices=("ppr", "ae"), default="ppr",
                        help="ppr: PPR inference and training speed (default); ae: PPR vs the autoencoder "
                             "baseline, training memory and inference time per volume")
    parser.add_argument("--ppr-batch", type=int, default=256, help="ae comparison: PPR patches per sampled step")
    parser.add_argument("--crop", type=int, default=64, help="ae comparison: PPR dense crop edge")
    parser.add_argument("--crops", type=int, default=1, help="ae comparison: PPR dense crops per step")
    parser.add_argument("--volumes-per-step", type=int, default=4, help="ae comparison: AE volumes per step")
    parser.add_argument("--train-steps", type=int, default=2, help="ae comparison: training steps measured")
    parser.add_argument("--detect", metavar="SCAN", help="with --model: time the whole detection of this scan, "
                        "with and without the bundle's anomaly map")
    parser.add_argument("--detect-stride", type=int, choices=(1, 2, 4), default=4, help="stride of --detect (default 4)")
    parser.add_argument("--json", action="store_true", help="print the JSON object only")


def synthetic_head_volume(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Intensities in [0, 1] and head mask of an ellipsoid head with skull and texture (z, y, x)."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    radius = np.sqrt((z / 0.38) ** 2 + (y / 0.33) ** 2 + (x / 0.30) ** 2)
    head = radius < 1.0
    texture = 0.45 + 0.15 * np.sin(40 * z) * np.cos(33 * y) + 0.1 * np.sin(27 * x)
    volume = np.where(head, texture + 0.05 * rng.random((size,) * 3, dtype=np.float32), 0.0)
    volume = np.where(head & (radius > 0.88), 1.0, volume).astype(np.float32)
    return volume, head


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Peak memory in MB during the block: CUDA peak allocation, or sampled process RSS on the CPU."""
    result: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        yield result
        result["mb"] = torch.cuda.max_memory_allocated() / 2**20
        return
    peak = [_rss_mb()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], _rss_mb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        done.set()
        sampler.join()
        result["mb"] = max(peak[0], _rss_mb())


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _synchronised(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def speedup_on_block(net: PPRNet, volume: np.ndarray, block: int, device: torch.device) -> dict[str, float]:
    """Patches vs dense on the same block of block^3 voxels at the centre of the head."""
    plain = inference_network(net, device)
    half = plain.patch_size // 2
    start = np.asarray(volume.shape) // 2 - block // 2
    padded = torch.from_numpy(np.pad(volume, half))
    grid = np.stack(np.meshgrid(*[np.arange(s, s + block) for s in start], indexing="ij"), axis=-1).reshape(-1, 3)
    tile = padded[tuple(slice(s, s + block + 2 * half) for s in start)][None, None].to(device)
    with torch.inference_mode():
        dense_forward(plain, tile, 1)  # warm-up: first calls pick convolution algorithms
        patch_positions(plain, padded, grid[:64], 64, device)
        started, cpu_started = _synchronised(device), time.process_time()
        dense = dense_forward(plain, tile, 1)
        dense_s, dense_cpu = _synchronised(device) - started, time.process_time() - cpu_started
        started, cpu_started = _synchronised(device), time.process_time()
        patches = patch_positions(plain, padded, grid, 256, device)
        patches_s, patches_cpu = _synchronised(device) - started, time.process_time() - cpu_started
    dense = dense[0].float().cpu().numpy().reshape(3, -1).T
    return {"voxels": int(len(grid)), "patches_seconds": patches_s, "dense_seconds": dense_s,
            "patches_cpu_seconds": patches_cpu, "dense_cpu_seconds": dense_cpu,
            "dense_vs_patches_speedup": patches_s / dense_s,
            "dense_max_abs_diff": float(np.abs(dense - patches).max())}


def timed_error_map(net: PPRNet, volume: np.ndarray, head: np.ndarray, stride: int, tile: int,
                    device: torch.device) -> dict[str, float]:
    options = InferenceOptions("dense", stride, device.type, tile)
    with peak_memory(device) as memory:
        started, cpu_started = _synchronised(device), time.process_time()
        error_map(volume, head, net, 1.0, options)
        seconds, cpu_seconds = _synchronised(device) - started, time.process_time() - cpu_started
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_memory_mb": memory["mb"]}


def training_throughput(m: int, device: torch.device) -> dict[str, float]:
    """Patches (positions) per second of training steps, both modes, on a 128^3 synthetic head."""
    # here: training imports SimpleITK, which a bare GPU machine may lack
    from ppr.networks.training import TrainConfig, TrainingVolume, train

    volume, head = synthetic_head_volume(128)
    volumes = [TrainingVolume("synthetic", volume, head)]
    rates = {}
    for mode, steps in (("sampled", 4), ("dense", 6)):
        config = TrainConfig(steps=steps, m=m, mode=mode, batch=256, crop=64, crops=1, device=device.type)
        warm = train(volumes, TrainConfig(**{**config.to_dict(), "steps": 1}))
        del warm
        rates[mode] = train(volumes, config).patches_per_second
    return rates


def _free(device: torch.device) -> None:
    """Release what the previous measurement left, so the next peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def training_memory(config: "TrainConfig", volumes: list, device: torch.device) -> dict[str, float]:  # noqa: F821
    """Peak memory and seconds per step of ``config.steps`` training steps from a fresh network."""
    from ppr.networks.training import train  # here: see training_throughput

    _free(device)
    start = _rss_mb()
    with peak_memory(device) as memory:
        result = train(volumes, config)
    seconds = result.seconds / max(result.steps, 1)
    del result
    _free(device)
    return {"peak_memory_mb": memory["mb"], "rss_start_mb": start, "seconds_per_step": seconds}


def ae_comparison(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """PPR vs the autoencoder: training memory at the paper's batch sizes, inference per volume."""
    from ppr.networks.training import TrainConfig, TrainingVolume  # here: see training_throughput

    ae = AutoEncoder3D(m=args.m)
    check_grid((args.size,) * 3, ae.stride)
    volume, head = synthetic_head_volume(args.size)
    volumes = [TrainingVolume(f"synthetic{i}", volume, head) for i in range(args.volumes_per_step)]
    common = {"steps": args.train_steps, "m": args.m, "device": device.type, "val_every": 10**6}
    configs = {
        "ppr_sampled": TrainConfig(mode="sampled", batch=args.ppr_batch, **common),
        "ppr_dense": TrainConfig(mode="dense", crop=args.crop, crops=args.crops, **common),
        "ae": TrainConfig(method="ae", volumes_per_step=args.volumes_per_step, **common),
    }
    training = {name: training_memory(config, volumes, device) for name, config in configs.items()}
    report: dict[str, object] = {
        "training_peak_memory_mb": {name: t["peak_memory_mb"] for name, t in training.items()},
        "training_rss_start_mb": {name: t["rss_start_mb"] for name, t in training.items()},
        "training_seconds_per_step": {name: t["seconds_per_step"] for name, t in training.items()},
        "training_batch": {"ppr_sampled": f"{args.ppr_batch} patches",
                           "ppr_dense": f"{args.crops} crops of {args.crop}^3 positions",
                           "ae": f"{args.volumes_per_step} volumes of {args.size}^3"},
    }
    post_filter = "erosion"
    try:
        import scipy.ndimage  # noqa: F401 - a bare GPU machine may lack SciPy: time the network alone
    except ImportError:
        post_filter = "none"
    torch.manual_seed(0)
    ppr_net = PPRNet(m=args.m)
    timed_error_map(ppr_net, volume, head, 4, args.tile, device)  # warm-up (algorithm choice)
    ppr = timed_error_map(ppr_net, volume, head, 1, args.tile, device)
    residual_map(volume, head, ae, post_filter, device)  # warm-up
    _free(device)
    with peak_memory(device) as memory:
        started, cpu_started = _synchronised(device), time.process_time()
        residual_map(volume, head, ae, post_filter, device)
        ae_seconds, ae_cpu = _synchronised(device) - started, time.process_time() - cpu_started
    report.update({
        "inference_seconds_per_volume": {"ppr": ppr["seconds"], "ae": ae_seconds},
        "inference_cpu_seconds_per_volume": {"ppr": ppr["cpu_seconds"], "ae": ae_cpu},
        "inference_peak_memory_mb": {"ppr": ppr["peak_memory_mb"], "ae": memory["mb"]},
        "ae_post_filter": post_filter,
        "parameters": {"ppr": sum(p.numel() for p in ppr_net.parameters()),
                       "ae": sum(p.numel() for p in ae.parameters())},
    })
    return report


def detection_cost(bundle_path: str, scan: str, stride: int, device: torch.device) -> dict[str, object]:
    """Whole detection of ``scan``, with the bundle's shown map and with the position z-map only."""
    import dataclasses  # here: detection brings SimpleITK, which the network figures do not need

    from ppr.image.imageio import read_image
    from ppr.workflows.bundle import load_bundle
    from ppr.workflows.detection import DetectOptions, detect

    bundle = load_bundle(bundle_path)
    image = read_image(scan)
    options = DetectOptions(stride=stride, device=device.type)
    figures: dict[str, object] = {"scan": scan, "stride": stride}
    for name, variant in (("position_z_only", dataclasses.replace(bundle, intensity_atlas=None)),
                          ("as_shipped", bundle)):
        detect(image, variant, options)  # warm-up: reference masks, convolution algorithms
        gc.collect()
        with peak_memory(device) as memory:
            started, cpu_started = _synchronised(device), time.process_time()
            result = detect(image, variant, options)
            seconds, cpu = _synchronised(device) - started, time.process_time() - cpu_started
        figures[name] = {"seconds": seconds, "cpu_seconds": cpu, "peak_memory_mb": memory["mb"],
                         "shown_map": result.shown_map,
                         "anomaly_map_seconds": result.seconds.get("anomaly_map", 0.0)}
    figures["cpu_ratio"] = figures["as_shipped"]["cpu_seconds"] / figures["position_z_only"]["cpu_seconds"]
    return figures


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    if args.detect and not args.model:
        raise SystemExit("error: --detect needs --model BUNDLE")
    torch.manual_seed(0)
    if args.method == "ae":
        return _print(args, {**_describe(device, args), **ae_comparison(args, device)})
    if args.model:
        from ppr.workflows.bundle import load_bundle  # here: bundles bring SimpleITK, see training_throughput

        net = load_bundle(args.model).network
    else:
        net = PPRNet(m=args.m)
    report: dict[str, object] = {**_describe(device, args), "m": net.m}
    volume, head = synthetic_head_volume(args.size)
    report["head_fraction"] = float(head.mean())
    block = speedup_on_block(net, volume, args.block, device)
    report.update({"dense_vs_patches_speedup": block["dense_vs_patches_speedup"],
                   "dense_max_abs_diff": block["dense_max_abs_diff"], "speedup_block": block})
    preview = timed_error_map(net, volume, head, 4, args.tile, device)
    report["stride4_seconds"] = preview["seconds"]
    report["stride4_cpu_seconds"] = preview["cpu_seconds"]
    report["stride4_peak_memory_mb"] = preview["peak_memory_mb"]
    if not args.skip_full:
        full = timed_error_map(net, volume, head, 1, args.tile, device)
        report["full_res_seconds"] = full["seconds"]
        report["full_res_cpu_seconds"] = full["cpu_seconds"]
        report["peak_memory_mb"] = full["peak_memory_mb"]
    if not args.skip_training:
        report["train_patches_per_second"] = training_throughput(net.m, device)
    if args.detect:
        report["detection"] = detection_cost(args.model, args.detect, args.detect_stride, device)
    return _print(args, report)


def _describe(device: torch.device, args: argparse.Namespace) -> dict[str, object]:
    """Where and with what the figures were measured."""
    return {"load_average_1min": os.getloadavg()[0], "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()), "m": args.m, "size": args.size, "tile": args.tile,
            "method": args.method}


def _print(args: argparse.Namespace, report: dict[str, object]) -> int:
    if not args.json:
        for key, value in report.items():
            print(f"{key}: {value}")
    print(json.dumps(report))
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
