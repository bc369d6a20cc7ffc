"""scripts/train-from-pack.py: training steps from a pack of model-space volumes (the GPU-machine
route), and the checkpoint it leaves records the steps and the device they ran on."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import torch


def _head(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    axis = np.arange(size) - size / 2 + 0.5
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    head = (z / (0.42 * size)) ** 2 + (y / (0.38 * size)) ** 2 + (x / (0.35 * size)) ** 2 < 1.0
    volume = np.where(head, 0.4 + 0.2 * np.sin(z / 3.0) * np.cos(x / 4.0) + 0.05 * rng.random(head.shape), 0.0)
    return volume.astype(np.float32), head.astype(np.uint8)


def test_the_pack_trains_and_the_checkpoint_says_where(tmp_path, repo_root):
    arrays = {}
    for index, name in enumerate(("train_a", "train_b", "val_a")):
        volume, head = _head(36, index)
        arrays[f"{name}__volume"], arrays[f"{name}__head_mask"] = volume, head
    pack = tmp_path / "pack.npz"
    np.savez_compressed(pack, train=np.array(["train_a", "train_b"]), validation=np.array(["val_a"]), **arrays)
    checkpoint = tmp_path / "out" / "checkpoint.pt"

    completed = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "train-from-pack.py"), "train", str(pack),
         "--checkpoint", str(checkpoint), "--steps", "3", "--m", "2", "--crop", "8", "--crops", "1",
         "--val-every", "3", "--device", "cpu", "--threads", "1"],
        capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["step"] == 3 and saved["cases"] == ["train_a", "train_b"]
    assert saved["devices"] == ["cpu"]
    assert saved["log"][-1]["val_loss"] is not None and np.isfinite(saved["log"][-1]["val_loss"])
