"""Training on a few real healthy dev CTs (coarse grid) lowers the loss on held-out healthy CTs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ppr.workflows.bundle import load_bundle
from ppr.config import PreprocessConfig
from ppr.networks.training import TrainConfig
from ppr.workflows.train import train_bundle

TRAIN_CASES = ("ctich_054", "ctich_056", "ctich_100")
VALIDATION_CASES = ("ctich_057",)
COARSE = PreprocessConfig(size=64, spacing_mm=4.0, prewindowed=True)
STEPS = 60


@pytest.mark.slow
def test_training_lowers_validation_loss_and_writes_a_loadable_bundle(dev_data_dir: Path, tmp_path: Path) -> None:
    config = TrainConfig(steps=STEPS, m=4, mode="dense", crop=32, crops=2, val_every=30, val_patches=256,
                         device="cpu", seed=0)
    out = tmp_path / "model"
    path, result = train_bundle([dev_data_dir / f"{c}.nii.gz" for c in TRAIN_CASES], out, COARSE, config,
                                validation_images=[dev_data_dir / f"{c}.nii.gz" for c in VALIDATION_CASES])
    assert result.steps == STEPS
    assert result.initial_val_loss is not None and result.final_val_loss is not None
    # Positions are in [0, 1]: the untrained net is off by ~0.4 of the grid; training must cut that.
    assert result.final_val_loss < 0.85 * result.initial_val_loss
    bundle = load_bundle(path)
    assert bundle.info["training"]["cases"] == list(TRAIN_CASES)
    assert bundle.info["training"]["final_val_loss"] == pytest.approx(result.final_val_loss)
    log = json.loads((path / "training_log.json").read_text())
    assert [r["step"] for r in log["steps"]] == list(range(1, STEPS + 1))
    assert [r["step"] for r in log["steps"] if r.get("val_loss") is not None] == [30, 60]
    # Preprocessed volumes are cached beside the bundle for the next run.
    assert len(list((tmp_path / "model.cache" / "volumes").glob("*.npz"))) == 4
