"""The training report: loss curves PNG and a JSON summary beside the bundle, from training_log.json."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppr.errors import PPRError
from PPRTrainingLib.report import find_training_log, read_training_log, write_training_report


def synthetic_log(steps: int, val_every: int | None, seed: int = 0) -> list[dict]:
    """Records shaped like ppr.networks.training.train's log: a noisy decreasing loss, validation every few
    steps with a minimum (val_loss None at the end without validation scans, as ppr writes it)."""
    rng = np.random.default_rng(seed)
    records = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": 0.3 / (1 + step / 50) * (1 + 0.2 * rng.random()), "seconds": 0.5 * step}
        if val_every and step % val_every == 0:
            record["val_loss"] = 0.2 + 0.1 * (step / steps - 0.6) ** 2
        records.append(record)
    if not val_every:
        records[-1]["val_loss"] = None
    return records


def log_file_content(records: list[dict], cases: int = 3, validation_cases: int = 1) -> dict:
    """The training_log.json layout of ppr.workflows.train.write_training_log."""
    return {"config": {"m": 4, "steps": len(records)}, "cases": [f"case{i}" for i in range(cases)],
            "validation_cases": [f"val{i}" for i in range(validation_cases)], "steps": records}


def write_bundle(tmp_path: Path, records: list[dict], where: str = "inside") -> Path:
    bundle = tmp_path / "models" / "my_model"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    log_dir = {"inside": bundle, "cache": bundle.parent / "my_model.cache", "beside": bundle.parent}[where]
    log_dir.mkdir(exist_ok=True)
    (log_dir / "training_log.json").write_text(json.dumps(log_file_content(records)))
    return bundle


def test_report_summary_matches_the_log(tmp_path: Path) -> None:
    log = synthetic_log(steps=400, val_every=50)
    bundle = write_bundle(tmp_path, log)
    report = write_training_report(bundle)

    losses = np.array([r["loss"] for r in log])
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    best_step, best = min(val, key=lambda item: item[1])
    summary = json.loads(report.summary_file.read_text())
    assert summary == report.summary
    assert summary["steps"] == 400 and summary["seconds"] == pytest.approx(200.0)
    assert summary["training_scans"] == 3 and summary["validation_scans"] == 1
    assert summary["first_loss"] == pytest.approx(losses[:20].mean())
    assert summary["final_loss"] == pytest.approx(losses[-40:].mean())
    assert summary["loss_reduction"] == pytest.approx(1 - losses[-40:].mean() / losses[:20].mean())
    assert summary["validation"] == pytest.approx(
        {"first": val[0][1], "final": val[-1][1], "best": best, "best_step": best_step, "evaluations": 8}
    )
    assert best_step == 250  # the synthetic minimum sits at 60 % of the run


def test_report_files_sit_beside_the_bundle_not_inside(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, synthetic_log(steps=100, val_every=None))
    before = sorted(p.name for p in bundle.iterdir())
    report = write_training_report(bundle)
    assert report.figure == bundle.parent / "my_model_training_loss.png"
    assert report.summary_file == bundle.parent / "my_model_training_report.json"
    assert sorted(p.name for p in bundle.iterdir()) == before  # the bundle's checksums stay valid
    assert report.summary["validation"] is None


def test_loss_curve_figure_is_drawn(tmp_path: Path) -> None:
    report = write_training_report(write_bundle(tmp_path, synthetic_log(steps=300, val_every=30)))
    with Image.open(report.figure) as image:
        assert image.format == "PNG" and image.size == (700, 400)
        pixels = np.asarray(image.convert("RGB")).astype(int)
    # Blue training curve and orange validation curve are both on the canvas.
    blue = (pixels[..., 2] > 150) & (pixels[..., 0] < 100)
    orange = (pixels[..., 0] > 200) & (pixels[..., 1] > 100) & (pixels[..., 1] < 170) & (pixels[..., 2] < 80)
    assert blue.sum() > 200 and orange.sum() > 50


@pytest.mark.parametrize("key", ["steps", "log"])
def test_log_records_under_a_key_are_read(tmp_path: Path, key: str) -> None:
    path = tmp_path / "training_log.json"
    path.write_text(json.dumps({"config": {"m": 4}, key: synthetic_log(steps=5, val_every=None)}))
    log = read_training_log(path)
    assert log.steps.tolist() == [1, 2, 3, 4, 5] and len(log.val_loss) == 0


@pytest.mark.parametrize(("where", "expected"), [
    ("inside", "my_model/training_log.json"), ("cache", "my_model.cache/training_log.json"),
    ("beside", "training_log.json"),
])
def test_training_log_of_a_bundle_folder_is_found(tmp_path: Path, where: str, expected: str) -> None:
    bundle = write_bundle(tmp_path, synthetic_log(steps=10, val_every=None), where)
    assert find_training_log(bundle) == bundle.parent / expected


def test_report_of_a_zipped_bundle_reads_the_log_inside(tmp_path: Path) -> None:
    records = synthetic_log(steps=60, val_every=20)
    bundle = tmp_path / "my_model.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("my_model/weights.pt", b"0")
        archive.writestr("my_model/training_log.json", json.dumps(log_file_content(records)))
    report = write_training_report(bundle)
    assert report.figure == tmp_path / "my_model_training_loss.png" and report.figure.is_file()
    assert report.summary["steps"] == 60 and report.summary["validation"]["evaluations"] == 3


def test_missing_log_says_what_to_do(tmp_path: Path) -> None:
    bundle = tmp_path / "model"
    bundle.mkdir()
    with pytest.raises(PPRError, match="No training_log.json found"):
        write_training_report(bundle)


@pytest.mark.parametrize(("content", "message"), [("{not json", "cannot be read"), ("[]", "no training step"),
                                                   ('{"config": {}}', "no training step")])
def test_unusable_log_is_refused_with_a_message(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "training_log.json"
    path.write_text(content)
    with pytest.raises(PPRError, match=message):
        read_training_log(path)
