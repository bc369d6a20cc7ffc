"""Turn a finished detection into scene nodes: error map overlay, skull surface, scores, candidates.

Two steps, so a failure never leaves half a result in the scene: ``build_results`` computes every
node detached from any scene (error map read from the child's file, skull surface with the error
probed at each point, scores table, "Anomaly candidates" segmentation); ``add_results_to_scene``
then removes the input's previous results and adds the new ones with their display settings.

All result nodes carry a reference to their input volume (role ``INPUT_REFERENCE_ROLE``) and their
kind (attribute ``ROLE_ATTRIBUTE``), so they are found again after a scene is saved and reloaded.
This module does not run the detection and does not render images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from PositionRegressionADLib.colormap import build_inferno_color_table, existing_inferno_color_table
from ppr.errors import PPRError

ROLE_ATTRIBUTE = "PositionRegressionAD.Role"
INPUT_REFERENCE_ROLE = "positionRegressionInput"
MAX_ERROR_ATTRIBUTE = "PositionRegressionAD.MaxErrorRAS"
THRESHOLD_ATTRIBUTE = "PositionRegressionAD.OverlayThresholdMM"
RANGE_ATTRIBUTE = "PositionRegressionAD.ColorRangeMM"
ERROR_ARRAY_NAME = "PositionErrorMM"

ROLE_ERROR_MAP = "ErrorMap"
ROLE_SKULL_SURFACE = "SkullSurface"
ROLE_SCORES = "Scores"
ROLE_CANDIDATES = "AnomalyCandidates"
RESULT_ROLES = (ROLE_ERROR_MAP, ROLE_SKULL_SURFACE, ROLE_SCORES, ROLE_CANDIDATES)

REGION_LABELS = {
    "left_hemisphere": "Left hemisphere",
    "right_hemisphere": "Right hemisphere",
    "skull": "Skull",
    "head": "Whole head",
}

# The dev data and other brain-window exports saturate at the window's top: bone reads the maximum.
# Such a scan is recognised by a maximum far below cortical bone's ~1000 HU.
WINDOWED_MAX_BELOW = 400.0
BONE_THRESHOLD_HU = 300.0
# Geometry written to NIfTI by the child comes back as float32: allow that rounding, nothing more.
GEOMETRY_TOLERANCE_MM = 1e-3


class ResultImportError(PPRError):
    """The detection's output cannot be turned into results (wrong grid, unreadable file)."""


