"""PPR Training: train a Patch Position Regression model bundle from folders of healthy head CTs.

The Slicer module (Module, Widget, Test) is defined only inside the Slicer application; the logic
(``PPRTrainingLogic``, from PPRTrainingLib) is importable anywhere and needs no Qt. Training runs
in a ``python -m ppr train`` subprocess so Slicer stays responsive; for batch use without any GUI
see ``Scripts/train.py``. This file holds no training code of its own.
"""

from __future__ import annotations

import importlib.util
import logging
import shlex
import sys
from pathlib import Path

from PositionRegressionADLib.run_state import RunState, shown_then_recorded, training_words
from PPRTrainingLib.logic import PPRTrainingLogic  # noqa: F401  (the module's logic, also for batch use)

if getattr(sys.modules.get("slicer"), "app", None) is not None:
    # Inside the Slicer application (it imports slicer before any module file). No try/except: an
    # import failing here is a real error and must be reported as itself, not as a missing class.
    import ctk
    import qt
    import slicer
    from slicer.ScriptedLoadableModule import (
        ScriptedLoadableModule,
        ScriptedLoadableModuleTest,
        ScriptedLoadableModuleWidget,
    )
    from slicer.i18n import tr as _
    from slicer.i18n import translate
else:
    # Plain Python, PythonSlicer or slicer-core: no application, so no module or widget either.
    ScriptedLoadableModule = None
    from PositionRegressionADLib.run_state import untranslated as _


_HELP_TEXT = _("""Train a Patch Position Regression model on healthy head CTs: choose one or more folders of
healthy scans (NIfTI, NRRD, MetaImage or DICOM series sub-folders; files named *mask*, *label*, *seg*
are skipped), optionally a folder of other healthy scans for the validation loss, and the folder of
the new model bundle. Training runs in the background; Stop ends it. When it ends, loss curves and a
summary are written next to the bundle. The same training runs without the GUI with
<code>Slicer --no-main-window --python-script &lt;this module's folder&gt;/Scripts/train.py -- --data DIR --out BUNDLE</code>.
<a href="https://github.com/PositionRegressionAD/SlicerPositionRegressionAD#training-a-model">Documentation</a>.
""")

_ACKNOWLEDGEMENT = _("""Method: F. Bieder, J. Wolleb, R. Sandkuehler, P. C. Cattin, "Position Regression for
Unsupervised Anomaly Detection", MIDL 2022.""")


