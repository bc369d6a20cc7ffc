"""Turn a finished detection into scene nodes: error map and z-map overlays, skull surface, scores, candidates.

Two steps, so a failure never leaves half a result in the scene: ``build_results`` computes every
node detached from any scene (error map, and with a calibrated model the z-map, read from the
child's files; skull surface with the displayed map probed at each point; scores table; "Anomaly
candidates" segmentation); ``add_results_to_scene`` then removes the input's previous results and
adds the new ones with their display settings.

With a model that carries an intensity atlas the detector's z-map is the anomaly map ("<input> anomaly
map": the scan's density against healthy heads at the same place, raised where the position error is
unusual too), and the position error's own z-map comes as a volume of its own ("<input> PPR position
error", role ``ROLE_POSITION_Z_MAP``, with its own threshold and colour window). It is not shown by
default: the overlay and the candidates show the anomaly map, the skull surface the position error
(the anomaly map is 0 on bone); the region scores are the position z's (the detector's). Without an atlas the z-map is the position z-map ("<input> anomaly
z-map") and there is no separate position node.

The displayed map (slice overlay, surface colours, candidates) is the z-map with the calibrated
threshold when the model is calibrated: on real scans the raw error is dominated by the neck and
shoulders, so a threshold on it shows nothing inside the head, while z says how unusual the error
is for each place. ``overlay_threshold_z`` overrides the calibrated threshold; a threshold in mm
(``overlay_threshold_mm``) can only mean the error map, so it shows the error map instead. Without
a calibration the error map is displayed as before (threshold: a percentile of its support). The
error map node stays in the scene either way, with its own display settings.

All result nodes carry a reference to their input volume (role ``INPUT_REFERENCE_ROLE``) and their
kind (attribute ``ROLE_ATTRIBUTE``), so they are found again after a scene is saved and reloaded.
This module does not run the detection and does not render images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk

from PositionRegressionADLib.candidates import build_candidates
from PositionRegressionADLib.colormap import (
    build_inferno_color_table,
    build_surface_color_table,
    existing_inferno_color_table,
    existing_surface_color_table,
    surface_scalar_range,
)
from PositionRegressionADLib.geometry import ijk_to_ras, matrix_array, voxel_to_ras
from PositionRegressionADLib.report import DetectionReport, ResultImportError, build_scores_table
from PositionRegressionADLib.skull_surface import (
    ERROR_ARRAY_NAME,
    Z_ARRAY_NAME,
    bone_threshold,
    build_skull_surface,
)
from ppr.errors import BundleError

ROLE_ATTRIBUTE = "PositionRegressionAD.Role"
INPUT_REFERENCE_ROLE = "positionRegressionInput"
MAX_ERROR_ATTRIBUTE = "PositionRegressionAD.MaxErrorRAS"
THRESHOLD_ATTRIBUTE = "PositionRegressionAD.OverlayThresholdMM"
THRESHOLD_Z_ATTRIBUTE = "PositionRegressionAD.OverlayThresholdZ"
CALIBRATED_THRESHOLD_Z_ATTRIBUTE = "PositionRegressionAD.CalibratedThresholdZ"
# On the error map node (always present): which map the overlay shows, "z" or "mm".
DISPLAYED_MAP_ATTRIBUTE = "PositionRegressionAD.DisplayedMap"
# On the z-map node: what it holds, the detector's "shown_map" ("anomaly" or "position z").
SHOWN_MAP_ATTRIBUTE = "PositionRegressionAD.ShownMap"

ROLE_ERROR_MAP = "ErrorMap"
ROLE_SKULL_SURFACE = "SkullSurface"
ROLE_SCORES = "Scores"
ROLE_CANDIDATES = "AnomalyCandidates"
ROLE_Z_MAP = "ZMap"
ROLE_POSITION_Z_MAP = "PositionZMap"
# Every complete result has these; the z-map only when the model is calibrated, the position z-map
# only when the z-map is the anomaly map (a model with an intensity atlas).
RESULT_ROLES = (ROLE_ERROR_MAP, ROLE_SKULL_SURFACE, ROLE_SCORES, ROLE_CANDIDATES)
OPTIONAL_RESULT_ROLES = (ROLE_Z_MAP, ROLE_POSITION_Z_MAP)
# Names of the map volumes after the input's name.
Z_MAP_NAME = "anomaly z-map"  # the position z-map when it is the shown map (no intensity atlas)
ANOMALY_MAP_NAME = "anomaly map"
POSITION_Z_MAP_NAME = "PPR position error"
MAP_KINDS = ("z", "mm")
# Geometry written to NIfTI by the child comes back as float32: allow that rounding, nothing more.
GEOMETRY_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class ResultDisplayOptions:
    """How results are shown.

    overlay_threshold_mm: error below this is transparent in the slice overlay and outside the
        anomaly candidates. Given, the error map is the displayed map even when the model is
        calibrated (a threshold in mm means the error map). ``None``: the z-map with its threshold
        when calibrated; without calibration the ``threshold_percentile`` of the error inside the
        error map's support (also the error map node's own threshold when the z-map is displayed).
    overlay_threshold_z: z below this is transparent and outside the candidates, instead of the
        calibrated threshold; only for calibrated models (others have no z-map).
    overlay_opacity: opacity of the error map over the input in the slice views (0..1).
    bone_threshold: input intensity at which the skull surface is drawn; ``None`` chooses it from
        the input (near the maximum for window-clipped exports, 300 HU otherwise).
    min_candidate_volume_mm3: smaller connected regions above threshold are not candidates.
    max_candidates: keep only this many candidates, the largest first.
    """

    overlay_threshold_mm: float | None = None
    threshold_percentile: float = 98.0
    overlay_opacity: float = 0.5
    bone_threshold: float | None = None
    min_candidate_volume_mm3: float = 50.0
    max_candidates: int = 10
    overlay_threshold_z: float | None = None

    def __post_init__(self) -> None:
        if self.overlay_threshold_mm is not None and self.overlay_threshold_z is not None:
            raise ValueError("give the overlay threshold in mm or in z, not both")
        if not 0.0 <= self.overlay_opacity <= 1.0:
            raise ValueError(f"overlay_opacity must be within 0..1, got {self.overlay_opacity}")
        if not 0.0 < self.threshold_percentile < 100.0:
            raise ValueError(f"threshold_percentile must be within (0, 100), got {self.threshold_percentile}")


@dataclass
class BuiltResults:
    """Result nodes computed but not yet in a scene.

    threshold_mm, color_range_mm: the error map's own display; z_map, threshold_z, color_range_z:
    the z-map's (None without calibration); displayed_map_kind: which of the two is the overlay.
    shown_map: what the z-map holds ("anomaly", "position z", "none"); position_z_map,
    position_threshold_z, position_color_range_z: the position error's own z-map and its display
    (only beside an anomaly map, never the overlay by default). surface_shows_position: the skull
    surface is coloured by the position z-map (beside an anomaly map, which is 0 on bone), else by
    the displayed map.
    """

    error_map: slicer.vtkMRMLScalarVolumeNode
    skull_surface: vtk.vtkPolyData
    scores: slicer.vtkMRMLTableNode
    candidates: slicer.vtkMRMLSegmentationNode
    threshold_mm: float
    color_range_mm: tuple[float, float]
    max_error_ras: tuple[float, float, float]
    z_map: slicer.vtkMRMLScalarVolumeNode | None = None
    threshold_z: float | None = None
    color_range_z: tuple[float, float] | None = None
    calibrated_threshold_z: float | None = None
    displayed_map_kind: str = "mm"
    shown_map: str = "none"
    position_z_map: slicer.vtkMRMLScalarVolumeNode | None = None
    position_threshold_z: float | None = None
    position_color_range_z: tuple[float, float] | None = None
    surface_shows_position: bool = False


@dataclass(frozen=True)
class DetectionResults:
    """The result nodes of one input volume, as they are in the scene.

    z_map: the calibrated z-map, None when the model is not calibrated: the anomaly map ("<input>
    anomaly map") when the model has an intensity atlas, else the position z-map ("<input> anomaly z-map").
    position_z_map: beside an anomaly map, the position error's own z-map ("<input> PPR position
    error"), else None. ``displayed_map`` is the map shown over the slices, on the surface and cut into
    candidates.
    """

    error_map: slicer.vtkMRMLScalarVolumeNode
    skull_surface: slicer.vtkMRMLModelNode
    scores: slicer.vtkMRMLTableNode
    candidates: slicer.vtkMRMLSegmentationNode
    z_map: slicer.vtkMRMLScalarVolumeNode | None = None
    position_z_map: slicer.vtkMRMLScalarVolumeNode | None = None

    @property
    def max_error_ras(self) -> tuple[float, float, float]:
        """The most anomalous point (RAS): highest z inside brain and skull when calibrated, else highest error."""
        return tuple(float(v) for v in self.error_map.GetAttribute(MAX_ERROR_ATTRIBUTE).split())

    @property
    def threshold_mm(self) -> float:
        """The error map's own overlay threshold (mm), whichever map is displayed."""
        return float(self.error_map.GetAttribute(THRESHOLD_ATTRIBUTE))

    @property
    def threshold_z(self) -> float | None:
        """The z-map's overlay threshold, None without a z-map."""
        return None if self.z_map is None else float(self.z_map.GetAttribute(THRESHOLD_Z_ATTRIBUTE))

    @property
    def calibrated_threshold_z(self) -> float | None:
        """The calibration's overlay threshold as the detector reported it, None without a z-map."""
        return None if self.z_map is None else float(self.z_map.GetAttribute(CALIBRATED_THRESHOLD_Z_ATTRIBUTE))

    @property
    def position_threshold_z(self) -> float | None:
        """The position z-map's own overlay threshold (the calibration's), None without that map."""
        return None if self.position_z_map is None else float(self.position_z_map.GetAttribute(THRESHOLD_Z_ATTRIBUTE))

    @property
    def shown_map(self) -> str:
        """What the z-map holds: "anomaly" (anomaly map), "position z" (position z-map) or "none" (no z-map)."""
        if self.z_map is None:
            return "none"
        return self.z_map.GetAttribute(SHOWN_MAP_ATTRIBUTE) or "position z"  # scenes from before the attribute

    @property
    def score_map(self) -> str:
        """What the region scores are in: "z" (calibrated model) or "mm"."""
        return "z" if self.z_map is not None else "mm"

    @property
    def displayed_map_kind(self) -> str:
        """"z" when the z-map is the overlay, "mm" when the error map is."""
        kind = self.error_map.GetAttribute(DISPLAYED_MAP_ATTRIBUTE)
        return "z" if kind == "z" and self.z_map is not None else "mm"

    @property
    def displayed_map(self) -> slicer.vtkMRMLScalarVolumeNode:
        """The map shown over the slices, on the skull surface and cut into anomaly candidates."""
        return self.z_map if self.displayed_map_kind == "z" else self.error_map

    @property
    def overlay_threshold(self) -> float:
        """Threshold of the displayed map, in its unit (``displayed_map_kind``)."""
        return self.threshold_z if self.displayed_map_kind == "z" else self.threshold_mm

    def nodes(self) -> list[slicer.vtkMRMLNode]:
        return [self.error_map, self.skull_surface, self.scores, self.candidates] + [
            node for node in (self.z_map, self.position_z_map) if node is not None]


# ---------------------------------------------------------------------------------------------
# Error map


def read_error_map(path: Path, input_volume: slicer.vtkMRMLScalarVolumeNode, name: str,
                   what: str = "error map") -> slicer.vtkMRMLScalarVolumeNode:
    """Read a map the child wrote (input space: error map or z-map) into a detached volume node
    with the input's geometry.

    The map must be on the input's grid (ppr resamples model space -> input space); a grid that
    differs by more than float32 rounding means the detector and the input disagree.
    """
    if not Path(path).is_file():
        raise ResultImportError(f"The detection did not write its {what} ({path}).")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    # Only this file: an archetype reader may otherwise gather similarly named files into a series.
    storage.SetSingleFile(True)
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ResultImportError(f"The {what} {path} could not be read.")
    _check_same_grid(node, input_volume, what)
    node.SetIJKToRASMatrix(ijk_to_ras(input_volume))  # drop the float32 rounding of the file
    node.SetName(name)
    return node


def _check_same_grid(error_map: slicer.vtkMRMLVolumeNode, input_volume: slicer.vtkMRMLVolumeNode,
                     what: str = "error map") -> None:
    got, want = error_map.GetImageData().GetDimensions(), input_volume.GetImageData().GetDimensions()
    if got != want:
        raise ResultImportError(f"The {what} has {got} voxels but the input has {want}: "
                                "the detector did not map its result back onto the input's grid.")
    difference = np.abs(matrix_array(ijk_to_ras(error_map)) - matrix_array(ijk_to_ras(input_volume)))
    # Compare corner positions, not matrix entries, so the tolerance reads in millimetres.
    corners = np.array([[i, j, k, 1.0] for i in (0, want[0]) for j in (0, want[1]) for k in (0, want[2])])
    if (np.abs(corners @ difference.T)[:, :3]).max() > GEOMETRY_TOLERANCE_MM:
        raise ResultImportError(f"The {what} does not lie on the input's grid (origin, spacing or "
                                "direction differ): the detector and the input disagree on geometry.")


def error_array(error_map: slicer.vtkMRMLScalarVolumeNode) -> np.ndarray:
    """Voxels of the error map as a (k, j, i) float array (a view: do not modify)."""
    return slicer.util.arrayFromVolume(error_map)


def overlay_threshold_mm(errors: np.ndarray, options: ResultDisplayOptions) -> float:
    """The threshold under which error is not shown: the given one, or a percentile of the support."""
    if options.overlay_threshold_mm is not None:
        return float(options.overlay_threshold_mm)
    support = errors[errors > 0]
    if support.size == 0:
        return 0.0
    return float(np.percentile(support, options.threshold_percentile))


def color_range_mm(errors: np.ndarray, threshold_mm: float) -> tuple[float, float]:
    """Colour window shared by the overlay and the surface: 0 to a robust maximum above threshold."""
    support = errors[errors > 0]
    top = float(np.percentile(support, 99.9)) if support.size else 1.0
    return 0.0, max(top, threshold_mm * 1.25, 1e-6)


def color_range_z(z: np.ndarray, threshold_z: float) -> tuple[float, float]:
    """Colour window of a z-map: 0 ("as usual") to a robust maximum of the head above threshold.

    Negative z (less error than usual) takes the darkest colour; outside the head z is exactly 0.
    """
    support = z[z != 0]
    top = float(np.percentile(support, 99.9)) if support.size else 1.0
    return 0.0, max(top, threshold_z * 1.25, 1e-6)


def lps_to_ras(point_lps: tuple[float, float, float]) -> tuple[float, float, float]:
    """A point of the detector's LPS space (the exported input's) in the input's local RAS."""
    x, y, z = (float(v) for v in point_lps)
    return -x, -y, z


def max_error_ras(error_map: slicer.vtkMRMLScalarVolumeNode) -> tuple[float, float, float]:
    """RAS position of the voxel with the highest error."""
    errors = error_array(error_map)
    k, j, i = np.unravel_index(int(np.argmax(errors)), errors.shape)
    return voxel_to_ras(error_map, (float(i), float(j), float(k)))


# ---------------------------------------------------------------------------------------------
# Build and add


def build_results(input_volume: slicer.vtkMRMLScalarVolumeNode, error_map_path: Path, report: DetectionReport,
                  options: ResultDisplayOptions) -> BuiltResults:
    """Every result of one detection, computed without touching any scene.

    The z-map is read from the path the report names (``report.z_map``), when it names one, and so is
    the position error's own z-map (``report.position_z_map``, beside an anomaly map).
    """
    base = input_volume.GetName()
    error_map = read_error_map(error_map_path, input_volume, f"{base} error map")
    errors = error_array(error_map)
    threshold_mm = overlay_threshold_mm(errors, options)
    z_map = threshold_z = range_z = None
    position = position_threshold = position_range = None
    if report.z_map is not None:
        name = ANOMALY_MAP_NAME if report.shows_anomaly_map else Z_MAP_NAME
        threshold_z = float(options.overlay_threshold_z if options.overlay_threshold_z is not None
                            else report.overlay_threshold)
        z_map, range_z = read_z_map(Path(report.z_map), input_volume, f"{base} {name}", "z-map", threshold_z)
        if report.position_z_map is not None:
            # Its own threshold (the calibration's): a user's z threshold is for the shown map.
            position_threshold = float(report.position_overlay_threshold)
            position, position_range = read_z_map(Path(report.position_z_map), input_volume,
                                                  f"{base} {POSITION_Z_MAP_NAME}", "position z-map",
                                                  position_threshold)
    elif options.overlay_threshold_z is not None:
        raise BundleError("This model bundle has no calibration, so there is no z-map to threshold: give the "
                          "overlay threshold in mm, or calibrate the bundle with `python -m ppr calibrate`.")
    shows_z = z_map is not None and options.overlay_threshold_mm is None
    shown, threshold, kind = (z_map, threshold_z, "z") if shows_z else (error_map, threshold_mm, "mm")
    # The anomaly map is 0 in bone and 4 mm around it (ppr.statistics.intensity_atlas): on the skull
    # the position error is the evidence (fractures, swelling), so the surface shows the PPR position
    # error, with its own threshold.
    surface_shows_position = shows_z and position is not None
    return BuiltResults(
        error_map=error_map,
        skull_surface=build_skull_surface(input_volume, position if surface_shows_position else shown,
                                          bone_threshold(input_volume, options.bone_threshold),
                                          array_name=Z_ARRAY_NAME if shows_z else ERROR_ARRAY_NAME),
        scores=build_scores_table(report, f"{base} anomaly scores", overlay_threshold=threshold,
                                  overlay_map=kind if kind == "z" else report.error_unit),
        candidates=build_candidates(shown, threshold, options.min_candidate_volume_mm3, options.max_candidates,
                                    f"{base} anomaly candidates", unit=kind if kind == "z" else report.error_unit),
        threshold_mm=threshold_mm,
        color_range_mm=color_range_mm(errors, threshold_mm),
        # The detector's point: with a z-map, the highest z inside brain and skull, not in the neck.
        max_error_ras=lps_to_ras(report.max_error_lps),
        z_map=z_map,
        threshold_z=threshold_z,
        color_range_z=range_z,
        calibrated_threshold_z=report.overlay_threshold,
        displayed_map_kind=kind,
        shown_map=report.shown_map,
        position_z_map=position,
        position_threshold_z=position_threshold,
        position_color_range_z=position_range,
        surface_shows_position=surface_shows_position,
    )


def read_z_map(path: Path, input_volume: slicer.vtkMRMLScalarVolumeNode, name: str, what: str,
               threshold_z: float) -> tuple[slicer.vtkMRMLScalarVolumeNode, tuple[float, float]]:
    """A z-map the child wrote (the shown z-map, or the position error's own), detached, on the
    input's grid (``read_error_map``), with its colour window for ``threshold_z``."""
    node = read_error_map(path, input_volume, name, what)
    return node, color_range_z(error_array(node), threshold_z)


def find_results(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLNode) -> DetectionResults | None:
    """The results of ``input_volume`` in the scene, or ``None`` when it has no complete set."""
    found = {}
    for node in _result_nodes(scene, input_volume):
        found[node.GetAttribute(ROLE_ATTRIBUTE)] = node
    if not set(RESULT_ROLES) <= set(found):
        return None
    return DetectionResults(error_map=found[ROLE_ERROR_MAP], skull_surface=found[ROLE_SKULL_SURFACE],
                            scores=found[ROLE_SCORES], candidates=found[ROLE_CANDIDATES],
                            z_map=found.get(ROLE_Z_MAP), position_z_map=found.get(ROLE_POSITION_Z_MAP))


def _result_nodes(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLNode) -> list[slicer.vtkMRMLNode]:
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if (node.GetAttribute(ROLE_ATTRIBUTE) in RESULT_ROLES + OPTIONAL_RESULT_ROLES
                and node.GetNodeReferenceID(INPUT_REFERENCE_ROLE) == input_volume.GetID()):
            nodes.append(node)
    return nodes


def remove_results(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLNode) -> int:
    """Remove the input's result nodes (and their display and storage nodes); returns how many."""
    nodes = _result_nodes(scene, input_volume)
    for node in nodes:
        _remove_with_helpers(scene, node)
    return len(nodes)


def _remove_with_helpers(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode) -> None:
    helpers = []
    if isinstance(node, slicer.vtkMRMLDisplayableNode):
        helpers += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if isinstance(node, slicer.vtkMRMLStorableNode):
        helpers += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and scene.IsNodePresent(helper):
            scene.RemoveNode(helper)


def add_results_to_scene(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLScalarVolumeNode,
                         built: BuiltResults, options: ResultDisplayOptions) -> DetectionResults:
    """Replace the input's previous results with ``built`` and configure their display.

    The new nodes go in first and the old ones leave last, so an error half-way leaves the old
    results as they were and removes whatever of the new ones was added.
    """
    previous = _result_nodes(scene, input_volume)
    added: list[slicer.vtkMRMLNode] = []
    try:
        colours = _shared_color_table(scene, existing_inferno_color_table, build_inferno_color_table, added)
        surface_colours = _shared_color_table(scene, existing_surface_color_table, build_surface_color_table, added)
        error_map = _add(scene, built.error_map, ROLE_ERROR_MAP, input_volume, added)
        error_map.SetAttribute(MAX_ERROR_ATTRIBUTE, " ".join(f"{v:.4f}" for v in built.max_error_ras))
        # %.9g: float32-exact, so a reloaded scene reads the threshold the display was set with.
        error_map.SetAttribute(THRESHOLD_ATTRIBUTE, f"{built.threshold_mm:.9g}")
        error_map.SetAttribute(DISPLAYED_MAP_ATTRIBUTE, built.displayed_map_kind)
        _show_error_map(error_map, colours, built.threshold_mm, built.color_range_mm)
        z_map = position_z_map = None
        if built.z_map is not None:
            z_map = _add_z_map(scene, built.z_map, ROLE_Z_MAP, input_volume, added, colours, built.threshold_z,
                               built.calibrated_threshold_z, built.color_range_z)
            z_map.SetAttribute(SHOWN_MAP_ATTRIBUTE, built.shown_map)
        if built.position_z_map is not None:
            # Not the overlay (set_overlay below shows the displayed map): there for whoever shows it.
            position_z_map = _add_z_map(scene, built.position_z_map, ROLE_POSITION_Z_MAP, input_volume, added,
                                        colours, built.position_threshold_z, built.position_threshold_z,
                                        built.position_color_range_z)
        shows_z = built.displayed_map_kind == "z"

        surface = slicer.vtkMRMLModelNode()
        surface.SetName(f"{input_volume.GetName()} skull surface")
        surface.SetAndObservePolyData(built.skull_surface)
        surface = _add(scene, surface, ROLE_SKULL_SURFACE, input_volume, added)
        if built.surface_shows_position:
            surface_range = surface_scalar_range(built.position_threshold_z, built.position_color_range_z[1])
        elif shows_z:
            surface_range = surface_scalar_range(built.threshold_z, built.color_range_z[1])
        else:
            surface_range = surface_scalar_range(built.threshold_mm, built.color_range_mm[1])
        _show_surface(surface, surface_colours, surface_range, Z_ARRAY_NAME if shows_z else ERROR_ARRAY_NAME)

        scores = _add(scene, built.scores, ROLE_SCORES, input_volume, added)
        candidates = _add(scene, built.candidates, ROLE_CANDIDATES, input_volume, added)
        candidates.CreateDefaultDisplayNodes()
        candidates.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        for node in (error_map, surface, scores, candidates, z_map, position_z_map):
            if node is not None:
                _add_default_storage(node)
    except Exception:
        for node in added:
            _remove_with_helpers(scene, node)
        raise
    for node in previous:
        _remove_with_helpers(scene, node)
    results = DetectionResults(error_map=error_map, skull_surface=surface, scores=scores, candidates=candidates,
                               z_map=z_map, position_z_map=position_z_map)
    set_overlay(scene, input_volume, results.displayed_map, options.overlay_opacity)
    return results


def _add(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, role: str, input_volume: slicer.vtkMRMLNode,
         added: list[slicer.vtkMRMLNode]) -> slicer.vtkMRMLNode:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_volume.GetID())
    if isinstance(node, slicer.vtkMRMLTransformableNode):
        # Results live in the input's local space: under a transform they must move with it.
        node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
    added.append(scene.AddNode(node))
    return added[-1]