@dataclass(frozen=True)
class ResultDisplayOptions:
    """How results are shown.

    overlay_threshold_mm: error below this is transparent in the slice overlay and outside the
        anomaly candidates; ``None`` takes the ``threshold_percentile`` of the error inside the
        error map's support (the scores issue replaces this with a calibrated value).
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

    def __post_init__(self) -> None:
        if not 0.0 <= self.overlay_opacity <= 1.0:
            raise ValueError(f"overlay_opacity must be within 0..1, got {self.overlay_opacity}")
        if not 0.0 < self.threshold_percentile < 100.0:
            raise ValueError(f"threshold_percentile must be within (0, 100), got {self.threshold_percentile}")


@dataclass(frozen=True)
class DetectionReport:
    """What ``ppr detect --json`` reported, plus the model bundle it was run with."""

    model: str
    seconds: float
    device: str
    stride: int
    method: str
    regions: dict[str, float]
    max_error_lps: tuple[float, float, float]
    registration_metric: float
    error_mm: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json_dict(cls, data: dict, model: str) -> "DetectionReport":
        try:
            return cls(model=model, seconds=float(data["seconds"]), device=str(data["device"]),
                       stride=int(data["stride"]), method=str(data["method"]),
                       regions=_flatten_numbers(data["regions"]),
                       max_error_lps=tuple(float(v) for v in data["max_error_lps"]),
                       registration_metric=float(data["registration_metric"]),
                       error_mm=_flatten_numbers(data.get("error_mm", {})))
        except (KeyError, TypeError, ValueError) as error:
            raise ResultImportError(
                f"The detection finished but its report is incomplete ({error!r}). "
                "Update the extension so the detector and the module match.") from error

    def score_columns(self) -> dict[str, float]:
        """Region scores under the names users read, in a stable order."""
        columns = {}
        for key, value in self.regions.items():
            region, _, detail = key.partition(".")
            label = REGION_LABELS.get(region, region.replace("_", " ").capitalize())
            columns[f"{label} {detail}".strip()] = value
        return columns


def _flatten_numbers(value: object, prefix: str = "") -> dict[str, float]:
    """``{"head": {"p99": 3}}`` -> ``{"head.p99": 3.0}``; a bare number -> ``{prefix: value}``."""
    if isinstance(value, dict):
        flat: dict[str, float] = {}
        for key, item in value.items():
            flat.update(_flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "value": float(value)}


@dataclass
class BuiltResults:
    """Result nodes computed but not yet in a scene."""

    error_map: slicer.vtkMRMLScalarVolumeNode
    skull_surface: vtk.vtkPolyData
    scores: slicer.vtkMRMLTableNode
    candidates: slicer.vtkMRMLSegmentationNode
    threshold_mm: float
    color_range_mm: tuple[float, float]
    max_error_ras: tuple[float, float, float]


@dataclass(frozen=True)
class DetectionResults:
    """The result nodes of one input volume, as they are in the scene."""

    error_map: slicer.vtkMRMLScalarVolumeNode
    skull_surface: slicer.vtkMRMLModelNode
    scores: slicer.vtkMRMLTableNode
    candidates: slicer.vtkMRMLSegmentationNode

    @property
    def max_error_ras(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in self.error_map.GetAttribute(MAX_ERROR_ATTRIBUTE).split())

    @property
    def threshold_mm(self) -> float:
        return float(self.error_map.GetAttribute(THRESHOLD_ATTRIBUTE))

    def nodes(self) -> list[slicer.vtkMRMLNode]:
        return [self.error_map, self.skull_surface, self.scores, self.candidates]


# ---------------------------------------------------------------------------------------------
# Geometry helpers


def ijk_to_ras(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def _matrix_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def voxel_to_ras(volume: slicer.vtkMRMLVolumeNode, ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    ras = _matrix_array(ijk_to_ras(volume)) @ np.array([*ijk, 1.0])
    return tuple(float(v) for v in ras[:3])


def _mm_image(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkImageData:
    """The volume's voxels with its spacing and a zero origin: IJK space scaled to millimetres.

    Filters that measure distances (smoothing, decimation) then work in true millimetres, and
    ``_mm_to_ras`` maps their output to RAS with the volume's full geometry.
    """
    image = vtk.vtkImageData()
    image.ShallowCopy(volume.GetImageData())
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(volume.GetSpacing())
    return image


def _mm_to_ras(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
    scale = np.diag([1.0 / s for s in volume.GetSpacing()] + [1.0])
    combined = _matrix_array(ijk_to_ras(volume)) @ scale
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, combined[row, col])
    return matrix


# ---------------------------------------------------------------------------------------------
# Error map


def read_error_map(path: Path, input_volume: slicer.vtkMRMLScalarVolumeNode, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """Read the child's error map (input space) into a detached volume node with the input's geometry.

    The error map must be on the input's grid (ppr resamples model space -> input space); a grid
    that differs by more than float32 rounding means the detector and the input disagree.
    """
    if not Path(path).is_file():
        raise ResultImportError(f"The detection did not write its error map ({path}).")
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node) or node.GetImageData() is None:
        raise ResultImportError(f"The error map {path} could not be read.")
    _check_same_grid(node, input_volume)
    node.SetIJKToRASMatrix(ijk_to_ras(input_volume))  # drop the float32 rounding of the file
    node.SetName(name)
    return node


def _check_same_grid(error_map: slicer.vtkMRMLVolumeNode, input_volume: slicer.vtkMRMLVolumeNode) -> None:
    got, want = error_map.GetImageData().GetDimensions(), input_volume.GetImageData().GetDimensions()
    if got != want:
        raise ResultImportError(f"The error map has {got} voxels but the input has {want}: "
                                "the detector did not map its result back onto the input's grid.")
    difference = np.abs(_matrix_array(ijk_to_ras(error_map)) - _matrix_array(ijk_to_ras(input_volume)))
    # Compare corner positions, not matrix entries, so the tolerance reads in millimetres.
    corners = np.array([[i, j, k, 1.0] for i in (0, want[0]) for j in (0, want[1]) for k in (0, want[2])])
    if (np.abs(corners @ difference.T)[:, :3]).max() > GEOMETRY_TOLERANCE_MM * max(want):
        raise ResultImportError("The error map does not lie on the input's grid (origin, spacing or "
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


def max_error_ras(error_map: slicer.vtkMRMLScalarVolumeNode) -> tuple[float, float, float]:
    """RAS position of the voxel with the highest error."""
    errors = error_array(error_map)
    k, j, i = np.unravel_index(int(np.argmax(errors)), errors.shape)
    return voxel_to_ras(error_map, (float(i), float(j), float(k)))


# ---------------------------------------------------------------------------------------------
# Skull surface


def bone_threshold(input_volume: slicer.vtkMRMLScalarVolumeNode, options: ResultDisplayOptions) -> float:
    """Intensity of the skull surface: the given one, 300 HU, or just under the top of a windowed scan."""
    if options.bone_threshold is not None:
        return float(options.bone_threshold)
    low, high = input_volume.GetImageData().GetScalarRange()
    if high >= WINDOWED_MAX_BELOW:
        return BONE_THRESHOLD_HU
    # Bone saturates at the window's top; partial-volume voxels at the bone's edge read a little less.
    return high - 0.05 * (high - low)


def build_skull_surface(input_volume: slicer.vtkMRMLScalarVolumeNode, error_map: slicer.vtkMRMLScalarVolumeNode,
                        threshold: float, target_triangles: int = 200_000) -> vtk.vtkPolyData:
    """Skull surface in RAS with the error probed at every point (array ``ERROR_ARRAY_NAME``).

    The largest connected bone component is kept, which drops the CT table and loose bright voxels.
    Everything runs in the input's millimetre-scaled IJK space and is mapped to RAS at the end.
    """
    bone = vtk.vtkImageConnectivityFilter()
    bone.SetInputData(_mm_image(input_volume))
    bone.SetScalarRange(threshold, 1e30)
    bone.SetExtractionModeToLargestRegion()
    bone.SetLabelModeToConstantValue()
    bone.SetLabelConstantValue(1)
    bone.SetLabelScalarTypeToUnsignedChar()

    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputConnection(bone.GetOutputPort())
    contour.SetValue(0, 0.5)
    contour.ComputeNormalsOff()
    contour.Update()
    surface = contour.GetOutput()
    if surface.GetNumberOfCells() == 0:
        raise ResultImportError(f"No bone was found at intensity {threshold:g}: set a lower bone threshold.")

    decimated = _decimate(surface, target_triangles)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputData(decimated)
    smooth.SetNumberOfIterations(15)
    smooth.SetPassBand(0.1)
    smooth.NormalizeCoordinatesOn()
    smooth.BoundarySmoothingOff()
    smooth.NonManifoldSmoothingOn()

    probe = vtk.vtkProbeFilter()
    probe.SetInputConnection(smooth.GetOutputPort())
    probe.SetSourceData(_mm_image(error_map))
    probe.Update()
    probed = vtk.vtkPolyData()
    probed.DeepCopy(probe.GetOutput())
    _keep_only_error_array(probed)
    return _to_ras_with_normals(probed, _mm_to_ras(input_volume))


def _decimate(surface: vtk.vtkPolyData, target_triangles: int) -> vtk.vtkPolyData:
    if surface.GetNumberOfCells() <= target_triangles:
        return surface
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(surface)
    decimate.SetTargetReduction(1.0 - target_triangles / surface.GetNumberOfCells())
    decimate.VolumePreservationOn()
    decimate.Update()
    return decimate.GetOutput()


def _keep_only_error_array(surface: vtk.vtkPolyData) -> None:
    point_data = surface.GetPointData()
    errors = point_data.GetScalars()
    errors.SetName(ERROR_ARRAY_NAME)
    for name in [point_data.GetArrayName(i) for i in range(point_data.GetNumberOfArrays())]:
        if name != ERROR_ARRAY_NAME:
            point_data.RemoveArray(name)
    point_data.SetActiveScalars(ERROR_ARRAY_NAME)


def _to_ras_with_normals(surface: vtk.vtkPolyData, mm_to_ras: vtk.vtkMatrix4x4) -> vtk.vtkPolyData:
    transform = vtk.vtkTransform()
    transform.SetMatrix(mm_to_ras)
    moved = vtk.vtkTransformPolyDataFilter()
    moved.SetInputData(surface)
    moved.SetTransform(transform)
    last: vtk.vtkAlgorithm = moved
    if mm_to_ras.Determinant() < 0:
        # A mirroring IJK->RAS turns triangles inside out; restore outward faces for lighting.
        reverse = vtk.vtkReverseSense()
        reverse.SetInputConnection(moved.GetOutputPort())
        last = reverse
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(last.GetOutputPort())
    normals.SplittingOff()
    normals.ConsistencyOn()
    normals.Update()
    result = vtk.vtkPolyData()
    result.DeepCopy(normals.GetOutput())
    result.GetPointData().SetActiveScalars(ERROR_ARRAY_NAME)
    return result


# ---------------------------------------------------------------------------------------------
# Scores table


def build_scores_table(report: DetectionReport, name: str) -> slicer.vtkMRMLTableNode:
    """One row: each region score, the run's maximum error and how the run was made."""
    table = slicer.vtkMRMLTableNode()
    table.SetName(name)
    for label, value in report.score_columns().items():
        _add_column(table, vtk.vtkDoubleArray(), label, value, "Anomaly score of the region")
    for key, value in report.error_mm.items():
        label = "Error (mm)" if key == "value" else f"Error {key} (mm)"
        _add_column(table, vtk.vtkDoubleArray(), label, value, "Position error of the scan, millimetres")
    _add_column(table, vtk.vtkStringArray(), "Model", report.model, "Model bundle used")
    _add_column(table, vtk.vtkStringArray(), "Device", report.device, "Device the network ran on")
    _add_column(table, vtk.vtkIntArray(), "Stride", report.stride, "Error map computed every this many voxels")
    _add_column(table, vtk.vtkStringArray(), "Method", report.method, "Inference method")
    _add_column(table, vtk.vtkDoubleArray(), "Seconds", report.seconds, "Time of the detection")
    _add_column(table, vtk.vtkDoubleArray(), "Registration metric", report.registration_metric,
                "Quality of the alignment with the reference head (higher is better)")
    return table


