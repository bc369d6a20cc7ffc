"""The Position Regression AD panel, driven through its own slots on a real MRML scene (Qt and the
application stood in for by ``slicer_gui_stubs``, the detector by the in-process fake).

``slicer.util.tryWithErrorDisplay`` shows an error and re-raises it; after any failure the panel must
still be consistent (button text and enabled state, progress bar, status) and a click must start a
new detection. Leaving the module during a detection must not turn a good run into "Detection
failed": the parameter node is kept, results land, and the panel shows them on return.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

import pytest

import PositionRegressionADLib.detection_logic as detection_logic
import PositionRegressionADLib.devices as devices
import PositionRegressionADLib.results as results_module
from PositionRegressionADLib.detection_logic import DetectionLogic, first_input_volume
from PositionRegressionADLib.run_state import Phase
from PositionRegressionADLib.scene_io import SceneContext
from PositionRegressionADLib.testing import FAKE_MODE_VARIABLE, InProcessFakeDetection, scene_node_ids, synthetic_head_node
from slicer_gui_stubs import REPO_ROOT, install_slicer_gui_stubs, load_module_file

MODULE_DIR = REPO_ROOT / "PositionRegressionAD"


class QuietProbe:
    """Stands in for the device probe where a test is not about it (no child Python per test)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def poll(self) -> str:
        return "No CUDA GPU found: detection runs on the CPU, more slowly."

    def cancel(self) -> None:
        pass


class Panel:
    def __init__(self, monkeypatch, tmp_path: Path, probe=QuietProbe) -> None:
        self.context = SceneContext.create(tmp_path / "cache")
        self.scene = self.context.scene
        self.record = install_slicer_gui_stubs(monkeypatch, self.scene, MODULE_DIR, tmp_path)
        if probe is not None:
            monkeypatch.setattr(devices, "DeviceProbe", probe)
        self.volume = synthetic_head_node(self.scene)
        self.module = load_module_file(MODULE_DIR / "PositionRegressionAD.py", "PositionRegressionAD_panel")
        self.widget = self.module.PositionRegressionADWidget()
        self.widget.setup()
        self.detection_made_by_setup = self.widget.detection
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.widget.detection = DetectionLogic(self.scene, launcher=InProcessFakeDetection, work_dir=self.work)
        self.ui = self.widget.ui

    @property
    def node(self):
        return self.widget._parameterNode

    def shows(self) -> tuple:
        """(button text, button enabled, progress bar visible, status): what the user sees."""
        return (self.ui.detectButton.text, self.ui.detectButton.enabled, self.ui.progressBar.visible,
                self.ui.statusLabel.text)

    def click(self) -> None:
        self.ui.detectButton.click()

    def tick_until_ended(self) -> None:
        for _ in range(100):
            if not self.widget._timer.active:
                return
            self.widget._timer.fire()
        raise AssertionError("the run did not end")

    def results(self):
        return self.widget.detection.results(self.volume)


@pytest.fixture
def panel(monkeypatch, tmp_path) -> Panel:
    panel = Panel(monkeypatch, tmp_path)
    yield panel
    panel.widget.cleanup()


def test_the_panel_opens_on_the_ct_with_detect_enabled(panel, tmp_path):
    assert panel.node.inputVolume is panel.volume
    assert panel.shows() == ("Detect anomalies", True, False, "")
    assert panel.detection_made_by_setup.work_dir == tmp_path  # runs go under slicer.app.temporaryPath


def test_a_detection_runs_then_offers_a_new_one(panel):
    panel.click()
    assert panel.widget._state.phase is Phase.RUNNING
    assert panel.shows() == ("Cancel", True, True, "Starting...")
    panel.tick_until_ended()
    text, enabled, progress_visible, status = panel.shows()
    assert (text, enabled, progress_visible) == ("Detect anomalies", True, False)
    assert status.startswith("Done in ") and panel.results() is not None
    assert len(panel.record.jumps) == 1 and panel.record.shown == []
    assert list(panel.work.iterdir()) == []


