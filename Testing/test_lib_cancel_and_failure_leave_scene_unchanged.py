"""A cancelled or failed detection adds no node, leaves no temporary file, and never touches the input."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from PositionRegressionADLib.detection_logic import (
    DetectionCancelled,
    DetectionFailedError,
    DetectionLogic,
    DetectionOptions,
)
from PositionRegressionADLib.report import ResultImportError
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADLib.testing import (
    FAKE_MODE_VARIABLE,
    FAKE_PID_FILE_VARIABLE,
    InProcessFakeDetection,
    process_alive,
    scene_node_ids,
    volume_fingerprint,
)
from ppr.errors import BundleError, InputImageError
from synthetic_heads import synthetic_head

FAKE_CHILD = [sys.executable, "-m", "PositionRegressionADLib.testing"]


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("heads") / "head.nii.gz"
    sitk.WriteImage(synthetic_head(size=(64, 64, 30), spacing=(3.0, 3.2, 5.0), window_hu=(-20.0, 100.0),
                                   lesion_center_mm=(20.0, 10.0, 20.0)), str(path))
    return path


@pytest.fixture()
def setup(tmp_path, head_file):
    """A scene with the head loaded and one earlier detection in it, and the state to compare with."""
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, head_file)
    model = tmp_path / "model"
    model.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(volume, DetectionOptions(model_path=model))
    return context, volume, model, work, scene_node_ids(context.scene), volume_fingerprint(volume)


def _assert_unchanged(context, volume, work, ids_before, fingerprint_before):
    assert scene_node_ids(context.scene) == ids_before
    assert volume_fingerprint(volume) == fingerprint_before
    assert list(work.iterdir()) == []


@pytest.mark.parametrize(("mode", "error", "message"), [
    ("refuse", DetectionFailedError, "single slice"),
    ("crash", DetectionFailedError, "exit code 1"),
    ("no-json", DetectionFailedError, "without reporting its result"),
])
def test_a_failed_detection_leaves_the_scene_and_input_as_they_were(setup, monkeypatch, mode, error, message):
    context, volume, model, work, ids_before, fingerprint_before = setup
    monkeypatch.setenv(FAKE_MODE_VARIABLE, mode)
    logic = DetectionLogic(context.scene, python_command=FAKE_CHILD, work_dir=work)
    with pytest.raises(error, match=message):
        logic.detect(volume, DetectionOptions(model_path=model))
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)


def test_an_error_map_off_the_input_grid_is_refused_and_adds_nothing(setup, monkeypatch):
    context, volume, model, work, ids_before, fingerprint_before = setup

    class WrongGridDetection(InProcessFakeDetection):
        """Writes its error map with one slice less than the input."""

        def _run(self):
            super()._run()
            out = self._command[self._command.index("--out") + 1]
            image = sitk.ReadImage(out)
            sitk.WriteImage(image[:, :, 1:], out)

    logic = DetectionLogic(context.scene, launcher=WrongGridDetection, work_dir=work)
    with pytest.raises(ResultImportError, match="input's grid"):
        logic.detect(volume, DetectionOptions(model_path=model))
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)


def test_cancel_kills_the_detector_and_leaves_the_scene_as_it_was(setup, monkeypatch, tmp_path):
    context, volume, model, work, ids_before, fingerprint_before = setup
    pid_file = tmp_path / "pids"
    monkeypatch.setenv(FAKE_MODE_VARIABLE, "hang")
    monkeypatch.setenv(FAKE_PID_FILE_VARIABLE, str(pid_file))
    logic = DetectionLogic(context.scene, python_command=FAKE_CHILD, work_dir=work)
    deadline = time.monotonic() + 60

    def cancel_once_running() -> bool:
        assert time.monotonic() < deadline, "the fake detector never started"
        return pid_file.exists() and bool(pid_file.read_text().strip())

    with pytest.raises(DetectionCancelled):
        logic.detect(volume, DetectionOptions(model_path=model), should_cancel=cancel_once_running)

    child, worker = (int(v) for v in pid_file.read_text().split())
    settle = time.monotonic() + 5
    while (process_alive(child) or process_alive(worker)) and time.monotonic() < settle:
        time.sleep(0.05)
    assert not process_alive(child) and not process_alive(worker)
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)


def test_cancel_from_a_polling_caller_leaves_the_scene_as_it_was(setup, monkeypatch):
    # The widget's way: start, poll from a timer, cancel, then finish.
    context, volume, model, work, ids_before, fingerprint_before = setup
    monkeypatch.setenv(FAKE_MODE_VARIABLE, "hang")
    logic = DetectionLogic(context.scene, python_command=FAKE_CHILD, work_dir=work)
    run = logic.start(volume, DetectionOptions(model_path=model))
    assert scene_node_ids(context.scene) == ids_before
    assert not run.finished()
    run.cancel()
    with pytest.raises(DetectionCancelled):
        logic.finish(run)
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)


def test_a_missing_model_is_refused_before_anything_starts(setup, tmp_path):
    context, volume, _, work, ids_before, fingerprint_before = setup
    logic = DetectionLogic(context.scene, python_command=FAKE_CHILD, work_dir=work)
    with pytest.raises(BundleError, match="No model bundle was found"):
        logic.detect(volume, DetectionOptions(model_path=tmp_path / "nowhere"))
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)


def test_a_volume_of_another_scene_or_a_labelmap_is_refused(setup, tmp_path):
    context, volume, model, work, ids_before, fingerprint_before = setup
    logic = DetectionLogic(context.scene, python_command=FAKE_CHILD, work_dir=work)
    other = SceneContext.create(tmp_path / "other-cache")
    foreign = other.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    with pytest.raises(InputImageError, match="not in this scene"):
        logic.detect(foreign, DetectionOptions(model_path=model))
    labelmap = context.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    with pytest.raises(InputImageError, match="scalar volume"):
        logic.detect(labelmap, DetectionOptions(model_path=model))
    context.scene.RemoveNode(labelmap)
    _assert_unchanged(context, volume, work, ids_before, fingerprint_before)