def _add_column(table: slicer.vtkMRMLTableNode, column: vtk.vtkAbstractArray, name: str, value: object,
                description: str) -> None:
    column.SetName(name)
    column.InsertNextValue(value)
    table.AddColumn(column)
    table.SetColumnDescription(name, description)


def table_row(table: slicer.vtkMRMLTableNode, row: int = 0) -> dict[str, object]:
    """A table row as ``{column name: value}`` with numbers as numbers."""
    data = table.GetTable()
    values = {}
    for index in range(data.GetNumberOfColumns()):
        column = data.GetColumn(index)
        values[column.GetName()] = (column.GetValue(row) if isinstance(column, vtk.vtkStringArray)
                                    else column.GetTuple1(row))
    return values


# ---------------------------------------------------------------------------------------------
# Anomaly candidates


def build_candidates(error_map: slicer.vtkMRMLScalarVolumeNode, threshold_mm: float,
                     options: ResultDisplayOptions, name: str) -> slicer.vtkMRMLSegmentationNode:
    """Segmentation of the connected regions at or above ``threshold_mm``, small ones dropped.

    One segment per region, largest first, named with its volume and peak error; all segments share
    one labelmap on the error map's (= the input's) grid, ready for the Segment Editor.
    """
    spacing = error_map.GetSpacing()
    min_voxels = int(np.ceil(options.min_candidate_volume_mm3 / float(np.prod(spacing))))
    regions = vtk.vtkImageConnectivityFilter()
    regions.SetInputData(error_map.GetImageData())
    regions.SetScalarRange(threshold_mm, 1e30)
    regions.SetExtractionModeToAllRegions()
    regions.SetSizeRange(max(min_voxels, 1), vtk.VTK_ID_MAX)
    regions.SetLabelModeToSizeRank()
    regions.SetLabelScalarTypeToUnsignedShort()
    regions.Update()

    labels = numpy_support.vtk_to_numpy(regions.GetOutput().GetPointData().GetScalars())
    errors = numpy_support.vtk_to_numpy(error_map.GetImageData().GetPointData().GetScalars())
    count = min(regions.GetNumberOfExtractedRegions(), options.max_candidates)
    labels = np.where(labels <= count, labels, 0).astype(np.uint16)

    segmentation_node = slicer.vtkMRMLSegmentationNode()
    segmentation_node.SetName(name)
    segmentation = segmentation_node.GetSegmentation()
    labelmap_name = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    segmentation.SetSourceRepresentationName(labelmap_name)
    if count == 0:
        return segmentation_node
    labelmap = _oriented_labelmap(error_map, labels)
    colours = slicer.vtkMRMLColorTableNode()
    colours.SetTypeToWarm1()  # distinct warm colours that read well over grey CT and the Inferno map
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for rank in range(1, count + 1):
        inside = labels == rank
        segment = slicer.vtkSegment()
        segment.SetName(f"Candidate {rank}: {inside.sum() * voxel_ml:.1f} mL, peak {errors[inside].max():.1f} mm")
        colour = [0.0, 0.0, 0.0, 0.0]
        colours.GetColor((rank - 1) % colours.GetNumberOfColors(), colour)
        segment.SetColor(colour[:3])
        segment.AddRepresentation(labelmap_name, labelmap)
        segment.SetLabelValue(rank)
        segmentation.AddSegment(segment, f"candidate_{rank}")
    return segmentation_node


