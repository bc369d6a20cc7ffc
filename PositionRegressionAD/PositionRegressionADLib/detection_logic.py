"""The Logic: detect anomalies in a volume node of a scene, without Qt.

The heavy work runs in a child process (``python -m ppr detect ... --json --progress``; PythonSlicer
inside Slicer) on the input exported to a temporary NIfTI by a storage node, so Slicer never freezes
and cancel can kill it. The scene is touched only when the child has finished and every result is
built: a failed or cancelled run adds no node, leaves no temporary file, and the input volume node
is never modified. Running again on the same input replaces its previous results.

It does not draw widgets, install torch, or render images (``rendering``), and it does not read
files for the user (``scene_io``).

Usage, blocking (batch, tests)::

    logic = DetectionLogic(scene)
    results = logic.detect(volume_node, DetectionOptions(model_path=default_model_path()),
                           on_progress=lambda p: print(f"{p.fraction:.0%} {p.message}"))
    results.error_map, results.skull_surface, results.scores, results.candidates
    results.z_map             # calibrated model: the shown z-map, the anomaly map when the model has an
                              # intensity atlas (else None)
    results.position_z_map    # with an anomaly map: the position error's own z-map, "PPR position error"
    results.displayed_map     # what the overlay, the surface and the candidates show

Usage, polled from a GUI timer::

    run = logic.start(volume_node, options)
    ... on each tick: run.take_progress(); if run.finished(): results = logic.finish(run)
    ... on Cancel: run.cancel(); logic.finish(run) raises DetectionCancelled
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import slicer

from PositionRegressionADLib.process import ChildProcess, DetectionProcess, ProcessLauncher, ProcessOutcome, Progress
from PositionRegressionADLib.report import DetectionReport
from PositionRegressionADLib.results import (
    ROLE_ATTRIBUTE,
    DetectionResults,
    ResultDisplayOptions,
    add_results_to_scene,
    build_results,
    find_results,
)
from ppr.cli.orphan import CLEANUP_VARIABLE, PARENT_VARIABLE
from ppr.errors import BundleError, InputImageError, PPRError
from ppr.image.imageio import read_image
from ppr.image.validation import check_volume

PREVIEW_STRIDE = 4
FULL_RESOLUTION_STRIDE = 1
DEVICES = ("auto", "cuda", "cpu")
# The folder holding ``ppr`` and this package: the child imports ppr from it.
MODULE_DIR = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_PATH = MODULE_DIR / "Resources" / "Models" / "ppr-ctich-default"
INPUT_FILE_NAME = "input.nii.gz"
ERROR_MAP_FILE_NAME = "error_map.nii.gz"


class DetectionFailedError(PPRError):
    """The detector stopped with an error; the message says why and what to do."""


class DetectionCancelled(PPRError):
    """The user cancelled the detection; nothing was added to the scene."""


def default_model_path() -> Path:
    """The model bundle that ships with the extension."""
    return DEFAULT_MODEL_PATH


def check_model_path(path: Path) -> Path:
    """``path`` if a model bundle is there, else a ``BundleError`` saying what to do."""
    path = Path(path)
    if not path.exists():
        hint = ("The default model ships with the extension: reinstall the extension, or"
                if path == DEFAULT_MODEL_PATH else "Check the path, or")
        raise BundleError(f"No model bundle was found at {path}. {hint} choose another model bundle "
                          "(batch: --model BUNDLE; in Slicer: untick 'Use the bundled model').")
    return path


@dataclass(frozen=True)
class DetectionOptions:
    """How to detect: which model bundle, where the network runs, how fine the error map is.

    stride: the error map is computed every ``stride`` voxels of the model grid and interpolated
        between (``PREVIEW_STRIDE`` = 4 is quick, ``FULL_RESOLUTION_STRIDE`` = 1 is the paper's).
    device: "auto" (GPU when there is one), "cuda" or "cpu".
    use_calibration: with a calibrated model, compute the z-map and score regions on it; False
        ignores the calibration (error in mm only, to compare).
    """

    model_path: Path = DEFAULT_MODEL_PATH
    device: str = "auto"
    stride: int = PREVIEW_STRIDE
    display: ResultDisplayOptions = field(default_factory=ResultDisplayOptions)
    use_calibration: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_path", Path(self.model_path))
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1, got {self.stride}")


def default_python_command() -> list[str]:
    """How to start a Python that can import ppr and torch: PythonSlicer inside Slicer."""
    if hasattr(slicer, "app"):
        python_slicer = shutil.which("PythonSlicer")
        if python_slicer is None:
            raise DetectionFailedError("PythonSlicer was not found next to Slicer: reinstall Slicer.")
        return [python_slicer]
    return [sys.executable]


def child_environment(cleanup: Path | None = None) -> dict[str, str]:
    """The caller's environment with this module's folder first on PYTHONPATH (for ``import ppr``),
    and this process named as the child's parent: the child ends when this process dies, removing
    ``cleanup`` (the run's temporary folder) first (``ppr.cli.orphan``)."""
    env = dict(os.environ)
    env[PARENT_VARIABLE] = str(os.getpid())
    env.pop(CLEANUP_VARIABLE, None)
    if cleanup is not None:
        env[CLEANUP_VARIABLE] = str(cleanup)
    paths = [str(MODULE_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


class DetectionRun:
    """One detection in progress: its child process and its temporary folder."""

    def __init__(self, input_volume_id: str, options: DetectionOptions, process: DetectionProcess,
                 work_dir: Path) -> None:
        self.input_volume_id = input_volume_id
        self.options = options
        self.process = process
        self.work_dir = work_dir

    @property
    def error_map_path(self) -> Path:
        return self.work_dir / ERROR_MAP_FILE_NAME

    def take_progress(self) -> list[Progress]:
        return self.process.take_progress()

    def finished(self) -> bool:
        return self.process.poll() is not None

    def cancel(self) -> None:
        """Kill the child and everything it started, and delete the temporary files."""
        self.process.cancel()
        self.cleanup()

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


class DetectionLogic:
    """Detect anomalies in scalar volume nodes of ``scene`` (see the module docstring for usage).

    launcher: starts the child; tests pass a fake that implements ``DetectionProcess``.
    python_command: the command line prefix that runs Python (``-m ppr ...`` follows).
    work_dir: where the temporary folders of runs go (the system's temporary folder by default).
    """

    def __init__(self, scene: slicer.vtkMRMLScene, launcher: ProcessLauncher = ChildProcess,
                 python_command: Sequence[str] | None = None, work_dir: Path | None = None) -> None:
        self.scene = scene
        self.launcher = launcher
        self.python_command = list(python_command) if python_command else None
        self.work_dir = work_dir

    def start(self, input_volume: slicer.vtkMRMLScalarVolumeNode, options: DetectionOptions) -> DetectionRun:
        """Export the input and start the detector; the scene is not changed."""
        _check_input(self.scene, input_volume)
        check_model_path(options.model_path)
        work_dir = Path(tempfile.mkdtemp(prefix="ppr-detect-", dir=self.work_dir))
        try:
            input_path = _export_volume(input_volume, work_dir / INPUT_FILE_NAME)
            command = self.detect_command(input_path, work_dir / ERROR_MAP_FILE_NAME, options)
            process = self.launcher(command, child_environment(cleanup=work_dir))
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        return DetectionRun(input_volume.GetID(), options, process, work_dir)

    def detect_command(self, input_path: Path, error_map_path: Path, options: DetectionOptions) -> list[str]:
        python = self.python_command or default_python_command()
        # No --z-out nor --position-z-out: the z-map and (with an anomaly map) the position z-map land
        # beside the error map (inside the run's folder), and the report names them.
        return [*python, "-m", "ppr", "detect", str(input_path), "--model", str(options.model_path),
                "--out", str(error_map_path), "--device", options.device, "--stride", str(options.stride),
                "--json", "--progress"] + ([] if options.use_calibration else ["--no-calibration"])

    def finish(self, run: DetectionRun) -> DetectionResults:
        """Wait for the child, then add its results to the scene; always removes the temporary files."""
        try:
            outcome = run.process.outcome()
            report = _report_of(outcome, run.options)
            _check_inside(report.z_map, run.work_dir)
            _check_inside(report.position_z_map, run.work_dir, "position z-map")
            input_volume = self.scene.GetNodeByID(run.input_volume_id)
            if input_volume is None:
                raise DetectionFailedError("The input volume was removed from the scene during detection.")
            built = build_results(input_volume, run.error_map_path, report, run.options.display)
            return add_results_to_scene(self.scene, input_volume, built, run.options.display)
        finally:
            run.cleanup()

    def detect(self, input_volume: slicer.vtkMRMLScalarVolumeNode, options: DetectionOptions,
               on_progress: Callable[[Progress], None] | None = None,
               should_cancel: Callable[[], bool] | None = None, poll_seconds: float = 0.1) -> DetectionResults:
        """Run a detection to the end and return its results (blocking)."""
        report = on_progress or (lambda update: None)
        report(Progress(0.0, "Exporting the input"))
        run = self.start(input_volume, options)
        try:
            while not run.finished():
                if should_cancel is not None and should_cancel():
                    run.cancel()
                    break
                for update in run.take_progress():
                    report(update)
                time.sleep(poll_seconds)
            for update in run.take_progress():
                report(update)
            if run.process.poll() == 0:
                report(Progress(1.0, "Adding the results to the scene"))
            return self.finish(run)
        except BaseException:
            # Ctrl+C or a failing callback must not leave the child running.
            if not run.finished():
                run.cancel()
            run.cleanup()
            raise

    def results(self, input_volume: slicer.vtkMRMLNode) -> DetectionResults | None:
        """The input's results already in the scene (e.g. after loading a saved scene)."""
        return find_results(self.scene, input_volume)


def first_input_volume(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The first volume of the scene that can be a CT to examine: not a label map, not a result of ours
    (error map, z-map), so a panel's first pick is never one of those."""
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if (node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
                and not node.GetAttribute(ROLE_ATTRIBUTE)):
            return node
    return None


def result_volume_ids(scene: slicer.vtkMRMLScene) -> list[str]:
    """IDs of the volumes our detections made (error maps, z-maps, position z-maps): never an input, so a
    panel hides them."""
    return [node.GetID() for node in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
            if node.IsA("vtkMRMLVolumeNode") and node.GetAttribute(ROLE_ATTRIBUTE)]


def _check_input(scene: slicer.vtkMRMLScene, volume: slicer.vtkMRMLNode | None) -> None:
    if volume is None or not volume.IsA("vtkMRMLScalarVolumeNode") or volume.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputImageError("Select a CT volume (a scalar volume) as input.")
    if scene.GetNodeByID(volume.GetID()) is not volume:
        raise InputImageError(f"The volume {volume.GetName()!r} is not in this scene: load it first.")
    image = volume.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputImageError(f"The volume {volume.GetName()!r} holds no voxels: load the scan again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputImageError(f"The volume {volume.GetName()!r} has {image.GetNumberOfScalarComponents()} "
                              "components; a CT has one: choose the CT itself, not a colour image.")
    _check_source_file(volume)


def _check_source_file(volume: slicer.vtkMRMLScalarVolumeNode) -> None:
    """A volume Slicer read from a NIfTI file is checked on that file with the detector's reader: Slicer's
    NIfTI reader fills a truncated file's missing slices and NaN voxels with 0, which the exported copy
    could no longer show."""
    storage = volume.GetStorageNode()
    name = storage.GetFileName() if storage is not None else None
    if name and name.lower().endswith((".nii", ".nii.gz")) and Path(name).is_file():
        check_volume(read_image(name))


def _export_volume(volume: slicer.vtkMRMLScalarVolumeNode, path: Path) -> Path:
    """Write the volume's voxels and geometry to ``path`` without touching the node or the scene."""
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)  # written once and read once: compressing costs time only
    if not storage.WriteData(volume) or not path.is_file():
        raise DetectionFailedError(f"The input could not be written to the temporary folder {path.parent}: "
                                   "check the free disk space.")
    return path


def _check_inside(path: str | None, work_dir: Path, what: str = "z-map") -> None:
    """A reported map (z-map, position z-map) must be in the run's folder: that is the only place
    cleaned up and trusted."""
    if path is not None and Path(work_dir).resolve() not in Path(path).resolve().parents:
        raise DetectionFailedError(f"The detector wrote its {what} outside its work folder ({path}): "
                                   "update the extension so the detector and the module match.")


def child_report(outcome: ProcessOutcome, cancelled: PPRError, failed: type[PPRError], refused: str,
                 child: str) -> dict:
    """The JSON object a ``ppr ... --json`` child printed last; else the error its ending says
    (``cancelled`` raised as it is; ``failed`` with the child's own message when it refused, exit 2)."""
    if outcome.cancelled:
        raise cancelled
    if outcome.returncode == 2:
        raise failed(outcome.error_message() or refused)
    if outcome.returncode != 0:
        raise failed(
            f"The {child} stopped unexpectedly (exit code {outcome.returncode}). Its last words:\n"
            f"{outcome.error_message() or '(nothing)'}\nPlease report this with the Slicer log.")
    lines = [line for line in outcome.stdout.splitlines() if line.strip()]
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as error:
        raise failed(f"The {child} finished without reporting its result; "
                     f"update the extension so the {child} and the module match.") from error


def _report_of(outcome: ProcessOutcome, options: DetectionOptions) -> DetectionReport:
    data = child_report(outcome, DetectionCancelled("Detection cancelled."), DetectionFailedError,
                        "The detector refused the input.", "detector")
    return DetectionReport.from_json_dict(data, model=options.model_path.name)
