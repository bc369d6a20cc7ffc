"""Position Regression AD: find anomalies in a head CT without annotated training data.

The Slicer module (Module, parameter node, Widget, Test) is defined only inside the Slicer
application; everything it does is in ``PositionRegressionADLib`` (Qt-free, usable in batch:
``python -m PositionRegressionADLib.batch`` or ``Slicer --no-main-window --python-script Scripts/batch.py``).
The widget syncs a parameter node (saved with the scene), starts the Lib's detection, polls it from
a QTimer so Slicer stays responsive, and shows the results. This file holds no detection code.
"""

import pathlib
import sys
import tempfile
from typing import Annotated

from PositionRegressionADLib.calibration_logic import CalibrationLogic, CalibrationPanel, calibration_words
from PositionRegressionADLib.detection_logic import (
    FULL_RESOLUTION_STRIDE,
    PREVIEW_STRIDE,
    DetectionCancelled,
    DetectionLogic,
    DetectionOptions,
    default_model_path,
    first_input_volume,
    result_volume_ids,
)
from PositionRegressionADLib.run_state import RunState, detection_words, shown_then_recorded

if getattr(sys.modules.get("slicer"), "app", None) is not None:
    # Inside the Slicer application (it imports slicer before any module file). No try/except: an
    # import failing here is a real error (a Slicer older than 5.4 has no parameterNodeWrapper) and
    # must be reported as itself, not as a module that silently has no classes.
    import qt
    import slicer
    import vtk
    from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleLogic,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.i18n import tr as _
    from slicer.i18n import translate
    from slicer.util import VTKObservationMixin
else:
    # Plain Python, PythonSlicer or slicer-core: no application, so no module or widget either.
    ScriptedLoadableModule = None
    from PositionRegressionADLib.run_state import untranslated as _


_HELP_TEXT = _("""Detect anomalies (haemorrhage, fracture, anything unlike a healthy head) in a head CT.
Choose the CT and click <b>Detect anomalies</b>. A network trained on healthy heads only guesses where
each small patch of the scan sits in the head; where it cannot, the <i>position error</i> is high, and
the region scores say so. The <i>anomaly map</i> (how unusual the scan's density is against healthy
heads at the same place, raised where the position error is high too) is shown over the slices
(only above the threshold), on the skull surface and as <i>anomaly candidates</i> to review in the
Segment Editor; the position error has its own map, <i>PPR position error</i>. It is a research
tool, not a diagnosis. Many scans at once, without the main window:
<code>Slicer --no-main-window --python-script &lt;this module's folder&gt;/Scripts/batch.py -- --input FOLDER
--output FOLDER</code>. <a href="https://github.com/PositionRegressionAD/SlicerPositionRegressionAD#readme">Documentation</a>.
""")

_ACKNOWLEDGEMENT = _("""Method: F. Bieder, J. Wolleb, R. Sandkuehler, P. C. Cattin, "Position Regression for
Unsupervised Anomaly Detection", MIDL 2022. The bundled model was trained on head CTs of PhysioNet CT-ICH
(M. Hssayeni, doi:10.13026/w8q8-ky94, CC BY 4.0).""")

DEVICE_CHOICES = ["auto", "cuda", "cpu"]