def _oriented_labelmap(volume: slicer.vtkMRMLScalarVolumeNode, labels: np.ndarray) -> slicer.vtkOrientedImageData:
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(volume.GetImageData().GetDimensions())
    labelmap.SetImageToWorldMatrix(ijk_to_ras(volume))
    labelmap.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels, deep=True, array_type=vtk.VTK_UNSIGNED_SHORT))
    return labelmap


# ---------------------------------------------------------------------------------------------
# Build and add


def build_results(input_volume: slicer.vtkMRMLScalarVolumeNode, error_map_path: Path, report: DetectionReport,
                  options: ResultDisplayOptions) -> BuiltResults:
    """Every result of one detection, computed without touching any scene."""
    base = input_volume.GetName()
    error_map = read_error_map(error_map_path, input_volume, f"{base} error map")
    errors = error_array(error_map)
    threshold = overlay_threshold_mm(errors, options)
    return BuiltResults(
        error_map=error_map,
        skull_surface=build_skull_surface(input_volume, error_map, bone_threshold(input_volume, options)),
        scores=build_scores_table(report, f"{base} anomaly scores"),
        candidates=build_candidates(error_map, threshold, options, f"{base} anomaly candidates"),
        threshold_mm=threshold,
        color_range_mm=color_range_mm(errors, threshold),
        max_error_ras=max_error_ras(error_map),
    )


