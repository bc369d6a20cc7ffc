"""``python -m ppr calibrate`` on real dev scans with a tiny untrained bundle: the calibration lands
in the bundle, the bundle stays valid, and unusable calibration sets are refused plainly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ppr.__main__ import main
from ppr.workflows.bundle import load_bundle, save_bundle, sha256_file
from ppr.config import PreprocessConfig
from ppr.networks.network import PPRNet
from ppr.image.preprocess import prepare_reference

CONFIG = PreprocessConfig(size=64, spacing_mm=4.0, prewindowed=True)
HEALTHY = ("ctich_056", "ctich_057", "ctich_100")


def small_copy(source: Path, target: Path) -> Path:
    """The scan at a quarter of its in-plane resolution (1.8 mm): real anatomy, 16x fewer voxels."""
    sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(source)), [4, 4, 1]), str(target))
    return target


@pytest.fixture(scope="module")
def tiny_bundle(dev_data_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("calibrate")
    reference = prepare_reference(sitk.ReadImage(str(dev_data_dir / "ctich_054.nii.gz")), CONFIG)
    torch.manual_seed(0)
    return save_bundle(folder / "bundle", PPRNet(m=2, patch_size=29), CONFIG, reference, {"cases": ["ctich_054"]})


def _calibrate(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m ppr calibrate ...`` in this process (same parser, same exit codes, no torch re-import)."""
    code = main(["calibrate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_calibration_is_written_into_the_bundle_and_checksummed(tiny_bundle: Path, dev_data_dir: Path,
                                                                tmp_path: Path, capsys) -> None:
    images = [str(small_copy(dev_data_dir / f"{name}.nii.gz", tmp_path / f"{name}.nii.gz")) for name in HEALTHY]
    code, out, err = _calibrate(capsys, str(tiny_bundle), *images, "--device", "cpu", "--json", "--progress")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n_scans"] == 3 and report["case_names"] == list(HEALTHY)
    assert report["grid_shape"] == [64, 64, 64] and report["factor"] == 4
    assert "PROGRESS 1.000" in err
    checksums = json.loads((tiny_bundle / "checksums.json").read_text())["files"]
    assert checksums["calibration.npz"] == sha256_file(tiny_bundle / "calibration.npz")
    bundle = load_bundle(tiny_bundle)  # would raise if any checksum were stale
    calibration = bundle.calibration
    assert calibration.n_scans == 3 and calibration.grid_shape == (64, 64, 64)
    assert calibration.median_mm.shape == (16, 16, 16)
    assert np.isfinite(calibration.median_mm).all() and calibration.spread_mm.min() >= 0.5
    assert calibration.overlay_threshold_z == pytest.approx(report["overlay_threshold_z"])
    assert 1.0 < calibration.overlay_threshold_z < 20.0


def test_training_scans_and_too_few_scans_are_refused(tiny_bundle: Path, dev_data_dir: Path, capsys) -> None:
    images = [str(dev_data_dir / f"{name}.nii.gz") for name in ("ctich_054", *HEALTHY[:2])]
    code, _, err = _calibrate(capsys, str(tiny_bundle), *images)
    assert code == 2 and err.startswith("error: ")
    assert "trained on ctich_054" in err and "held-out" in err
    code, _, err = _calibrate(capsys, str(tiny_bundle), *images[1:])
    assert code == 2 and "at least 3 healthy scans" in err
    zipped = save_bundle(tiny_bundle.parent / "bundle.zip", PPRNet(m=2, patch_size=29), CONFIG,
                         load_bundle(tiny_bundle).reference, {})
    code, _, err = _calibrate(capsys, str(zipped), *images[1:], str(dev_data_dir / "ctich_100.nii.gz"))
    assert code == 2 and "unzip it into a folder" in err
    code, _, err = _calibrate(capsys, str(tiny_bundle), *images[1:], images[1])
    assert code == 2 and "given twice: ctich_056" in err
