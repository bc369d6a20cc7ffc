"""Calibrate a model on one's own scanner: a folder of healthy head CTs in, a new model bundle out.

Scores of a model calibrated elsewhere can be unreliable on another scanner's scans (the detector's
out-of-depth check says so). The remedy needs no training: ``python -m ppr calibrate MODEL FOLDER
--out NEW_BUNDLE`` measures the model's healthy error on the user's own healthy scans and writes a
copy of the model with that calibration (``ppr.workflows.calibrate.calibrate_bundle``). This runs it in a
child process, like a detection (PythonSlicer inside Slicer), with progress and cancel; the model
it started from is never changed. The module then uses the new bundle.

It does not touch the scene, draw widgets or install torch.

Usage, blocking (scripts, tests)::

    logic = CalibrationLogic()
    outcome = logic.calibrate(CalibrationRequest(model_path, Path("my-healthy-scans"),
                                                 default_output_folder(model_path, Path("my-healthy-scans"))))
    outcome.bundle_path, outcome.status()

Usage, polled from a GUI timer::

    run = logic.start(request)
    ... on each tick: run.process.take_progress(); if run.finished(): outcome = logic.finish(run)
    ... on Cancel: run.process.cancel(); logic.finish(run) raises CalibrationCancelled

The module's panel (``CalibrationPanel``: the run and its ``RunState``; the widget forwards the
click and its timer's ticks and draws ``panel.state.view()``)::

    panel = CalibrationPanel(CalibrationLogic())
    panel.click(model_path, scans_text, output_text, device)   # starts, or cancels a running one
    outcome = panel.tick()       # on each timer tick: the outcome once it succeeded, else None
    panel.running                # False: stop the timer
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PositionRegressionADLib.detection_logic import (
    DEVICES,
    check_model_path,
    child_environment,
    child_report,
    default_python_command,
)
from PositionRegressionADLib.process import ChildProcess, DetectionProcess, ProcessLauncher, ProcessOutcome, Progress
from PositionRegressionADLib.run_state import RunState, RunWords, untranslated
from ppr.errors import InputImageError, PPRError

# The stride the default model was calibrated at (scripts/train-default-model): the statistics of
# strides 2 and 4 differ by about 0.1 z on the dev scans, so detections at either are covered.
CALIBRATION_STRIDE = 2


# What the module's calibration panel says in each phase (``RunState(CALIBRATION_WORDS)``).
def calibration_words(_: Callable[[str], str] = untranslated) -> RunWords:
    """The words in the module's language (``_``: Slicer's translation function; see ``run_state``)."""
    return RunWords(start=_("Calibrate on my scanner"), cancel=_("Cancel calibration"),
                    cancelling=_("Cancelling..."), starting=_("Starting..."),
                    installing=_("Installing PyTorch (several minutes)..."),
                    cancelled=_("Calibration cancelled: no model was written."), failed=_("Calibration failed"))


CALIBRATION_WORDS = calibration_words()


class CalibrationFailedError(PPRError):
    """The calibration stopped with an error; the message says why (e.g. which scan failed)."""


class CalibrationCancelled(PPRError):
    """The user cancelled the calibration; no bundle was written."""


def default_output_folder(model_path: Path, scans_folder: Path) -> Path:
    """Where the new bundle goes unless the user says: beside the scans folder, named after both
    (``ppr-ctich-default`` + ``my-scanner`` -> ``<parent>/ppr-ctich-default-my-scanner``)."""
    scans_folder = Path(scans_folder)
    return scans_folder.parent / f"{Path(model_path).name}-{scans_folder.name}"


@dataclass(frozen=True)
class CalibrationRequest:
    """Which model to calibrate on which healthy scans (a folder of NIfTI / NRRD files or DICOM series
    folders), where the new bundle goes (a new or empty folder), and where the network runs."""

    model_path: Path
    scans: Path
    output: Path
    device: str = "auto"
    stride: int = CALIBRATION_STRIDE

    def __post_init__(self) -> None:
        for name in ("model_path", "scans", "output"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")

    def check(self) -> None:
        """Refuse what the child would refuse anyway, before starting it (clear, and at once)."""
        check_model_path(self.model_path)
        if not self.scans.is_dir():
            raise InputImageError(f"Choose the folder that holds your healthy scans ({self.scans} is not a folder).")
        if self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            raise InputImageError(f"{self.output} already exists and is not empty: choose a new folder for the "
                                  "calibrated model.")


@dataclass(frozen=True)
class CalibrationOutcome:
    """What ``ppr calibrate --json`` reported: the new bundle and its reference figures."""

    bundle_path: Path
    n_scans: int
    case_names: tuple[str, ...]
    overlay_threshold_z: float
    healthy_brain_median_z: tuple[float, float]

    @classmethod
    def from_report(cls, data: dict) -> "CalibrationOutcome":
        low, high = (float(v) for v in data["healthy_brain_median_z"])
        return cls(Path(data["bundle"]), int(data["n_scans"]), tuple(str(n) for n in data["case_names"]),
                   float(data["overlay_threshold_z"]), (low, high))

    def status(self) -> str:
        """One line for the panel."""
        low, high = self.healthy_brain_median_z
        return (f"Calibrated on {self.n_scans} scans: the model in use is now {self.bundle_path} "
                f"(overlay threshold z {self.overlay_threshold_z:.2f}; brain median z of your scans "
                f"{low:.2f} to {high:.2f}).")


@dataclass(frozen=True)
class CalibrationRun:
    """One calibration in progress: its request and its child process (``process.take_progress()``,
    ``process.cancel()``: a half-copied bundle is then removed by ``CalibrationLogic.finish``)."""

    request: CalibrationRequest
    process: DetectionProcess

    def finished(self) -> bool:
        return self.process.poll() is not None


class CalibrationLogic:
    """Calibrate model bundles in a child process (see the module docstring for usage).

    launcher: starts the child; tests pass one that runs ``ppr`` in this process, or a fake.
    python_command: the command line prefix that runs Python (``-m ppr calibrate ...`` follows).
    """

    def __init__(self, launcher: ProcessLauncher = ChildProcess, python_command: Sequence[str] | None = None) -> None:
        self.launcher = launcher
        self.python_command = list(python_command) if python_command else None

    def command(self, request: CalibrationRequest) -> list[str]:
        python = self.python_command or default_python_command()
        return [*python, "-m", "ppr", "calibrate", str(request.model_path), str(request.scans),
                "--out", str(request.output), "--device", request.device, "--stride", str(request.stride),
                "--json", "--progress"]

    def start(self, request: CalibrationRequest) -> CalibrationRun:
        request.check()
        return CalibrationRun(request, self.launcher(self.command(request), child_environment()))

    def finish(self, run: CalibrationRun) -> CalibrationOutcome:
        """Wait for the child and read its report; raises CalibrationCancelled / CalibrationFailedError."""
        outcome = run.process.outcome()
        if outcome.cancelled or outcome.returncode != 0:
            # ppr writes the bundle under a hidden name and renames it when complete: a killed child
            # may leave that half-copied folder behind.
            shutil.rmtree(run.request.output.with_name(f".{run.request.output.name}.partial"), ignore_errors=True)
        return _outcome_of(outcome)

    def finish_quietly(self, run: CalibrationRun) -> None:
        """Clean up after a run nobody waits for (cancelled on closing)."""
        try:
            self.finish(run)
        except PPRError:
            pass

    def calibrate(self, request: CalibrationRequest, on_progress: Callable[[Progress], None] | None = None,
                  poll_seconds: float = 0.1) -> CalibrationOutcome:
        """Run a calibration to the end (blocking)."""
        run = self.start(request)
        try:
            while not run.finished():
                for update in run.process.take_progress():
                    (on_progress or (lambda _: None))(update)
                time.sleep(poll_seconds)
            for update in run.process.take_progress():
                (on_progress or (lambda _: None))(update)
            return self.finish(run)
        except BaseException:
            if not run.finished():
                run.process.cancel()
            raise


def _outcome_of(outcome: ProcessOutcome) -> CalibrationOutcome:
    data = child_report(outcome, CalibrationCancelled("Calibration cancelled: no model was written."),
                        CalibrationFailedError, "The calibration refused the scans.", "calibration")
    try:
        return CalibrationOutcome.from_report(data)
    except (KeyError, TypeError, ValueError) as error:
        raise CalibrationFailedError("The calibration finished without a complete report; update the extension "
                                     "so the module and ppr match.") from error


class CalibrationPanel:
    """The module's calibration panel without Qt: one run at a time and the ``RunState`` it shows.

    Errors raised by ``click`` and ``tick`` are for the widget to show (``slicer.util.tryWithErrorDisplay``)
    and hand to ``state.failed`` (``run_state.shown_then_recorded``).
    """

    def __init__(self, logic: CalibrationLogic, words: RunWords = CALIBRATION_WORDS) -> None:
        self.logic = logic
        self.state = RunState(words)
        self.run: CalibrationRun | None = None

    @property
    def running(self) -> bool:
        return self.run is not None

    def click(self, model_path: Path, scans_text: str, output_text: str, device: str) -> None:
        """Start a calibration with what the panel holds (an empty output: ``default_output_folder``), or
        cancel the one under way."""
        if self.run is not None:
            if self.state.cancel_requested():
                self.run.process.cancel()  # the next tick ends the run as cancelled
            return
        if not str(scans_text).strip():
            raise InputImageError("Choose the folder that holds your healthy scans.")
        scans = Path(scans_text)
        output = Path(output_text) if str(output_text).strip() else default_output_folder(model_path, scans)
        self.run = self.logic.start(CalibrationRequest(model_path, scans, output, device=device))
        self.state.started()

    def tick(self) -> CalibrationOutcome | None:
        """Progress of the run; when it has ended, its outcome (None when cancelled; raises on failure)."""
        if self.run is None:
            return None
        for update in self.run.process.take_progress():
            self.state.progress(update.fraction, update.message)
        if not self.run.finished():
            return None
        run, self.run = self.run, None
        try:
            outcome = self.logic.finish(run)
        except CalibrationCancelled:
            self.state.cancelled()
            return None
        self.state.succeeded(outcome.status())
        return outcome

    def cancel(self) -> None:
        """Stop a run for good (the module is closing): no outcome will come."""
        if self.run is not None:
            self.run.process.cancel()
            self.logic.finish_quietly(self.run)
            self.run = None