def find_results(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLNode) -> DetectionResults | None:
    """The results of ``input_volume`` in the scene, or ``None`` when it has no complete set."""
    found = {}
    for node in _result_nodes(scene, input_volume):
        found[node.GetAttribute(ROLE_ATTRIBUTE)] = node
    if set(found) != set(RESULT_ROLES):
        return None
    return DetectionResults(error_map=found[ROLE_ERROR_MAP], skull_surface=found[ROLE_SKULL_SURFACE],
                            scores=found[ROLE_SCORES], candidates=found[ROLE_CANDIDATES])


def _result_nodes(scene: slicer.vtkMRMLScene, input_volume: slicer.vtkMRMLNode) -> list[slicer.vtkMRMLNode]:
    nodes = []
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if (node.GetAttribute(ROLE_ATTRIBUTE) in RESULT_ROLES
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
        colours = existing_inferno_color_table(scene)
        if colours is None:
            colours = scene.AddNode(build_inferno_color_table())
            added.append(colours)
        error_map = _add(scene, built.error_map, ROLE_ERROR_MAP, input_volume, added)
        error_map.SetAttribute(MAX_ERROR_ATTRIBUTE, " ".join(f"{v:.4f}" for v in built.max_error_ras))
        error_map.SetAttribute(THRESHOLD_ATTRIBUTE, f"{built.threshold_mm:.6g}")
        error_map.SetAttribute(RANGE_ATTRIBUTE, " ".join(f"{v:.6g}" for v in built.color_range_mm))
        _show_error_map(error_map, colours, built.threshold_mm, built.color_range_mm)

        surface = slicer.vtkMRMLModelNode()
        surface.SetName(f"{input_volume.GetName()} skull surface")
        surface.SetAndObservePolyData(built.skull_surface)
        surface = _add(scene, surface, ROLE_SKULL_SURFACE, input_volume, added)
        _show_surface(surface, colours, built.color_range_mm)

        scores = _add(scene, built.scores, ROLE_SCORES, input_volume, added)
        candidates = _add(scene, built.candidates, ROLE_CANDIDATES, input_volume, added)
        candidates.CreateDefaultDisplayNodes()
        candidates.SetReferenceImageGeometryParameterFromVolumeNode(input_volume)
        for node in (error_map, surface, scores, candidates):
            _add_default_storage(node)
    except Exception:
        for node in added:
            _remove_with_helpers(scene, node)
        raise
    for node in previous:
        _remove_with_helpers(scene, node)
    set_overlay(scene, input_volume, error_map, options.overlay_opacity)
    return DetectionResults(error_map=error_map, skull_surface=surface, scores=scores, candidates=candidates)


def _add(scene: slicer.vtkMRMLScene, node: slicer.vtkMRMLNode, role: str, input_volume: slicer.vtkMRMLNode,
         added: list[slicer.vtkMRMLNode]) -> slicer.vtkMRMLNode:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    node.SetNodeReferenceID(INPUT_REFERENCE_ROLE, input_volume.GetID())
    if isinstance(node, slicer.vtkMRMLTransformableNode):
        # Results live in the input's local space: under a transform they must move with it.
        node.SetAndObserveTransformNodeID(input_volume.GetTransformNodeID())
    added.append(scene.AddNode(node))
    return added[-1]


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
                  color_range: tuple[float, float]) -> None:
    surface.CreateDefaultDisplayNodes()
    display = surface.GetDisplayNode()
    display.SetActiveScalar(ERROR_ARRAY_NAME, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(colours.GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(*color_range)
    display.SetScalarVisibility(True)


def set_overlay(scene: slicer.vtkMRMLScene, background: slicer.vtkMRMLVolumeNode,
                foreground: slicer.vtkMRMLVolumeNode | None, opacity: float) -> None:
    """Show ``foreground`` over ``background`` with ``opacity`` in every slice view of the scene."""
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(opacity)
