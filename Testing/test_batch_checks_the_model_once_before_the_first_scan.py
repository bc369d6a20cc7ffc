"""Batch (issue 13): the model bundle is loaded once before the first scan, so a damaged bundle stops
the batch at once with its own message (exit 2, no scores.csv) instead of failing every scan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PositionRegressionADLib import batch


def _scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("head_a", "head_b"):
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 9, 10), np.int16)), str(folder / f"{name}.nii.gz"))
    return folder


def test_a_damaged_bundle_stops_the_batch_before_the_first_scan(tiny_bundle, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_bundle, damaged)
    weights = damaged / "weights.pt"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short by a copy
    output = tmp_path / "out"

    code = batch.main(["--input", str(_scans(tmp_path)), "--output", str(output), "--model", str(damaged)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: The file weights.pt of the model bundle") and "corrupt or truncated" in err, err
    assert err.count("weights.pt") == 1 and "Traceback" not in err
    assert not output.exists()  # no scan was started, no scores.csv


def test_a_sound_bundle_passes_the_check(tiny_bundle):
    batch.check_model(tiny_bundle)