if ScriptedLoadableModule is not None:

    class PPRTraining(ScriptedLoadableModule):
        def __init__(self, parent):
            ScriptedLoadableModule.__init__(self, parent)
            self.parent.title = _("PPR Training")
            self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
            # ppr and the run state live in the PositionRegressionAD module's folder.
            self.parent.dependencies = ["PositionRegressionAD"]
            self.parent.contributors = ["PositionRegressionAD developers"]
            self.parent.helpText = _HELP_TEXT
            self.parent.acknowledgementText = _ACKNOWLEDGEMENT

    class PPRTrainingWidget(ScriptedLoadableModuleWidget):
        """Folders in, model bundle out: start/stop, progress bar and a live loss plot."""

        POLL_MILLISECONDS = 500

        def setup(self) -> None:
            ScriptedLoadableModuleWidget.setup(self)
            self.logic = PPRTrainingLogic()
            self._run = None
            self._state = RunState(training_words(_))  # what the panel shows about the run: rendered only
            self._plotting = True
            self._lossPlot = None
            self._losses: list[tuple[int, float]] = []
            self._valLosses: list[tuple[int, float]] = []
            self._timer = qt.QTimer()
            self._timer.setInterval(self.POLL_MILLISECONDS)
            self._timer.connect("timeout()", self._onTimer)
            self._addDataSection()
            self._addOptionsSection()
            self._addRunSection()
            self.layout.addStretch(1)
            self._render()

        def _addDataSection(self) -> None:
            box = ctk.ctkCollapsibleButton()
            box.text = _("Data")
            self.layout.addWidget(box)
            form = qt.QFormLayout(box)
            self.dataFolderList = qt.QListWidget()
            self.dataFolderList.toolTip = _("Folders of healthy head CTs to train on")
            addButton = qt.QPushButton(_("Add folder..."))
            removeButton = qt.QPushButton(_("Remove"))
            addButton.connect("clicked()", self._onAddFolder)
            removeButton.connect("clicked()", self._onRemoveFolder)
            buttons = qt.QHBoxLayout()
            buttons.addWidget(addButton)
            buttons.addWidget(removeButton)
            form.addRow(_("Healthy scans:"), self.dataFolderList)
            form.addRow("", buttons)
            self.validationFolderEdit = ctk.ctkPathLineEdit()
            self.validationFolderEdit.filters = ctk.ctkPathLineEdit.Dirs
            self.validationFolderEdit.toolTip = _("Other healthy scans, for the validation loss (optional)")
            form.addRow(_("Validation scans:"), self.validationFolderEdit)
            self.bundleEdit = ctk.ctkPathLineEdit()
            self.bundleEdit.filters = ctk.ctkPathLineEdit.Dirs
            self.bundleEdit.toolTip = _("Folder of the new model bundle")
            form.addRow(_("Model bundle:"), self.bundleEdit)

        def _addOptionsSection(self) -> None:
            box = ctk.ctkCollapsibleButton()
            box.text = _("Options")
            box.collapsed = True
            self.layout.addWidget(box)
            form = qt.QFormLayout(box)
            self.maxMinutesSpin = qt.QDoubleSpinBox()
            self.maxMinutesSpin.setRange(0.0, 100000.0)
            self.maxMinutesSpin.value = 60.0
            self.maxMinutesSpin.suffix = _(" min")
            self.maxMinutesSpin.toolTip = _("Stop training after this time (0: the ppr default)")
            form.addRow(_("Time limit:"), self.maxMinutesSpin)
            self.extraArgsEdit = qt.QLineEdit()
            self.extraArgsEdit.placeholderText = _("e.g. --m 16 --size 256 --prewindowed")
            self.extraArgsEdit.toolTip = _("More options of `python -m ppr train`")
            form.addRow(_("More options:"), self.extraArgsEdit)

        def _addRunSection(self) -> None:
            self.startButton = qt.QPushButton(_("Start training"))
            self.stopButton = qt.QPushButton(_("Stop"))
            self.startButton.connect("clicked()", self._onStart)
            self.stopButton.connect("clicked()", self._onStop)
            buttons = qt.QHBoxLayout()
            buttons.addWidget(self.startButton)
            buttons.addWidget(self.stopButton)
            self.layout.addLayout(buttons)
            self.progressBar = qt.QProgressBar()
            self.progressBar.setRange(0, 1000)
            self.layout.addWidget(self.progressBar)
            self.statusLabel = qt.QLabel("")
            self.statusLabel.wordWrap = True
            self.layout.addWidget(self.statusLabel)

        def _onAddFolder(self) -> None:
            folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Folder of healthy head CTs"))
            if folder:
                self.dataFolderList.addItem(folder)
            self._render()

        def _onRemoveFolder(self) -> None:
            for item in self.dataFolderList.selectedItems():
                self.dataFolderList.takeItem(self.dataFolderList.row(item))
            self._render()

        def _request(self):
            folders = [Path(self.dataFolderList.item(i).text()) for i in range(self.dataFolderList.count)]
            validation = [Path(self.validationFolderEdit.currentPath)] if self.validationFolderEdit.currentPath else []
            if not self.bundleEdit.currentPath:
                raise ValueError(_("Choose the folder of the new model bundle."))
            extra = shlex.split(self.extraArgsEdit.text)
            if self.maxMinutesSpin.value > 0:
                extra += ["--max-minutes", f"{self.maxMinutesSpin.value:g}"]
            return self.logic.request_from_folders(folders, Path(self.bundleEdit.currentPath), validation, extra)

        def _onStart(self) -> None:
            if not self._state.view().can_start:
                return  # a click that arrived while PyTorch was installing
            # tryWithErrorDisplay shows the error, then re-raises it: the state takes it from there.
            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Training could not start."), waitCursor=True),
                                     self._state.failed):
                self._startTraining()
            self._render()

        def _startTraining(self) -> None:
            request = self._request()
            if not self._ensureTorch():
                self._state.not_started(_("Training needs PyTorch, which was not installed."))
                return
            self._losses, self._valLosses = [], []
            self._lossPlot, self._plotting = None, True
            self._bundle = request.bundle
            self._run = self.logic.start(request)
            self._state.started()
            self._state.progress(0.0, _("Training on {count} scans...").format(count=len(request.images)))
            self._timer.start()

        def _onStop(self) -> None:
            if self._state.cancel_requested():
                self._render()
                self._run.stop()  # the timer then ends the run as stopped

        def _onTimer(self) -> None:
            reports = self._run.poll()
            for report in reports:
                fraction = self._state.fraction if report.fraction is None else report.fraction
                self._state.progress(fraction, report.message)
                if report.step is not None and report.loss is not None:
                    self._losses.append((report.step, report.loss))
                if report.step is not None and report.val_loss is not None:
                    self._valLosses.append((report.step, report.val_loss))
            if reports and self._losses and self._plotting:
                try:
                    self._updatePlot()
                except Exception:  # noqa: BLE001 - a plot that cannot be drawn must not stop following the run
                    logging.exception("PPR Training: the live loss plot could not be drawn; it stops here.")
                    self._plotting = False
            if self._run.finished():
                self._timer.stop()
                run, self._run = self._run, None
                with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("Training failed.")), self._state.failed):
                    self._onFinished(run.outcome())
            self._render()

        def _updatePlot(self) -> None:
            from PPRTrainingLib.loss_plot import LossPlot

            if self._lossPlot is None:
                self._lossPlot = LossPlot(slicer.mrmlScene)
                slicer.modules.plots.logic().ShowChartInLayout(self._lossPlot.chart)
            self._lossPlot.update(self._losses, self._valLosses)

        def _onFinished(self, outcome) -> None:
            if outcome.stopped:
                self._state.cancelled()
                return
            if not outcome.succeeded:
                self._state.failed(outcome.error_message)
                slicer.util.errorDisplay(outcome.error_message, windowTitle=_("PPR Training"))
                return
            self._state.succeeded(_("Model bundle written to {bundle} ({minutes} min).").format(
                bundle=self._bundle, minutes=f"{outcome.seconds / 60:.1f}"))
            self._render()
            # The bundle is there whatever happens to the report: a failed report is a note, not a failure.
            with shown_then_recorded(slicer.util.tryWithErrorDisplay(_("The training report could not be written.")),
                                     lambda error: self._state.note(_("No report: {reason}").format(reason=error))):
                if not self._ensureMatplotlib():
                    self._state.note(_("No report: it needs matplotlib, which was not installed."))
                    return
                report = self.logic.write_report(self._bundle)
                self._state.note(_("Report: {figure}").format(figure=report.figure))

        def _ensureTorch(self) -> bool:
            """PyTorch in Slicer's Python (the trainer runs there), from the PyTorch extension; False if declined."""
            from PositionRegressionADLib.devices import TORCH_REQUIREMENT, torch_too_old

            if importlib.util.find_spec("torch") is not None:
                problem = torch_too_old()
                if problem:
                    raise RuntimeError(problem)
                return True
            try:
                import PyTorchUtils
            except ImportError as error:
                raise RuntimeError(_(
                    "Training needs the PyTorch extension: install it with the Extensions Manager, "
                    "restart Slicer, then start the training again."
                )) from error
            self._state.installing()
            self._render()  # Start is disabled during the install: clicks meanwhile do nothing
            return PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is not None

        @staticmethod
        def _ensureMatplotlib() -> bool:
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                # Slicer's Python does not ship matplotlib; the report needs it.
                if not slicer.util.confirmOkCancelDisplay(_("The training report needs matplotlib. Install it now?")):
                    return False
                slicer.util.pip_install("matplotlib")
            return True

        def _render(self) -> None:
            """Draw the run state: the buttons, the progress bar, the status line."""
            view = self._state.view()
            self.startButton.enabled = view.can_start and self.dataFolderList.count > 0
            self.stopButton.enabled = view.can_cancel
            self.progressBar.visible = view.progress_visible
            self.progressBar.value = view.progress
            self.statusLabel.text = view.status

        def cleanup(self) -> None:
            # Closing Slicer must not leave a training process running without anyone watching it.
            self._timer.stop()
            if self._run is not None:
                self._run.stop()
                self._run = None
                self._state.cancelled()

    class PPRTrainingTest(ScriptedLoadableModuleTest):
        """Self-test inside Slicer: image collection and stopping a (fake) training process."""

        def setUp(self) -> None:
            slicer.mrmlScene.Clear()

        def runTest(self) -> None:
            self.setUp()
            self.test_ImagesInFolders()
            self.test_StopEndsTraining()

        def _tempFolder(self, name: str) -> Path:
            folder = Path(slicer.app.temporaryPath) / "PPRTrainingTest" / name
            folder.mkdir(parents=True, exist_ok=True)
            return folder

        def test_ImagesInFolders(self) -> None:
            folder = self._tempFolder("images")
            for name in ("case1.nii.gz", "case2.nrrd", "case1_mask.nii.gz", "notes.txt"):
                (folder / name).write_bytes(b"")
            request = PPRTrainingLogic().request_from_folders([folder], folder / "bundle")
            self.assertEqual([p.name for p in request.images], ["case1.nii.gz", "case2.nrrd"])

        def test_StopEndsTraining(self) -> None:
            from PPRTrainingLib.training_process import python_interpreter

            folder = self._tempFolder("fake")
            (folder / "case.nii.gz").write_bytes(b"")
            script = folder / "fake_trainer.py"
            script.write_text(
                "import sys, time\n"
                "for i in range(1000):\n"
                "    print(f'PROGRESS {i / 1000} step {i} loss 1.0', file=sys.stderr, flush=True)\n"
                "    time.sleep(0.05)\n"
            )
            logic = PPRTrainingLogic(command_prefix=[python_interpreter(), str(script)])
            run = logic.start(logic.request_from_folders([folder], folder / "bundle"))
            slicer.util.delayDisplay("Fake training started", 500)
            run.stop()
            outcome = run.wait()
            self.assertTrue(outcome.stopped)
            self.assertNotEqual(outcome.returncode, 0)
            self.delayDisplay("Test passed")