def _add_z_map(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLScalarVolumeNode, role: str,
               input_volume: slicer.vtkMRMLNode, added: list[slicer.vtkMRMLNode],
               colours: slicer.vtkMRMLColorTableNode, threshold_z: float, calibrated_threshold_z: float,
               color_range: tuple[float, float]) -> slicer.vtkMRMLScalarVolumeNode:
    """Add a z-map (the shown one or the position error's own) with its thresholds recorded and its
    display set: the same colours, threshold and window code for both."""
    node = _add(scene, node, role, input_volume, added)
    # %.9g: float32-exact, so a reloaded scene reads the threshold the display was set with.
    node.SetAttribute(THRESHOLD_Z_ATTRIBUTE, f"{threshold_z:.9g}")
    node.SetAttribute(CALIBRATED_THRESHOLD_Z_ATTRIBUTE, f"{calibrated_threshold_z:.9g}")
    _show_error_map(node, colours, threshold_z, color_range)
    return node


def _shared_color_table(scene: slicer.vtkMRMLScene, existing, build, added: list[slicer.vtkMRMLNode]
                        ) -> slicer.vtkMRMLColorTableNode:
    """The scene's table (``existing(scene)``), or a new one from ``build()`` recorded in ``added``
    so a failed run removes it again; later runs and loaded scenes reuse it."""
    table = existing(scene)
    if table is None:
        table = scene.AddNode(build())
        added.append(table)
    return table