@pytest.mark.parametrize(("mode", "words"), [("refuse", "single slice"), ("crash", "stopped unexpectedly")])
def test_a_failed_child_shows_the_error_once_and_leaves_the_panel_ready(panel, monkeypatch, mode, words):
    monkeypatch.setenv(FAKE_MODE_VARIABLE, mode)
    nodes_before = scene_node_ids(panel.scene)
    panel.click()
    panel.tick_until_ended()
    assert [message for message, _ in panel.record.shown] == ["Detection failed."]
    assert words in str(panel.record.shown[0][1])
    text, enabled, progress_visible, status = panel.shows()
    assert (text, enabled, progress_visible) == ("Detect anomalies", True, False)
    assert status.startswith("Detection failed: ") and words in status
    assert scene_node_ids(panel.scene) == nodes_before
    monkeypatch.setenv(FAKE_MODE_VARIABLE, "ok")
    panel.click()  # a click now starts a new detection (it used to cancel a run that was over)
    assert panel.widget._state.phase is Phase.RUNNING
    panel.tick_until_ended()
    assert panel.results() is not None


def test_a_failed_result_step_leaves_the_panel_ready(panel, monkeypatch):
    def no_room(*args, **kwargs):
        raise RuntimeError("Not enough memory to build the skull surface.")

    monkeypatch.setattr(detection_logic, "add_results_to_scene", no_room)
    panel.click()
    panel.tick_until_ended()
    assert panel.shows() == ("Detect anomalies", True, False,
                             "Detection failed: Not enough memory to build the skull surface.")
    assert len(panel.record.shown) == 1 and list(panel.work.iterdir()) == []


def test_a_detection_that_cannot_start_leaves_the_panel_ready(panel, tmp_path):
    panel.node.useBundledModel = False
    panel.node.modelPath = tmp_path / "no-such-bundle"
    panel.click()
    assert [message for message, _ in panel.record.shown] == ["Detection could not start."]
    text, enabled, progress_visible, status = panel.shows()
    assert (text, enabled, progress_visible) == ("Detect anomalies", True, False)
    assert status.startswith("Detection failed: No model bundle was found at")
    assert not panel.widget._timer.active and panel.widget._run is None


def test_cancel_ends_as_cancelled_and_adds_nothing(panel):
    nodes_before = scene_node_ids(panel.scene)
    panel.click()
    panel.click()
    assert panel.shows() == ("Cancelling...", False, True, "Cancelling...")
    panel.tick_until_ended()
    assert panel.shows() == ("Detect anomalies", True, False, "Cancelled.")
    assert panel.record.shown == [] and scene_node_ids(panel.scene) == nodes_before


def test_leaving_the_module_during_a_detection_lets_its_results_land(panel):
    panel.click()
    node = panel.node
    panel.widget.exit()
    assert panel.node is node  # kept, as Slicer's template does; only the GUI links are dropped
    assert node.guiTags == set()
    panel.tick_until_ended()
    assert panel.record.shown == []  # no false "Detection failed"
    assert panel.results() is not None and panel.widget._state.phase is Phase.DONE
    assert panel.record.jumps == []  # the views of a user who is elsewhere are left alone
    panel.widget.enter()
    assert len(panel.node.guiTags) == 1  # a new wrapper of the same node, as Slicer gives
    text, enabled, progress_visible, status = panel.shows()
    assert (text, enabled, progress_visible) == ("Detect anomalies", True, False) and status.startswith("Done in ")


def test_leaving_and_coming_back_during_a_detection_keeps_following_it(panel):
    panel.click()
    panel.widget.exit()
    panel.widget.enter()
    assert panel.shows()[:3] == ("Cancel", True, True)
    panel.tick_until_ended()
    assert panel.shows()[3].startswith("Done in ") and len(panel.record.jumps) == 1


def test_closing_the_scene_during_a_detection_cancels_it(panel):
    panel.click()
    panel.widget.onSceneStartClose(None, None)
    assert not panel.widget._timer.active and panel.widget._run is None
    assert panel.widget._state.phase is Phase.CANCELLED
    assert panel.record.shown == [] and list(panel.work.iterdir()) == []


