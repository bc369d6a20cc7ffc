"""Training on model-space arrays: patches come from the head, runs repeat, a resumed run is the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ppr.errors import PPRError
from ppr.networks.training import TrainConfig, TrainingVolume, _PaddedVolume, dense_crop, sample_centres, sampled_batch, train

N = 24


def synthetic_volume(seed: int, name: str = "") -> TrainingVolume:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[(np.arange(N) + 0.5) / N - 0.5] * 3, indexing="ij")
    head = (z / 0.4) ** 2 + (y / 0.35) ** 2 + (x / 0.3) ** 2 < 1
    volume = np.where(head, 0.5 + 0.3 * np.sin(9 * z) * np.cos(7 * y) + 0.1 * rng.random(head.shape), 0.0)
    return TrainingVolume(name or f"case{seed}", volume.astype(np.float32), head)


@pytest.fixture(scope="module")
def volumes() -> list[TrainingVolume]:
    return [synthetic_volume(0), synthetic_volume(1)]


def tiny_config(mode: str, steps: int) -> TrainConfig:
    return TrainConfig(steps=steps, m=2, batch=6, mode=mode, crop=8, crops=2, val_patches=16, val_every=2,
                       device="cpu", seed=7)


def test_patch_centres_are_head_voxels_and_patches_are_centred_on_them(volumes) -> None:
    padded = _PaddedVolume(volumes[0], 15)
    rng = np.random.default_rng(0)
    centres = sample_centres(padded, 500, rng)
    assert volumes[0].head_mask[tuple(centres.T)].all()
    patches, targets = sampled_batch(padded, 20, 31, np.random.default_rng(1))
    assert patches.shape == (20, 1, 31, 31, 31)
    again = sample_centres(padded, 20, np.random.default_rng(1))
    assert np.allclose(patches[:, 0, 15, 15, 15].numpy(), volumes[0].volume[tuple(again.T)])
    assert np.allclose(targets[:, :, 0, 0, 0].numpy(), (again + 0.5) / N)


def test_dense_crop_weights_are_the_head_at_stride_4_centres(volumes) -> None:
    padded = _PaddedVolume(volumes[1], 15)
    block, targets, weights = dense_crop(padded, 8, 31, np.random.default_rng(3))
    assert block.shape == (1, 1, 38, 38, 38)
    assert targets.shape == (1, 3, 2, 2, 2) and weights.shape == (1, 2, 2, 2)
    centres = np.rint(targets[0].numpy() * N - 0.5).astype(int)  # (3, 2, 2, 2) voxel indices
    assert np.array_equal(weights[0].numpy(), volumes[1].head_mask[tuple(centres)])
    # Crop outputs 4 voxels apart: the positions step by 4 / N.
    assert np.allclose(np.diff(targets[0, 0, :, 0, 0].numpy()), 4 / N)


@pytest.mark.parametrize("mode", ["sampled", "dense"])
def test_same_seed_gives_the_same_run(volumes, mode) -> None:
    first = train(volumes, tiny_config(mode, 3), volumes[:1])
    second = train(volumes, tiny_config(mode, 3), volumes[:1])
    assert [r["loss"] for r in first.log] == [r["loss"] for r in second.log]
    assert first.final_val_loss == second.final_val_loss
    assert first.log[-1]["val_loss"] is not None and first.log[1]["val_loss"] is not None


@pytest.mark.parametrize("mode", ["sampled", "dense"])
def test_a_resumed_run_ends_where_an_uninterrupted_run_ends(volumes, mode, tmp_path: Path) -> None:
    straight = train(volumes, tiny_config(mode, 4), volumes[:1])
    checkpoint = tmp_path / "checkpoint.pt"
    train(volumes, tiny_config(mode, 2), volumes[:1], checkpoint=checkpoint)
    resumed = train(volumes, tiny_config(mode, 4), volumes[:1], checkpoint=checkpoint, resume=True)
    assert resumed.steps == 4
    assert [r["loss"] for r in resumed.log] == pytest.approx([r["loss"] for r in straight.log], abs=1e-6)
    for key, value in straight.network.state_dict().items():
        assert torch.allclose(value, resumed.network.state_dict()[key], atol=1e-6), key


def test_resuming_with_other_settings_is_refused(volumes, tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.pt"
    train(volumes, tiny_config("sampled", 1), checkpoint=checkpoint)
    with pytest.raises(PPRError, match="mode"):
        train(volumes, tiny_config("dense", 2), checkpoint=checkpoint, resume=True)


def test_stops_at_the_time_limit_when_no_steps_are_given(volumes) -> None:
    config = TrainConfig(max_minutes=0.02, m=2, batch=4, device="cpu")
    result = train(volumes, config)
    assert result.seconds >= 0.02 * 60
    assert result.steps == len(result.log) >= 1


def test_a_scan_without_head_is_a_user_error() -> None:
    empty = TrainingVolume("empty", np.zeros((N, N, N), np.float32), np.zeros((N, N, N), bool))
    with pytest.raises(PPRError, match="empty head mask"):
        train([empty], tiny_config("sampled", 1))


def test_dense_crops_on_a_small_grid_reach_every_phase_of_the_stride(volumes) -> None:
    padded = _PaddedVolume(volumes[0], 15)
    rng = np.random.default_rng(5)
    phases = set()
    for _ in range(40):
        _, targets, _ = dense_crop(padded, 64, 31, rng)  # larger than the 24^3 grid
        phases.add(int(round(float(targets[0, 0, 0, 0, 0]) * N - 0.5)) % 4)
    assert phases == {0, 1, 2, 3}
