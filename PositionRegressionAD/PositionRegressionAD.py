"""Position Regression AD: find anomalies in a head CT without annotated training data.

The Slicer module (Module, parameter node, Widget, Test) is defined only inside the Slicer
application; everything it does is in ``PositionRegressionADLib`` (Qt-free, usable in batch:
``python -m PositionRegressionADLib.batch`` or ``Slicer --no-main-window --python-script Scripts/batch.py``).
The widget syncs a parameter node (saved with the scene), starts the Lib's detection, polls it from
a QTimer so Slicer stays responsive, and shows the results. This file holds no detection code.
"""

import pathlib
import tempfile
from typing import Annotated

from PositionRegressionADLib.detection_logic import (
    FULL_RESOLUTION_STRIDE,
    PREVIEW_STRIDE,
    DetectionCancelled,
    DetectionLogic,
    DetectionOptions,
    default_model_path,
)

try:
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
    from slicer.util import VTKObservationMixin
except ImportError:
    # Plain Python, PythonSlicer or slicer-core: no application, so no module or widget either.
    ScriptedLoadableModule = None


_HELP_TEXT = """Detect anomalies (haemorrhage, fracture, anything unlike a healthy head) in a head CT.
Choose the CT and click <b>Detect anomalies</b>. A network trained on healthy heads only guesses where
each small patch of the scan sits in the head; where it cannot, the <i>position error</i> is high.
The error map is shown over the slices (only error above the threshold), on the skull surface, as
per-region scores and as <i>anomaly candidates</i> to review in the Segment Editor. It is a research
tool, not a diagnosis. Many scans at once:
<code>python -m PositionRegressionADLib.batch --input FOLDER --output FOLDER</code>.
"""

_ACKNOWLEDGEMENT = """Method: F. Bieder, J. Wolleb, R. Sandkuehler, P. C. Cattin, "Position Regression for
Unsupervised Anomaly Detection", MIDL 2022. The bundled model was trained on head CTs of PhysioNet CT-ICH
(M. Hssayeni, doi:10.13026/w8q8-ky94, CC BY 4.0)."""

DEVICE_CHOICES = ["auto", "cuda", "cpu"]


if ScriptedLoadableModule is not None:

    class PositionRegressionAD(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = "Position Regression AD"
            self.parent.categories = ["Quantification"]
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
            self._timer = None

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            uiWidget = slicer.util.loadUI(self.resourcePath("UI/PositionRegressionAD.ui"))
            self.layout.addWidget(uiWidget)
            self.ui = slicer.util.childWidgetVariables(uiWidget)
            uiWidget.setMRMLScene(slicer.mrmlScene)

            self.logic = PositionRegressionADLogic()
            self.detection = DetectionLogic(slicer.mrmlScene)
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_MILLISECONDS)
            self._timer.connect("timeout()", self.onTimer)

            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
            self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
            self.ui.detectButton.connect("clicked(bool)", self.onDetectButton)
            self.ui.jumpToMaxButton.connect("clicked(bool)", self.onJumpToMax)
            self.ui.editCandidatesButton.connect("clicked(bool)", self.onEditCandidates)
            self.ui.progressBar.hide()
            self.ui.deviceInfoLabel.text = self._deviceDescription()
            self.initializeParameterNode()

        def cleanup(self) -> None:
            if self._run is not None:
                self._run.cancel()
            self.removeObservers()

        def enter(self) -> None:
            self.initializeParameterNode()

        def exit(self) -> None:
            self.setParameterNode(None)

        def onSceneStartClose(self, caller, event) -> None:
            self.setParameterNode(None)

        def onSceneEndClose(self, caller, event) -> None:
            if self.parent.isEntered:
                self.initializeParameterNode()

        def initializeParameterNode(self) -> None:
            self.setParameterNode(self.logic.getParameterNode())
            if not self._parameterNode.inputVolume:
                self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

        def setParameterNode(self, parameterNode) -> None:
            if self._parameterNode:
                self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
                self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self._parameterNode = parameterNode
            if self._parameterNode:
                self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
                self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

        # ---- parameter node -> views -------------------------------------------------------

        def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
            node = self._parameterNode
            running = self._run is not None
            self.ui.detectButton.text = "Cancel" if running else "Detect anomalies"
            self.ui.detectButton.enabled = running or bool(node and node.inputVolume)
            if node is None:
                return
            self.ui.modelPathLineEdit.enabled = not node.useBundledModel
            self.ui.overlayThresholdSliderWidget.enabled = not node.autoThreshold
            self.ui.modelCardLabel.text = self._modelCard(self._modelPath())
            results = self.detection.results(node.inputVolume) if node.inputVolume else None
            self._showResults(results)

        def _showResults(self, results) -> None:
            for widget in (self.ui.scoresTableView, self.ui.jumpToMaxButton, self.ui.editCandidatesButton):
                widget.enabled = results is not None
            self.ui.scoresTableView.setMRMLTableNode(results.scores if results else None)
            if results is None:
                return
            from PositionRegressionADLib.results import set_overlay, set_threshold

            node = self._parameterNode
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

        @staticmethod
        def _deviceDescription() -> str:
            from PositionRegressionADLib.devices import describe_devices

            return describe_devices()

        # ---- detection -----------------------------------------------------------------------

        def onDetectButton(self) -> None:
            if self._run is not None:
                self._run.cancel()
                self.ui.statusLabel.text = "Cancelling..."
                return
            with slicer.util.tryWithErrorDisplay("Detection could not start.", waitCursor=True):
                if not self.ensureTorch():
                    return
                self._run = self.detection.start(self._parameterNode.inputVolume, self._options())
                self.ui.progressBar.value = 0
                self.ui.progressBar.show()
                self.ui.statusLabel.text = "Starting..."
                self._timer.start()
            self.updateGUIFromParameterNode()

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
            from PositionRegressionADLib.devices import torch_installed

            if torch_installed():
                return True
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("This module needs PyTorch: install the PyTorch extension from the "
                                   "Extensions Manager, restart Slicer and try again.")
            if not slicer.util.confirmOkCancelDisplay(
                    "Detection needs PyTorch, which is not installed yet. Install it now? "
                    "It is a large download (several minutes)."):
                return False
            if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
                raise RuntimeError("PyTorch could not be installed: see the Python console for the reason.")
            self.ui.deviceInfoLabel.text = self._deviceDescription()
            return True

        def onTimer(self) -> None:
            for update in self._run.take_progress():
                self.ui.progressBar.value = int(1000 * update.fraction)
                self.ui.statusLabel.text = update.message
            if not self._run.finished():
                return
            self._timer.stop()
            run, self._run = self._run, None
            self.ui.statusLabel.text = "Adding the results to the scene..."
            slicer.app.processEvents()
            status = "Detection failed: see the message."
            with slicer.util.tryWithErrorDisplay("Detection failed.", waitCursor=True):
                try:
                    status = self._onResults(self.detection.finish(run))
                except DetectionCancelled:
                    status = "Cancelled."
            self.ui.progressBar.hide()
            self.ui.statusLabel.text = status
            self.updateGUIFromParameterNode()

        def _onResults(self, results) -> str:
            """Show a new detection's results; returns the status line."""
            node = self._parameterNode
            if node.autoThreshold:
                # Unticking "Automatic threshold" then starts from the threshold this run chose.
                node.overlayThresholdMm = min(results.threshold_mm, 200.0)
            self.onJumpToMax()
            seconds = results.scores.GetTable().GetColumnByName("Seconds").GetValue(0)
            return f"Done in {seconds:.0f} s."

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
