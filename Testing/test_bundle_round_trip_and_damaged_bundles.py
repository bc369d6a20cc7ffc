"""Model bundles: what is saved is what is loaded; a damaged bundle is refused with a clear message."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ppr.workflows.bundle import CALIBRATION, CHECKSUMS, CONFIG, FORMAT_VERSION, WEIGHTS, load_bundle, save_bundle, write_checksums
from ppr.config import PreprocessConfig
from ppr.errors import BundleError
from ppr.networks.network import PPRNet

CONFIG_SMALL = PreprocessConfig(size=32, spacing_mm=8.0, prewindowed=True)


def model_space_reference() -> sitk.Image:
    values = np.random.default_rng(0).uniform(-20, 100, (32, 32, 32)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((8.0, 8.0, 8.0))
    image.SetOrigin((-124.0, -110.5, 30.25))
    return image


@pytest.fixture()
def network() -> PPRNet:
    torch.manual_seed(0)
    net = PPRNet(m=2)
    net.train()
    with torch.no_grad():
        net(torch.rand(1, 1, 31, 31, 31))
    return net


@pytest.fixture()
def bundle_dir(tmp_path: Path, network: PPRNet) -> Path:
    log = tmp_path / "training_log.json"
    log.write_text(json.dumps({"steps": [{"step": 1, "loss": 0.3, "seconds": 1.0}]}))
    return save_bundle(tmp_path / "model", network, CONFIG_SMALL, model_space_reference(),
                       {"cases": ["a", "b"], "steps": 1}, {"training_log.json": log})


@pytest.mark.parametrize("name", ["model", "model.zip"])
def test_round_trip_keeps_weights_config_reference_and_outputs(tmp_path: Path, network: PPRNet, name: str) -> None:
    path = save_bundle(tmp_path / name, network, CONFIG_SMALL, model_space_reference(), {"cases": ["a"], "steps": 3})
    bundle = load_bundle(path)
    assert bundle.preprocess == CONFIG_SMALL
    assert bundle.info["training"] == {"cases": ["a"], "steps": 3}
    assert bundle.info["format_version"] == FORMAT_VERSION
    assert bundle.info["network"] == {"m": 2, "patch_size": 31}
    assert set(bundle.info["versions"]) >= {"ppr", "torch"}
    for key, value in network.state_dict().items():
        assert torch.equal(value, bundle.network.state_dict()[key]), key
    reference = model_space_reference()
    assert bundle.reference.GetSize() == reference.GetSize()
    assert np.allclose(bundle.reference.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    assert np.array_equal(sitk.GetArrayViewFromImage(bundle.reference), sitk.GetArrayViewFromImage(reference))
    patch = torch.rand(2, 1, 31, 31, 31)
    network.eval()
    with torch.no_grad():
        assert torch.equal(bundle.network(patch), network(patch))
    assert bundle.calibration is None


def test_every_file_is_checksummed(bundle_dir: Path) -> None:
    listed = json.loads((bundle_dir / CHECKSUMS).read_text())["files"]
    assert set(listed) == {"weights.pt", "config.json", "reference.nii.gz", "training_log.json"}


def test_truncated_weights_are_refused(bundle_dir: Path) -> None:
    weights = bundle_dir / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(BundleError, match="weights.pt .* corrupt or truncated"):
        load_bundle(bundle_dir)


def test_a_changed_byte_is_refused(bundle_dir: Path) -> None:
    reference = bundle_dir / "reference.nii.gz"
    data = bytearray(reference.read_bytes())
    data[len(data) // 2] ^= 0xFF
    reference.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="reference.nii.gz .* corrupt"):
        load_bundle(bundle_dir)


def test_a_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / CONFIG).unlink()
    with pytest.raises(BundleError, match="missing config.json"):
        load_bundle(bundle_dir)


def test_missing_checksums_are_refused(bundle_dir: Path) -> None:
    (bundle_dir / CHECKSUMS).unlink()
    with pytest.raises(BundleError, match="no checksums.json"):
        load_bundle(bundle_dir)


def test_a_newer_format_is_refused_with_update_advice(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / CONFIG).read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (bundle_dir / CONFIG).write_text(json.dumps(config))
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="newer than this software.*update the extension"):
        load_bundle(bundle_dir)


def test_weights_that_do_not_fit_the_described_network_are_refused(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / CONFIG).read_text())
    config["network"]["m"] = 4
    (bundle_dir / CONFIG).write_text(json.dumps(config))
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="do not fit the network"):
        load_bundle(bundle_dir)


def test_a_reference_off_the_model_grid_is_refused(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / CONFIG).read_text())
    config["preprocess"]["size"] = 48
    (bundle_dir / CONFIG).write_text(json.dumps(config))
    write_checksums(bundle_dir)
    with pytest.raises(BundleError, match="reference .* unusable"):
        load_bundle(bundle_dir)


def test_a_truncated_zip_is_refused(tmp_path: Path, network: PPRNet) -> None:
    path = save_bundle(tmp_path / "model.zip", network, CONFIG_SMALL, model_space_reference(), {})
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BundleError, match="not a readable zip file"):
        load_bundle(path)


def test_a_zip_of_the_bundle_folder_loads(bundle_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "zipped.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for file in bundle_dir.iterdir():
            zipped.write(file, arcname=f"model/{file.name}")
    assert load_bundle(archive).network.m == 2


def test_an_unlisted_calibration_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / CALIBRATION).write_bytes(b"not listed")
    with pytest.raises(BundleError, match="calibration.npz that its checksums.json does not list"):
        load_bundle(bundle_dir)


def test_no_bundle_at_the_path_says_how_to_get_one(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="No model bundle at .*python -m ppr train"):
        load_bundle(tmp_path / "nowhere")


def test_saving_over_a_bundle_replaces_it_completely(bundle_dir: Path, network: PPRNet) -> None:
    (bundle_dir / "stale.txt").write_text("left from before")
    save_bundle(bundle_dir, network, CONFIG_SMALL, model_space_reference(), {"steps": 9})
    assert not (bundle_dir / "stale.txt").exists()
    assert load_bundle(bundle_dir).info["training"] == {"steps": 9}
    assert not [p for p in bundle_dir.parent.iterdir() if p.name.startswith(".model.")]
    shutil.rmtree(bundle_dir)


def test_a_listed_calibration_is_loaded_with_the_bundle(bundle_dir: Path) -> None:
    from ppr.statistics.calibration import Calibration, CalibrationConfig, save_calibration

    median = np.full((8, 8, 8), 12.5, np.float32)
    calibration = Calibration(median, np.ones_like(median), (32, 32, 32), 3, ("a", "b", "c"), 3.1,
                              CalibrationConfig())
    save_calibration(calibration, bundle_dir / CALIBRATION)
    write_checksums(bundle_dir)
    loaded = load_bundle(bundle_dir).calibration
    assert loaded.n_scans == 3 and loaded.overlay_threshold_z == pytest.approx(3.1)
    assert np.array_equal(loaded.median_mm, median)
