"""Shared pytest fixtures: where the dev data lives, and markers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
for package_dir in (REPO_ROOT / "PositionRegressionAD", REPO_ROOT / "PPRTraining"):
    if str(package_dir) not in sys.path:
        sys.path.insert(0, str(package_dir))

# The dev data sits beside the repository (../shared/data); PPR_DATA_DIR overrides it.
DEV_DATA_DIR = Path(os.environ.get("PPR_DATA_DIR", REPO_ROOT.parent / "shared" / "data" / "ct-ich-dev"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds (still run in CI)")


@pytest.fixture(scope="session")
def dev_data_dir() -> Path:
    if not (DEV_DATA_DIR / "cases.csv").exists():
        pytest.skip(f"dev data not found at {DEV_DATA_DIR}")
    return DEV_DATA_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, dev_data_dir) -> Path:
    """An untrained, tiny model bundle on a dev reference (64^3 at 4 mm, m = 2): the numbers it gives
    mean nothing about anomalies, but they are the core's, so tests can check they arrive unchanged."""
    torch = pytest.importorskip("torch")
    from ppr.workflows.bundle import save_bundle
    from ppr.config import PreprocessConfig
    from ppr.image.imageio import read_image
    from ppr.networks.network import PPRNet
    from ppr.image.preprocess import prepare_reference

    config = PreprocessConfig(size=64, spacing_mm=4.0, prewindowed=True)
    reference = prepare_reference(read_image(dev_data_dir / "ctich_054.nii.gz"), config)
    torch.manual_seed(0)
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny", PPRNet(m=2, patch_size=29), config, reference,
                       {"note": "untrained, for tests only"})