def test_clicks_during_the_pytorch_install_do_nothing(panel, monkeypatch):
    seen, requirements = [], []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, torchVersionRequirement=None):
            requirements.append(torchVersionRequirement)
            seen.append(panel.shows())
            panel.click()  # delivered by the install's processEvents
            panel.widget.onDetectButton()
            return types.SimpleNamespace(__version__="2.13.0")

    monkeypatch.setattr(devices, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    panel.click()
    installing = "Installing PyTorch (several minutes)..."
    assert seen == [(installing, False, False, installing)]
    assert requirements == [devices.TORCH_REQUIREMENT] and devices.TORCH_REQUIREMENT.startswith(">=")
    assert panel.widget._state.phase is Phase.RUNNING and len(panel.record.confirmations) == 1
    panel.tick_until_ended()
    assert panel.results() is not None


def test_declining_the_pytorch_install_leaves_the_panel_ready(panel, monkeypatch):
    monkeypatch.setattr(devices, "torch_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=None))
    panel.record.confirm_answer = False
    panel.click()
    assert panel.shows() == ("Detect anomalies", True, False, "Detection needs PyTorch, which was not installed.")


def test_parameter_changes_leave_the_users_views_alone(panel, monkeypatch):
    panel.click()
    panel.tick_until_ended()
    overlays, cards = [], []
    real_overlay = results_module.set_overlay
    monkeypatch.setattr(results_module, "set_overlay", lambda *a, **k: overlays.append(a) or real_overlay(*a, **k))
    import PositionRegressionADLib.model_card as model_card

    monkeypatch.setattr(model_card, "model_card_html", lambda path: cards.append(path) or "card")
    panel.node.device = "cpu"
    panel.node.fullResolution = True
    panel.widget.exit()
    panel.widget.enter()
    assert overlays == [] and cards == []  # no re-display, no re-read of the bundle
    panel.node.overlayOpacity = 0.3
    assert len(overlays) == 1
    panel.node.useBundledModel = False
    panel.node.modelPath = Path("/elsewhere/model")
    assert cards == [Path("/elsewhere/model")]


def test_the_first_input_is_never_a_label_map_or_a_result(panel):
    scene = panel.scene
    scene.Clear(0)
    scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    error_map = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "old error map")
    error_map.SetAttribute(results_module.ROLE_ATTRIBUTE, "ErrorMap")
    assert first_input_volume(scene) is None
    ct = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "head CT")
    assert first_input_volume(scene) is ct


def test_the_input_selector_does_not_offer_result_volumes(panel):
    panel.click()
    panel.tick_until_ended()
    results = panel.results()
    hidden = panel.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs
    assert results.error_map.GetID() in hidden and panel.volume.GetID() not in hidden
    assert (results.z_map is None) or results.z_map.GetID() in hidden


def test_setup_never_imports_torch_and_the_devices_arrive_from_a_child(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` in this process now fails
    panel = Panel(monkeypatch, tmp_path, probe=None)
    try:
        assert panel.ui.deviceInfoLabel.text == devices.CHECKING
        line = wait_for_device_line(panel)
        assert line.startswith(("No CUDA GPU found", "GPU: ")), line
    finally:
        panel.widget.cleanup()


def test_a_broken_pytorch_install_does_not_break_the_panel(monkeypatch, tmp_path):
    broken = tmp_path / "broken" / "torch"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(
        'raise OSError("[WinError 126] The specified module could not be found. Error loading c10.dll")\n')
    monkeypatch.setenv("PYTHONPATH", str(broken.parent))
    panel = Panel(monkeypatch, tmp_path, probe=None)
    try:
        line = wait_for_device_line(panel)
        assert line.startswith("PyTorch is installed but does not load (OSError: [WinError 126]"), line
        assert panel.shows() == ("Detect anomalies", True, False, "")
    finally:
        panel.widget.cleanup()


def wait_for_device_line(panel: Panel, timeout_seconds: float = 240.0) -> str:
    deadline = time.monotonic() + timeout_seconds
    while panel.widget._deviceTimer.active:
        assert time.monotonic() < deadline, "the device probe did not answer"
        panel.widget._deviceTimer.fire()
        time.sleep(0.1)
    return panel.ui.deviceInfoLabel.text