if ScriptedLoadableModule is not None:

    class PositionRegressionAD(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = _("Position Regression AD")
            self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
            self.parent.dependencies = []
            self.parent.contributors = ["PositionRegressionAD developers"]
            self.parent.helpText = _HELP_TEXT
            self.parent.acknowledgementText = _ACKNOWLEDGEMENT

    @parameterNodeWrapper
    class PositionRegressionADParameterNode:
        """What the user chose; saved with the scene."""

        inputVolume: slicer.vtkMRMLScalarVolumeNode
        useBundledModel: bool = True
        modelPath: pathlib.Path
        device: Annotated[str, Choice(DEVICE_CHOICES)] = "auto"
        fullResolution: bool = False
        autoThreshold: bool = True
        overlayThresholdMm: Annotated[float, WithinRange(0.0, 200.0)] = 20.0
        overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
        showOverlay: bool = True
        showSurface: bool = True

    class PositionRegressionADLogic(ScriptedLoadableModuleLogic):
        """The module's parameter node; detection is ``PositionRegressionADLib.DetectionLogic``."""

        def getParameterNode(self) -> PositionRegressionADParameterNode:
            return PositionRegressionADParameterNode(super().getParameterNode())

    class PositionRegressionADWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
        """A view of the parameter node and of the Lib's detection; no computation of its own."""

        POLL_MILLISECONDS = 200

        def __init__(self, parent=None) -> None:
            ScriptedLoadableModuleWidget.__init__(self, parent)
            VTKObservationMixin.__init__(self)
            self.logic = None
            self._parameterNode = None
            self._parameterNodeGuiTag = None
            self._run = None
            self._state = RunState(detection_words(_))  # what the panel shows about the run: rendered only
            self._timer = None
            self.calibration = CalibrationPanel(CalibrationLogic(), calibration_words(_))  # "Calibrate on my scanner"
            self._calibrationTimer = None
            self._deviceProbe = None
            self._deviceTimer = None
            self._shownModelPath = None
            self._shownDisplay = None

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            uiWidget = slicer.util.loadUI(self.resourcePath("UI/PositionRegressionAD.ui"))
            self.layout.addWidget(uiWidget)
            self.ui = slicer.util.childWidgetVariables(uiWidget)
            uiWidget.setMRMLScene(slicer.mrmlScene)

            self.logic = PositionRegressionADLogic()
            # Run folders (the exported input, the maps) under Slicer's temporary folder, as Slicer asks.
            self.detection = DetectionLogic(slicer.mrmlScene, work_dir=pathlib.Path(slicer.app.temporaryPath))
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_MILLISECONDS)
            self._timer.connect("timeout()", self.onTimer)

            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
            self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
            self.ui.jumpToMaxButton.connect("clicked(bool)", self.onJumpToMax)
            self.ui.editCandidatesButton.connect("clicked(bool)", self.onEditCandidates)
            self._calibrationTimer = qt.QTimer()
            self._calibrationTimer.setInterval(self.POLL_MILLISECONDS)
            self._calibrationTimer.connect("timeout()", self.onCalibrationTimer)
            self.ui.calibrateButton.connect("clicked(bool)", self.onCalibrateButton)
            self._deviceTimer = qt.QTimer()
            self._deviceTimer.setInterval(self.POLL_MILLISECONDS)
            self._deviceTimer.connect("timeout()", self.onDeviceTimer)
            self._startDeviceProbe()
            self.initializeParameterNode()

        def cleanup(self) -> None:
            self._timer.stop()
            self._deviceTimer.stop()
            self._calibrationTimer.stop()
            self.calibration.cancel()
            if self._run is not None:
                self._run.cancel()
                self._run = None
            if self._deviceProbe is not None:
                self._deviceProbe.cancel()
            self.removeObservers()

        def enter(self) -> None:
            self._state.entered()
            self.initializeParameterNode()

        def exit(self) -> None:
            # As Slicer's template: keep the parameter node (a running detection still reads it when it
            # ends), only stop reacting to it. The run goes on; its results land while the user is away.
            self._state.left()
            self._disconnectParameterNode()

        def onSceneStartClose(self, caller, event) -> None:
            if self._run is not None:
                # The scene the run would add its results to is going away: end the run now.
                self._timer.stop()
                run, self._run = self._run, None
                run.cancel()
                self._state.cancelled(_("Cancelled: the scene was closed."))
            self.setParameterNode(None)

        def onSceneEndClose(self, caller, event) -> None:
            if self.parent.isEntered:
                self.initializeParameterNode()

        def initializeParameterNode(self) -> None:
            self.setParameterNode(self.logic.getParameterNode())
            if not self._parameterNode.inputVolume:
                self._parameterNode.inputVolume = first_input_volume(slicer.mrmlScene)

        def setParameterNode(self, parameterNode) -> None:
            self._disconnectParameterNode()
            self._parameterNode = parameterNode
            if self._parameterNode:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
                self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

        def _disconnectParameterNode(self) -> None:
            if self._parameterNode and self._parameterNodeGuiTag is not None:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self._parameterNodeGuiTag = None
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

        # ---- parameter node and run state -> views --------------------------------------------

        def _render(self) -> None:
            """Draw the run state: the button, the progress bar, the status line."""
            view = self._state.view()
            node = self._parameterNode
            self.ui.detectButton.text = view.action_text
            self.ui.detectButton.enabled = view.can_cancel or (view.can_start and bool(node and node.inputVolume))
            self.ui.progressBar.visible = view.progress_visible
            self.ui.progressBar.value = view.progress
            self.ui.statusLabel.text = view.status

        def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
            self._render()
            self._renderCalibration()
            # Error maps and z-maps are volumes too, never an input: the selector does not offer them.
            self.ui.inputVolumeSelector.sortFilterProxyModel().hiddenNodeIDs = result_volume_ids(slicer.mrmlScene)
            node = self._parameterNode
            if node is None:
                return
            self.ui.modelPathLineEdit.enabled = not node.useBundledModel
            self.ui.overlayThresholdSliderWidget.enabled = not node.autoThreshold
            modelPath = self._modelPath()
            if modelPath != self._shownModelPath:  # read the bundle only when the choice changes
                self._shownModelPath = modelPath
                self.ui.modelCardLabel.text = self._modelCard(modelPath)
            results = self.detection.results(node.inputVolume) if node.inputVolume else None
            self._showResults(results)

        def _showResults(self, results) -> None:
            from PositionRegressionADLib.report import reliability_warning

            for widget in (self.ui.scoresTableView, self.ui.jumpToMaxButton, self.ui.editCandidatesButton):
                widget.enabled = results is not None
            self.ui.scoresTableView.setMRMLTableNode(results.scores if results else None)
            # The detector's out-of-depth check: say it above the scores, in its own words.
            warning = reliability_warning(results.scores) if results else ""
            self.ui.reliabilityWarningLabel.text = warning
            self.ui.reliabilityWarningLabel.visible = bool(warning)
            if results is None:
                return
            from PositionRegressionADLib.results import set_overlay, set_threshold

            node = self._parameterNode
            # Only a change of the results or of the display choices touches the views: any other
            # parameter change (or coming back to the module) keeps the user's own view setup.
            display = (results.error_map.GetID(), node.autoThreshold, node.overlayThresholdMm,
                       node.overlayOpacity, node.showOverlay, node.showSurface)
            if display == self._shownDisplay:
                return
            self._shownDisplay = display
            # Automatic: the map the Lib chose (the calibrated z-map when the model has one) at its
            # threshold; a threshold the user set is in mm, so it shows the error map.
            overlay = results.displayed_map
            if not node.autoThreshold:
                set_threshold(results, node.overlayThresholdMm)
                overlay = results.error_map
            set_overlay(slicer.mrmlScene, node.inputVolume, overlay if node.showOverlay else None,
                        node.overlayOpacity)
            results.skull_surface.GetDisplayNode().SetVisibility(node.showSurface)

        def _modelPath(self) -> pathlib.Path:
            node = self._parameterNode
            if node.useBundledModel or not str(node.modelPath) or str(node.modelPath) == ".":
                return default_model_path()
            return pathlib.Path(node.modelPath)

        @staticmethod
        def _modelCard(path: pathlib.Path) -> str:
            from PositionRegressionADLib.model_card import model_card_html

            return model_card_html(path)

        def _startDeviceProbe(self) -> None:
            """Describe the devices from a child Python: the GUI never imports torch or starts CUDA."""
            from PositionRegressionADLib.detection_logic import child_environment, default_python_command
            from PositionRegressionADLib.devices import CHECKING, DeviceProbe

            self.ui.deviceInfoLabel.text = CHECKING
            try:
                self._deviceProbe = DeviceProbe(default_python_command(), child_environment())
            except Exception as error:  # noqa: BLE001 - the panel must open whatever is wrong here
                self.ui.deviceInfoLabel.text = _("The compute devices could not be checked: {reason}").format(
                    reason=error)
                return
            self._deviceTimer.start()

        def onDeviceTimer(self) -> None:
            line = self._deviceProbe.poll()
            if line is not None:
                self._deviceTimer.stop()
                self.ui.deviceInfoLabel.text = line

        # ---- detection -----------------------------------------------------------------------

        def onDetectButton(self) -> None:
            if self._state.busy:
                # Cancel while running; nothing while PyTorch installs (clicks arrive during the install).
                if self._state.cancel_requested():
                    self._render()
                    self._run.cancel()  # the timer then ends the run as cancelled
                return
            # tryWithErrorDisplay shows the error, then re-raises it: the state takes it from there.
            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Detection could not start."), waitCursor=True),
                                     self._state.failed):
                self._startDetection()
            self.updateGUIFromParameterNode()

        def _startDetection(self) -> None:
            if not self.ensureTorch():
                self._state.not_started(_("Detection needs PyTorch, which was not installed."))
                return
            self._run = self.detection.start(self._parameterNode.inputVolume, self._options())
            self._state.started()
            self._timer.start()

        def _options(self) -> DetectionOptions:
            from PositionRegressionADLib.results import ResultDisplayOptions

            node = self._parameterNode
            display = ResultDisplayOptions(
                overlay_threshold_mm=None if node.autoThreshold else node.overlayThresholdMm,
                overlay_opacity=node.overlayOpacity)
            return DetectionOptions(model_path=self._modelPath(), device=node.device,
                                    stride=FULL_RESOLUTION_STRIDE if node.fullResolution else PREVIEW_STRIDE,
                                    display=display)

        def ensureTorch(self) -> bool:
            """PyTorch through the PyTorch extension, installed after asking; False if the user declines."""
            from PositionRegressionADLib.devices import TORCH_REQUIREMENT, torch_installed, torch_too_old

            if torch_installed():
                problem = torch_too_old()
                if problem:
                    raise RuntimeError(problem)
                return True
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError(_("This module needs PyTorch: install the PyTorch extension from the "
                                     "Extensions Manager, restart Slicer and try again."))
            if not slicer.util.confirmOkCancelDisplay(
                    _("Detection needs PyTorch, which is not installed yet. Install it now? "
                      "It is a large download (several minutes).")):
                return False
            self._state.installing()
            self._render()  # the button is disabled during the install: clicks meanwhile do nothing
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                    askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                raise RuntimeError(_("PyTorch could not be installed: see the Python console for the reason."))
            self._startDeviceProbe()
            return True

        def onTimer(self) -> None:
            for update in self._run.take_progress():
                self._state.progress(update.fraction, update.message)
            if not self._run.finished():
                self._render()
                return
            self._timer.stop()
            run, self._run = self._run, None
            self._state.progress(1.0, _("Adding the results to the scene..."))
            self._render()
            slicer.app.processEvents()
            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Detection failed."), waitCursor=True),
                                     self._state.failed):
                self._finishDetection(run)
            self.updateGUIFromParameterNode()

        def _finishDetection(self, run) -> None:
            try:
                results = self.detection.finish(run)
            except DetectionCancelled:
                self._state.cancelled()
                return
            node = self._parameterNode  # kept when the user left the module, so results land then too
            if node is not None and node.autoThreshold:
                # Unticking "Automatic threshold" then starts from the threshold this run chose.
                node.overlayThresholdMm = min(results.threshold_mm, 200.0)
            if not self._state.away:
                self.onJumpToMax()  # moving the views under a user who is elsewhere would surprise them
            seconds = results.scores.GetTable().GetColumnByName("Seconds").GetValue(0)
            self._state.succeeded(_("Done in {seconds} s.").format(seconds=f"{seconds:.0f}"))

        # ---- calibration on the user's scanner (ppr calibrate in a child, like a detection) ---

        def _renderCalibration(self) -> None:
            view = self.calibration.state.view()
            self.ui.calibrateButton.text = view.action_text
            self.ui.calibrateButton.enabled = view.can_cancel or view.can_start
            self.ui.calibrationProgressBar.visible = view.progress_visible
            self.ui.calibrationProgressBar.value = view.progress
            self.ui.calibrationStatusLabel.text = view.status

        def onCalibrateButton(self) -> None:
            from PositionRegressionADLib.devices import torch_installed

            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Calibration could not start."), waitCursor=True),
                                     self.calibration.state.failed):
                if not self.calibration.running and not torch_installed():
                    raise RuntimeError(_("Calibration needs PyTorch: click Detect anomalies once (it offers to "
                                         "install PyTorch), then calibrate."))
                self.calibration.click(self._modelPath(), self.ui.calibrationScansPathLineEdit.currentPath,
                                       self.ui.calibrationOutputPathLineEdit.currentPath, self._parameterNode.device)
                self._calibrationTimer.start()
            self._renderCalibration()

        def onCalibrationTimer(self) -> None:
            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Calibration failed."), waitCursor=True),
                                     self.calibration.state.failed):
                outcome = self.calibration.tick()
                if outcome is not None and self._parameterNode is not None:
                    self._parameterNode.useBundledModel = False  # detect with the new model from now on
                    self._parameterNode.modelPath = outcome.bundle_path
            if not self.calibration.running:
                self._calibrationTimer.stop()
            self._renderCalibration()

        # ---- results -------------------------------------------------------------------------

        def _currentResults(self):
            node = self._parameterNode
            return self.detection.results(node.inputVolume) if node and node.inputVolume else None

        def onJumpToMax(self) -> None:
            results = self._currentResults()
            if results is not None:
                slicer.modules.markups.logic().JumpSlicesToLocation(*results.max_error_ras, True)

        def onEditCandidates(self) -> None:
            results = self._currentResults()
            if results is None:
                return
            slicer.util.selectModule("SegmentEditor")
            editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
            editor.setSegmentationNode(results.candidates)
            editor.setSourceVolumeNode(self._parameterNode.inputVolume)

    class PositionRegressionADTest(ScriptedLoadableModuleTest):
        """Runs in Slicer: detection on a small synthetic head with the fake detector (no torch needed)."""

        def setUp(self) -> None:
            slicer.mrmlScene.Clear()

        def runTest(self) -> None:
            self.setUp()
            self.test_detection_adds_results_with_input_geometry()
            self.setUp()
            self.test_failed_detection_leaves_scene_unchanged()

        def _logic(self) -> DetectionLogic:
            from PositionRegressionADLib.testing import InProcessFakeDetection

            return DetectionLogic(slicer.mrmlScene, launcher=InProcessFakeDetection)

        def test_detection_adds_results_with_input_geometry(self) -> None:
            from PositionRegressionADLib.results import ROLE_ATTRIBUTE
            from PositionRegressionADLib.testing import synthetic_head_node

            self.delayDisplay("Detecting on a synthetic head")
            volume = synthetic_head_node(slicer.mrmlScene)
            with tempfile.TemporaryDirectory() as modelDir:
                results = self._logic().detect(volume, DetectionOptions(model_path=modelDir))
            inputMatrix, errorMatrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
            volume.GetIJKToRASMatrix(inputMatrix)
            results.error_map.GetIJKToRASMatrix(errorMatrix)
            for row in range(4):
                for col in range(4):
                    self.assertAlmostEqual(inputMatrix.GetElement(row, col), errorMatrix.GetElement(row, col), 6)
            self.assertEqual(results.error_map.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
            self.assertEqual(results.error_map.GetAttribute(ROLE_ATTRIBUTE), "ErrorMap")
            self.assertGreater(results.skull_surface.GetPolyData().GetNumberOfPoints(), 1000)
            self.assertEqual(results.scores.GetNumberOfRows(), 1)
            self.assertGreaterEqual(results.candidates.GetSegmentation().GetNumberOfSegments(), 1)
            self.delayDisplay("Test passed")

        def test_failed_detection_leaves_scene_unchanged(self) -> None:
            import os

            from PositionRegressionADLib.testing import FAKE_MODE_VARIABLE, synthetic_head_node

            volume = synthetic_head_node(slicer.mrmlScene)
            before = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
            os.environ[FAKE_MODE_VARIABLE] = "refuse"
            try:
                with tempfile.TemporaryDirectory() as modelDir:
                    with self.assertRaises(Exception):
                        self._logic().detect(volume, DetectionOptions(model_path=modelDir))
            finally:
                del os.environ[FAKE_MODE_VARIABLE]
            after = [slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())]
            self.assertEqual(before, after)
            self.delayDisplay("Test passed")
