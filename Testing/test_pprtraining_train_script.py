"""PPRTraining/Scripts/train.py: folders in, `python -m ppr train` run, report written.

Run as a plain script (``python PPRTraining/Scripts/train.py``), the way a shell or Slicer's
--python-script runs it: the script must find its packages itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_dry_run_lists_the_scans_and_passes_unknown_options_to_ppr_train(repo_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "healthy"
    data.mkdir()
    for name in ("b.nii.gz", "a.nii.gz", "a_mask.nii.gz"):
        (data / name).write_bytes(b"")
    result = subprocess.run(
        [sys.executable, str(repo_root / "PPRTraining" / "Scripts" / "train.py"), "--",
         "--data", str(data), "--out", str(tmp_path / "bundle"), "--dry-run",
         "--steps", "30", "--window", "-20", "100", "--prewindowed"],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "2 training scan(s), 0 validation scan(s)"
    command = lines[1].split()
    assert command[1:4] == ["-m", "ppr", "train"]
    assert command[4:] == [
        str(data / "a.nii.gz"), str(data / "b.nii.gz"), "--out", str(tmp_path / "bundle"), "--progress",
        "--steps", "30", "--window", "-20", "100", "--prewindowed",
    ]


def test_missing_data_folder_is_a_user_error(repo_root: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "PPRTraining" / "Scripts" / "train.py"),
         "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: The data folder {tmp_path / 'nowhere'} does not exist: check the path."


def test_data_and_out_are_required(repo_root: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(repo_root / "PPRTraining" / "Scripts" / "train.py")],
        capture_output=True, text=True, timeout=60, cwd="/",
    )
    assert result.returncode == 2 and "--data" in result.stderr and "--out" in result.stderr


@pytest.mark.slow
def test_tiny_training_on_dev_cases_writes_a_bundle_and_its_report(dev_data_dir: Path, tmp_path: Path, repo_root: Path) -> None:
    train_dir, val_dir = tmp_path / "healthy", tmp_path / "validation"
    # Two dev cases: one to train on, one for the validation loss (preprocessing dominates the time).
    for folder, cases in ((train_dir, ["ctich_054"]), (val_dir, ["ctich_056"])):
        folder.mkdir()
        for case in cases:
            (folder / f"{case}.nii.gz").symlink_to(dev_data_dir / f"{case}.nii.gz")
    bundle = tmp_path / "models" / "tiny"
    result = subprocess.run(
        [sys.executable, str(repo_root / "PPRTraining" / "Scripts" / "train.py"),
         "--data", str(train_dir), "--val", str(val_dir), "--out", str(bundle),
         *TINY_TRAINING_ARGS],
        capture_output=True, text=True, timeout=170, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "%]" in result.stdout  # progress lines reached the script
    summary = json.loads((bundle.parent / "tiny_training_report.json").read_text())
    log = json.loads((bundle / "training_log.json").read_text())
    assert summary["steps"] == TINY_STEPS == len(log["steps"])
    assert (summary["training_scans"], summary["validation_scans"]) == (1, 1)
    assert summary["validation"]["evaluations"] == TINY_STEPS // 10
    assert summary["validation"]["final"] == log["steps"][-1]["val_loss"]
    assert (bundle.parent / "tiny_training_loss.png").stat().st_size > 10_000


TINY_STEPS = 10  # one validation (1024 patches) at the end: it costs as much as the steps
TINY_TRAINING_ARGS = ["--steps", str(TINY_STEPS), "--val-every", "10", "--size", "64", "--spacing", "4",
                      "--m", "4", "--mode", "sampled", "--batch", "16", "--prewindowed", "--seed", "0",
                      "--device", "cpu"]
