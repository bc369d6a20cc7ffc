"""Training the autoencoder baseline: the L1 goes down, validation is the L1 of the validation
volumes, checkpoints refuse a switch of method, and an AE bundle round-trips with its method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ppr.networks.autoencoder import AutoEncoder3D, reconstruct
from ppr.workflows.bundle import BundleError, load_bundle, save_bundle, write_checksums
from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.networks.network import PPRNet
from ppr.networks.training import TrainConfig, TrainingVolume, train
from ppr.workflows.train import train_bundle

GRID = 32


def _toy_volume(name: str, seed: int) -> TrainingVolume:
    """A textured ball in [0, 1] on a 32^3 grid (a model-space volume in miniature)."""
    rng = np.random.default_rng(seed)
    axis = (np.arange(GRID) + 0.5) / GRID - 0.5
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = np.sqrt(z**2 + (y / 0.9) ** 2 + (x / 0.8) ** 2)
    head = radius < 0.4
    texture = 0.5 + 0.2 * np.sin(20 * z + seed) * np.cos(15 * y) + 0.05 * rng.random(head.shape)
    volume = np.where(head, np.where(radius > 0.33, 1.0, texture), 0.0).astype(np.float32)
    return TrainingVolume(name, volume, head)


@pytest.fixture(scope="module")
def toy() -> list[TrainingVolume]:
    return [_toy_volume("a", 0), _toy_volume("b", 1), _toy_volume("c", 2)]


def _ae_config(**changes) -> TrainConfig:
    settings = dict(method="ae", steps=12, m=2, volumes_per_step=2, lr=3e-3, device="cpu", val_every=6, seed=0)
    settings.update(changes)
    return TrainConfig(**settings)


def test_training_steps_lower_the_l1_on_a_fixed_batch(toy: list[TrainingVolume]) -> None:
    torch.set_num_threads(2)
    # two training volumes and two per step: every step sees the same batch
    result = train(toy[:2], _ae_config())
    losses = [record["loss"] for record in result.log]
    assert len(losses) == 12 and result.steps == 12
    assert isinstance(result.network, AutoEncoder3D)
    assert np.mean(losses[-3:]) < 0.8 * losses[0]
    assert result.patches_per_second > 0  # volumes per second for the AE
    assert TrainConfig(method="ae", steps=1).rate_unit == "volumes"


def test_validation_loss_is_the_mean_l1_over_the_head_of_the_validation_volumes(toy: list[TrainingVolume]) -> None:
    result = train(toy[:2], _ae_config(steps=2, val_every=2), validation=toy[2:])
    expected = []
    for volume in toy[2:]:
        reconstruction = reconstruct(volume.volume, result.network, torch.device("cpu"))
        expected.append(np.abs(reconstruction - volume.volume)[volume.head_mask].mean())
    assert result.final_val_loss == pytest.approx(float(np.mean(expected)), rel=1e-4)
    assert result.initial_val_loss is not None and result.initial_val_loss != result.final_val_loss
    whole = train(toy[:2], _ae_config(steps=2, val_every=2, ae_loss="volume"), validation=toy[2:])
    expected_whole = np.abs(reconstruct(toy[2].volume, whole.network, torch.device("cpu")) - toy[2].volume).mean()
    assert whole.final_val_loss == pytest.approx(float(expected_whole), rel=1e-4)


def test_training_refuses_volumes_on_a_grid_the_autoencoder_cannot_reconstruct() -> None:
    odd = TrainingVolume("odd", np.zeros((40, 40, 40), np.float32), np.ones((40, 40, 40), bool))
    with pytest.raises(PPRError, match="multiples of 16"):
        train([odd], _ae_config(steps=1))
    with pytest.raises(PPRError, match="multiples of 16"):
        train_bundle([Path("never-read.nii.gz")], Path("never-written"), PreprocessConfig(size=40),
                     _ae_config(steps=1))


def test_resume_refuses_to_switch_method(toy: list[TrainingVolume], tmp_path: Path) -> None:
    ppr_checkpoint = tmp_path / "ppr.pt"
    train(toy[:1], TrainConfig(steps=1, m=2, patch_size=29, mode="sampled", batch=4, device="cpu"),
          checkpoint=ppr_checkpoint)
    with pytest.raises(PPRError, match="method='ppr', not 'ae'"):
        train(toy[:1], _ae_config(steps=2), checkpoint=ppr_checkpoint, resume=True)
    ae_checkpoint = tmp_path / "ae.pt"
    train(toy[:1], _ae_config(steps=1), checkpoint=ae_checkpoint)
    with pytest.raises(PPRError, match="method='ae', not 'ppr'"):
        train(toy[:1], TrainConfig(steps=2, m=2, patch_size=29, mode="sampled", batch=4, device="cpu"),
              checkpoint=ae_checkpoint, resume=True)


def test_resume_continues_an_autoencoder_run_exactly(toy: list[TrainingVolume], tmp_path: Path) -> None:
    straight = train(toy[:2], _ae_config(steps=4))
    checkpoint = tmp_path / "ae.pt"
    train(toy[:2], _ae_config(steps=2), checkpoint=checkpoint)
    resumed = train(toy[:2], _ae_config(steps=4), checkpoint=checkpoint, resume=True)
    assert [r["step"] for r in resumed.log] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in resumed.log], [r["loss"] for r in straight.log], rtol=1e-5)


def test_autoencoder_bundle_round_trips_with_its_method(tmp_path: Path) -> None:
    import SimpleITK as sitk

    config = PreprocessConfig(size=32, spacing_mm=7.5)
    reference = sitk.Image([32, 32, 32], sitk.sitkFloat32)
    reference.SetSpacing([7.5] * 3)
    torch.manual_seed(0)
    net = AutoEncoder3D(m=2)
    path = save_bundle(tmp_path / "ae", net, config, reference, {"method": "ae", "steps": 0})
    info = json.loads((path / "config.json").read_text())
    assert info["network"] == {"method": "ae", "m": 2, "levels": 4, "bottleneck": 2}
    bundle = load_bundle(path)
    assert isinstance(bundle.network, AutoEncoder3D) and not bundle.network.training
    assert (bundle.method, bundle.error_unit) == ("ae", "intensity")
    for name, tensor in net.state_dict().items():
        assert torch.equal(tensor, bundle.network.state_dict()[name]), name
    # a PPR bundle stays as it was: no method in its network entry, read as PPR
    ppr_path = save_bundle(tmp_path / "ppr", PPRNet(m=2, patch_size=29), config, reference, {})
    assert "method" not in json.loads((ppr_path / "config.json").read_text())["network"]
    assert (load_bundle(ppr_path).method, load_bundle(ppr_path).error_unit) == ("ppr", "mm")
    # an AE entry that lost its shape is refused for the user
    info["network"].pop("levels")
    (path / "config.json").write_text(json.dumps(info))
    write_checksums(path)
    with pytest.raises(BundleError, match="invalid config.json"):
        load_bundle(path)
