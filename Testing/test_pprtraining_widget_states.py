"""The PPR Training panel, driven through its own slots (Qt stood in for by ``slicer_gui_stubs``, the
trainer by a small fake script): after a failed start, a failed training, a stop, or a report that
cannot be written, Start is enabled again, Stop is not, the progress bar is hidden and the status
says what happened. (``slicer.util.tryWithErrorDisplay`` re-raises: a missing report used to leave
Start disabled until the module was reloaded.)"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from PositionRegressionADLib.run_state import Phase
from PositionRegressionADLib.scene_io import SceneContext
from PPRTrainingLib.logic import PPRTrainingLogic
from slicer_gui_stubs import REPO_ROOT, install_slicer_gui_stubs, load_module_file

FAKE_TRAINER = '''
import os, sys, time
mode = os.environ.get("FAKE_TRAINER", "ok")
for step in range(1, 4):
    print(f"PROGRESS {step / 4:.2f} step {step} loss {1.0 / step:.3f}", file=sys.stderr, flush=True)
    time.sleep(0.3 if mode == "slow" else 0.01)
if mode == "slow":
    time.sleep(60)
if mode == "fail":
    print("error: The scans are not head CTs.", file=sys.stderr)
    sys.exit(2)
print('{"steps": 3}')
'''


class TrainingPanel:
    def __init__(self, monkeypatch, tmp_path: Path) -> None:
        context = SceneContext.create(tmp_path / "cache")
        self.record = install_slicer_gui_stubs(monkeypatch, context.scene, REPO_ROOT / "PPRTraining", tmp_path)
        module = load_module_file(REPO_ROOT / "PPRTraining" / "PPRTraining.py", "PPRTraining_panel")
        self.widget = module.PPRTrainingWidget()
        self.widget.setup()
        trainer = tmp_path / "fake_trainer.py"
        trainer.write_text(FAKE_TRAINER)
        self.widget.logic = PPRTrainingLogic(command_prefix=[sys.executable, str(trainer)])
        data = tmp_path / "healthy"
        data.mkdir()
        (data / "case.nii.gz").write_bytes(b"")
        self.bundle = tmp_path / "model"
        self.widget.validationFolderEdit.currentPath = ""
        self.widget.bundleEdit.currentPath = str(self.bundle)
        self.widget.extraArgsEdit.text = ""
        self.widget.maxMinutesSpin.value = 0.0
        monkeypatch.setattr(sys.modules["qt"].QFileDialog, "getExistingDirectory", lambda *args: str(data))
        self.widget._onAddFolder()  # the "Add folder..." button's slot

    def shows(self) -> tuple:
        """(Start enabled, Stop enabled, progress bar visible, status)."""
        w = self.widget
        return w.startButton.enabled, w.stopButton.enabled, w.progressBar.visible, w.statusLabel.text

    def tick_until_ended(self, timeout_seconds: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_seconds
        while self.widget._timer.active:
            assert time.monotonic() < deadline, "the training did not end"
            self.widget._timer.fire()
            time.sleep(0.05)


@pytest.fixture
def panel(monkeypatch, tmp_path) -> TrainingPanel:
    panel = TrainingPanel(monkeypatch, tmp_path)
    monkeypatch.setattr(panel.widget, "_updatePlot", lambda: None)  # the plot is MRML, tested elsewhere
    yield panel
    panel.widget.cleanup()


def test_a_report_that_cannot_be_written_leaves_start_enabled(panel):
    panel.widget.startButton.click()
    assert panel.shows()[:3] == (False, True, True)
    panel.tick_until_ended()
    start, stop, progress_visible, status = panel.shows()
    assert (start, stop, progress_visible) == (True, False, False)
    assert status.startswith(f"Model bundle written to {panel.bundle}")
    assert "\nNo report: " in status  # the fake wrote no training_log.json
    assert [message for message, _ in panel.record.shown] == ["The training report could not be written."]
    assert panel.widget._state.phase is Phase.DONE


def test_a_failed_training_shows_its_error_and_leaves_start_enabled(panel, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER", "fail")
    panel.widget.startButton.click()
    panel.tick_until_ended()
    assert panel.shows() == (True, False, False, "Training failed: The scans are not head CTs.")
    assert panel.record.error_displays == ["The scans are not head CTs."]


def test_a_training_that_cannot_start_leaves_start_enabled(panel):
    panel.widget.bundleEdit.currentPath = ""
    panel.widget.startButton.click()
    assert panel.shows() == (True, False, False, "Training failed: Choose the folder of the new model bundle.")
    assert [message for message, _ in panel.record.shown] == ["Training could not start."]
    assert panel.widget._run is None and not panel.widget._timer.active


def test_stop_ends_as_stopped(panel, monkeypatch):
    monkeypatch.setenv("FAKE_TRAINER", "slow")
    panel.widget.startButton.click()
    panel.widget._timer.fire()
    panel.widget.stopButton.click()
    assert panel.widget._state.phase is Phase.CANCELLING
    panel.tick_until_ended()
    assert panel.shows() == (True, False, False, "Training stopped.")
    assert panel.record.shown == []


def test_a_live_plot_that_fails_does_not_stop_following_the_run(panel, monkeypatch):
    def broken_plot():
        raise RuntimeError("no plot view in this layout")

    monkeypatch.setattr(panel.widget, "_updatePlot", broken_plot)
    panel.widget.startButton.click()
    panel.tick_until_ended()
    assert panel.shows()[3].startswith("Model bundle written to")
