"""What the viewer works on: one head CT in a scene, its detection run, its results and their files.

Every step is a call into ``PositionRegressionADLib``, the same calls the Slicer module makes:
``load_volume`` to read a scan, ``DetectionLogic.start`` / ``take_progress`` / ``finish`` for a
detection with progress and cancel, ``set_overlay`` / ``set_overlay_threshold`` for the displayed
map over the slices (the calibrated z-map, or the error map of an uncalibrated model), ``table_row``
for the scores (``reliability_warning`` for the out-of-depth warning), ``save_scene_mrb`` / ``save_node`` / ``write_scores`` for the downloads. So the page
shows what Slicer shows, computed by one implementation.

It knows nothing about trame or the page (``app`` binds it to them) and it does not decide which
files may be read (``paths``, ``uploads``).

Usage::

    session = ViewerSession(SceneContext.create(cache_dir))
    session.load_scan(path, "ctich_051")
    session.start_detection(session.detection_options(bundle, device="cpu", stride=4))
    while not session.detection_finished(): session.take_progress(); time.sleep(0.2)
    results = session.finish_detection()      # raises DetectionCancelled after cancel_detection()
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import slicer

from PositionRegressionADLib.batch import write_scores
from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions, DetectionRun
from PositionRegressionADLib.process import Progress
from PositionRegressionADLib.report import REGION_LABELS, WARNING_COLUMN, reliability_warning, table_row
from PositionRegressionADLib.results import (
    DetectionResults,
    ResultDisplayOptions,
    remove_results,
    set_overlay,
    set_overlay_threshold,
)
from PositionRegressionADLib.scene_io import SceneContext, load_volume, save_node, save_scene_mrb
from ppr.errors import InputImageError, PPRError

DEFAULT_OVERLAY_OPACITY = 0.5


class SessionBusyError(PPRError):
    """The page asked for something that has to wait for the detection in progress."""


@dataclass(frozen=True)
class ScoreRow:
    """One line of the scores table as the page shows it.

    region: the region's key ("left_hemisphere", ...) for a region score, ``None`` otherwise.
    """

    label: str
    value: object
    unit: str
    region: str | None

    def text(self) -> str:
        """The value as the page prints it: numbers with two decimals, a missing score as "no score"."""
        if isinstance(self.value, float):
            return "no score" if math.isnan(self.value) else f"{self.value:.2f}"
        return str(self.value)


def region_of_column(column: str) -> str | None:
    """The region key of a scores-table column ("Left hemisphere" or "Left hemisphere p99"), else ``None``."""
    for key, label in REGION_LABELS.items():
        if column == label or column.startswith(label + " "):
            return key
    return None


def _remove_volume(scene: slicer.vtkMRMLScene, volume: slicer.vtkMRMLVolumeNode) -> None:
    """Take a volume out of the scene with its display and storage nodes."""
    helpers = [volume.GetNthDisplayNode(i) for i in range(volume.GetNumberOfDisplayNodes())]
    helpers += [volume.GetNthStorageNode(i) for i in range(volume.GetNumberOfStorageNodes())]
    scene.RemoveNode(volume)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


class ViewerSession:
    """One head CT at a time in ``context``'s scene, with at most one detection running on it.

    logic: the detection logic on the same scene (tests pass one with a fake process launcher).
    """

    def __init__(self, context: SceneContext, logic: DetectionLogic | None = None) -> None:
        self.context = context
        self.logic = logic or DetectionLogic(context.scene)
        self.input_volume: slicer.vtkMRMLScalarVolumeNode | None = None
        self.run: DetectionRun | None = None
        self.overlay_opacity = DEFAULT_OVERLAY_OPACITY

    @property
    def scene(self) -> slicer.vtkMRMLScene:
        return self.context.scene

    @property
    def running(self) -> bool:
        return self.run is not None

    def _refuse_while_running(self, what: str) -> None:
        if self.run is not None:
            raise SessionBusyError(f"A detection is running: wait for it to finish or cancel it before {what}.")

    # ---- input ------------------------------------------------------------------------------

    def load_scan(self, path: Path, name: str) -> slicer.vtkMRMLScalarVolumeNode:
        """Read a scan into the scene in place of the previous one (and its results), and show it."""
        self._refuse_while_running("loading another scan")
        volume = load_volume(self.context, Path(path), name)
        if volume.GetImageData().GetNumberOfScalarComponents() != 1:
            _remove_volume(self.scene, volume)
            raise InputImageError(f"{name} has colour components; a CT has one value per voxel: load the CT itself.")
        previous, self.input_volume = self.input_volume, volume
        if previous is not None:
            remove_results(self.scene, previous)
            _remove_volume(self.scene, previous)
        set_overlay(self.scene, volume, None, self.overlay_opacity)
        return volume

    # ---- detection --------------------------------------------------------------------------

    def detection_options(self, model_path: Path, device: str, stride: int) -> DetectionOptions:
        """Options of a run with the page's choices; the overlay keeps the opacity the user set."""
        return DetectionOptions(model_path=Path(model_path), device=device, stride=stride,
                                display=ResultDisplayOptions(overlay_opacity=self.overlay_opacity))

    def start_detection(self, options: DetectionOptions) -> DetectionRun:
        """Start detecting in the loaded scan (the scene is changed only when the run finishes)."""
        self._refuse_while_running("starting another")
        if self.input_volume is None:
            raise InputImageError("Load a head CT first (the sample, a scan of the data folder, or an upload).")
        self.run = self.logic.start(self.input_volume, options)
        return self.run

    def take_progress(self) -> list[Progress]:
        return self.run.take_progress() if self.run is not None else []

    def detection_finished(self) -> bool:
        return self.run is None or self.run.finished()

    def cancel_detection(self) -> None:
        """Stop the running detection; ``finish_detection`` then raises ``DetectionCancelled``."""
        if self.run is not None:
            self.run.cancel()

    def finish_detection(self) -> DetectionResults:
        """Add the finished run's results to the scene and move the slices to the highest error.

        Raises what the Lib raises: ``DetectionCancelled``, ``DetectionFailedError`` (message for the user) ...
        The scene is unchanged after a failure, and a new detection can start either way.
        """
        if self.run is None:
            raise SessionBusyError("No detection is running.")
        run, self.run = self.run, None
        results = self.logic.finish(run)
        self.jump_to_highest_error()
        return results

    # ---- results ----------------------------------------------------------------------------

    @property
    def results(self) -> DetectionResults | None:
        return self.logic.results(self.input_volume) if self.input_volume is not None else None

    def _require_results(self) -> DetectionResults:
        results = self.results
        if results is None:
            raise InputImageError("There are no results yet: click Detect anomalies first.")
        return results

    def set_overlay_threshold(self, threshold: float) -> None:
        """Show the displayed map at or above ``threshold`` only, in its unit (``overlay_unit``)."""
        set_overlay_threshold(self._require_results(), float(threshold))

    def set_overlay_opacity(self, opacity: float) -> None:
        """Opacity of the displayed map over the scan in every slice view (kept for later runs)."""
        self.overlay_opacity = min(max(float(opacity), 0.0), 1.0)
        results = self.results
        if self.input_volume is not None:
            set_overlay(self.scene, self.input_volume, results.displayed_map if results else None,
                        self.overlay_opacity)

    def overlay_unit(self) -> str:
        """"z" when the overlay is the calibrated z-map, "mm" when it is the error map."""
        return self._require_results().displayed_map_kind

    def overlay_threshold(self) -> float:
        """The displayed map's current threshold, in ``overlay_unit``."""
        return float(self._require_results().displayed_map.GetDisplayNode().GetLowerThreshold())

    def overlay_range(self) -> tuple[float, float]:
        """The displayed map's colour window, in ``overlay_unit``: the range a threshold slider spans."""
        display = self._require_results().displayed_map.GetDisplayNode()
        return display.GetWindowLevelMin(), display.GetWindowLevelMax()

    def jump_to_highest_error(self) -> tuple[float, float, float]:
        """Move every slice view's plane through the highest-error point; returns it (RAS mm).

        The planes move but the views keep their framing (offset jump), so the whole head stays in
        sight with the error map's peak on all three slices.
        """
        point = self._require_results().max_error_ras
        slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, *point, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
        return point

    def score_rows(self) -> list[ScoreRow]:
        """The scores table, region scores first (in the Lib's region order), then how the run was made;
        the out-of-depth warning is not a row (``reliability_warning``)."""
        table = self._require_results().scores
        rows = [ScoreRow(label, value, table.GetColumnUnitLabel(label) or "", region_of_column(label))
                for label, value in table_row(table).items() if label != WARNING_COLUMN]
        order = list(REGION_LABELS)
        return sorted(rows, key=lambda row: order.index(row.region) if row.region else len(order))

    def reliability_warning(self) -> str:
        """Why this scan's scores are not reliable and what to do, in plain words ("" when they are,
        or when the model is not calibrated): the detector's out-of-depth check."""
        return reliability_warning(self._require_results().scores)

    # ---- downloads --------------------------------------------------------------------------

    def write_scene(self, path: Path) -> Path:
        """The whole scene with the scan and its results as one .mrb file (opens in Slicer)."""
        self._require_results()
        return save_scene_mrb(self.scene, path)

    def write_error_map(self, path: Path) -> Path:
        """The error map on the scan's grid (NIfTI when ``path`` ends in .nii.gz)."""
        return save_node(self._require_results().error_map, path)

    def write_z_map(self, path: Path) -> Path:
        """The calibrated z-map on the scan's grid; refused when the model is not calibrated."""
        z_map = self._require_results().z_map
        if z_map is None:
            raise InputImageError("This model is not calibrated, so there is no z-map: download the error map.")
        return save_node(z_map, path)

    def write_position_z_map(self, path: Path) -> Path:
        """The position error's own z-map ("PPR position error") on the scan's grid; refused when the
        model has no anomaly map (then the z-map is the position z-map itself)."""
        position_z_map = self._require_results().position_z_map
        if position_z_map is None:
            raise InputImageError("This model shows the position error's z-map itself: download the z-map.")
        return save_node(position_z_map, path)

    def write_scores_csv(self, path: Path) -> Path:
        """One row in the batch command's scores.csv format."""
        results = self._require_results()
        row = {"Scan": self.input_volume.GetName(), "Status": "ok", "Reason": "", **table_row(results.scores)}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_scores(Path(path), [row])
        return Path(path)