def _add_default_storage(node: slicer.vtkMRMLNode) -> None:
    # Storage nodes let a scene save (and .mrb bundle) every result without asking the user.
    if isinstance(node, slicer.vtkMRMLStorableNode) and node.GetStorageNode() is None:
        node.AddDefaultStorageNode()


def _show_error_map(error_map: slicer.vtkMRMLScalarVolumeNode, colours: slicer.vtkMRMLColorTableNode,
                    threshold_mm: float, color_range: tuple[float, float]) -> None:
    error_map.CreateDefaultDisplayNodes()
    display = error_map.GetDisplayNode()
    display.SetAndObserveColorNodeID(colours.GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(*color_range)
    display.AutoThresholdOff()
    display.SetThreshold(threshold_mm, max(color_range[1], threshold_mm) * 1e3)
    display.ApplyThresholdOn()
    display.SetInterpolate(True)


def _show_surface(surface: slicer.vtkMRMLModelNode, colours: slicer.vtkMRMLColorTableNode,
                  scalar_range: tuple[float, float], array_name: str = ERROR_ARRAY_NAME) -> None:
    """Colour the surface by ``array_name`` through the surface table (bone below the threshold:
    ``scalar_range`` comes from ``colormap.surface_scalar_range``)."""
    surface.CreateDefaultDisplayNodes()
    display = surface.GetDisplayNode()
    display.SetActiveScalar(array_name, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(colours.GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(*scalar_range)
    display.SetScalarVisibility(True)


def set_threshold(results: DetectionResults, threshold_mm: float) -> None:
    """Show only error at or above ``threshold_mm`` where the error map is shown (candidates keep theirs).

    It sets the error map's display; when the z-map is the overlay, use ``set_overlay_threshold``.
    """
    _set_display_threshold(results.error_map, threshold_mm)
    _set_surface_threshold(results, ERROR_ARRAY_NAME, threshold_mm)


def set_overlay_threshold(results: DetectionResults, threshold: float) -> None:
    """Threshold of the displayed map, in its unit (z or mm: ``results.displayed_map_kind``). Beside an
    anomaly map the skull surface shows the position z-map, whose threshold this does not move."""
    _set_display_threshold(results.displayed_map, threshold)
    if results.displayed_map_kind == "z" and results.position_z_map is not None:
        return
    _set_surface_threshold(results, Z_ARRAY_NAME if results.displayed_map_kind == "z" else ERROR_ARRAY_NAME,
                           threshold)


def _set_surface_threshold(results: DetectionResults, array_name: str, threshold: float) -> None:
    """Move where the surface turns from bone to colour, if the surface shows that map."""
    display = results.skull_surface.GetDisplayNode()
    if display is None or display.GetActiveScalarName() != array_name:
        return
    display.SetScalarRange(*surface_scalar_range(threshold, display.GetScalarRange()[1]))


def _set_display_threshold(volume: slicer.vtkMRMLScalarVolumeNode, threshold: float) -> None:
    display = volume.GetDisplayNode()
    display.SetThreshold(threshold, max(display.GetUpperThreshold(), threshold))


def set_overlay(scene: slicer.vtkMRMLScene, background: slicer.vtkMRMLVolumeNode,
                foreground: slicer.vtkMRMLVolumeNode | None, opacity: float) -> None:
    """Show ``foreground`` over ``background`` with ``opacity`` in every slice view of the scene."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
