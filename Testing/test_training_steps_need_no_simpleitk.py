"""Training steps (the GPU-machine route, scripts/train-from-pack.py) import torch and numpy only:
SimpleITK and pydicom are needed to preprocess scans, not to train on preprocessed volumes."""

from __future__ import annotations

import subprocess
import sys


def test_importing_training_and_augmentation_loads_neither_simpleitk_nor_pydicom(repo_root):
    code = ("import sys\n"
            "import ppr.networks.training, ppr.networks.augmentation\n"
            "print(sorted(m for m in ('SimpleITK', 'pydicom', 'scipy') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=repo_root / "PositionRegressionAD")
    assert out.stdout.strip() == "[]"
