"""Fixtures and helpers shared by the Lib tests that detect on the synthetic lesion head with a fake
detector: the head file, the fake's error peak at the lesion, a scene context, an (empty) model folder,
a slice view to show overlays in, and a node's IJK-to-RAS matrix.

Import the fixtures by name into a test module (pytest then uses them there); the error-peak fixture
is autouse, so every test of a module that imports it gets the peak at the lesion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import slicer

from PositionRegressionADLib.geometry import ijk_to_ras, matrix_array
from PositionRegressionADLib.scene_io import SceneContext
from PositionRegressionADLib.testing import FAKE_PEAK_VARIABLE
from synthetic_heads import LESION_LPS, write_lesion_head


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    return write_lesion_head(tmp_path_factory.mktemp("heads"))


@pytest.fixture(autouse=True)
def fake_peak_at_the_lesion(monkeypatch):
    monkeypatch.setenv(FAKE_PEAK_VARIABLE, ",".join(str(v) for v in LESION_LPS))


@pytest.fixture()
def context(tmp_path) -> SceneContext:
    return SceneContext.create(tmp_path / "cache")


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    path = tmp_path / "model"
    path.mkdir()
    return path


def slice_composite(scene) -> slicer.vtkMRMLSliceCompositeNode:
    """A red slice view's composite node in ``scene`` (where overlays are set)."""
    composite = slicer.vtkMRMLSliceCompositeNode()
    composite.SetLayoutName("Red")
    return scene.AddNode(composite)


def ijk_to_ras_array(node) -> np.ndarray:
    return matrix_array(ijk_to_ras(node))
