"""The skull surface of a head CT, coloured by the anomaly map probed at each of its points.

The surface is the boundary of the largest connected bone component (which drops the CT table and
loose bright voxels), decimated and smoothed in the input's millimetre-scaled IJK space, probed
against a map on the input's grid (the error map in mm, or the calibrated z-map: the point array is
named after it, ``ERROR_ARRAY_NAME`` or ``Z_ARRAY_NAME``) and mapped to RAS. It does not add nodes
to a scene.
"""

from __future__ import annotations

import slicer
import vtk

from PositionRegressionADLib.geometry import mm_image, mm_to_ras
from ppr.errors import InputImageError

ERROR_ARRAY_NAME = "PositionErrorMM"
Z_ARRAY_NAME = "AnomalyZ"
# The dev data and other brain-window exports saturate at the window's top: bone reads the maximum.
# Such a scan is recognised by a maximum far below cortical bone's ~1000 HU.
WINDOWED_MAX_BELOW = 400.0
BONE_THRESHOLD_HU = 300.0
SURFACE_GRID_MM = 1.0


def bone_threshold(input_volume: slicer.vtkMRMLScalarVolumeNode, chosen: float | None = None) -> float:
    """Intensity of the skull surface: ``chosen``, 300 HU, or just under the top of a windowed scan."""
    if chosen is not None:
        return float(chosen)
    low, high = input_volume.GetImageData().GetScalarRange()
    if high >= WINDOWED_MAX_BELOW:
        return BONE_THRESHOLD_HU
    # Bone saturates at the window's top; partial-volume voxels at the bone's edge read a little less.
    return high - 0.05 * (high - low)


def build_skull_surface(input_volume: slicer.vtkMRMLScalarVolumeNode, error_map: slicer.vtkMRMLScalarVolumeNode,
                        threshold: float, target_triangles: int = 300_000,
                        array_name: str = ERROR_ARRAY_NAME) -> vtk.vtkPolyData:
    """Skull surface in RAS with ``error_map`` (error map or z-map, the input's grid) probed at
    every point, in the point array ``array_name``."""
    bone = vtk.vtkImageConnectivityFilter()
    bone.SetInputData(mm_image(input_volume))
    bone.SetScalarRange(threshold, 1e30)
    bone.SetExtractionModeToLargestRegion()
    bone.SetLabelModeToConstantValue()
    bone.SetLabelConstantValue(1)
    bone.SetLabelScalarTypeToUnsignedChar()
    # A 0.45 mm in-plane grid gives millions of triangles that decimation then spends half a minute
    # on; a 1 mm grid keeps the skull's shape at a tenth of the triangles. Float keeps the edge smooth.
    as_float = vtk.vtkImageCast()
    as_float.SetInputConnection(bone.GetOutputPort())
    as_float.SetOutputScalarTypeToFloat()
    coarse = vtk.vtkImageResample()
    coarse.SetInputConnection(as_float.GetOutputPort())
    coarse.SetInterpolationModeToLinear()
    for axis, spacing in enumerate(input_volume.GetSpacing()):
        coarse.SetAxisOutputSpacing(axis, max(spacing, SURFACE_GRID_MM))

    # Thick slices leave steps of a slice's height; blurring across them rounds the steps off.
    blur = vtk.vtkImageGaussianSmooth()
    blur.SetInputConnection(coarse.GetOutputPort())
    blur.SetStandardDeviations(1.0, 1.0, 0.7)
    blur.SetRadiusFactors(2.0, 2.0, 2.0)

    contour = vtk.vtkFlyingEdges3D()
    contour.SetInputConnection(blur.GetOutputPort())
    contour.SetValue(0, 0.5)
    contour.ComputeNormalsOff()
    contour.Update()
    surface = contour.GetOutput()
    if surface.GetNumberOfCells() == 0:
        raise InputImageError(f"No bone was found at intensity {threshold:g}: set a lower bone threshold.")

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
    probe.SetSourceData(mm_image(error_map))
    probe.Update()
    probed = vtk.vtkPolyData()
    probed.DeepCopy(probe.GetOutput())
    _keep_only_error_array(probed, array_name)
    return _to_ras_with_normals(probed, mm_to_ras(input_volume), array_name)


def _decimate(surface: vtk.vtkPolyData, target_triangles: int) -> vtk.vtkPolyData:
    if surface.GetNumberOfCells() <= target_triangles:
        return surface
    decimate = vtk.vtkQuadricDecimation()
    decimate.SetInputData(surface)
    decimate.SetTargetReduction(1.0 - target_triangles / surface.GetNumberOfCells())
    decimate.VolumePreservationOn()
    decimate.Update()
    return decimate.GetOutput()


def _keep_only_error_array(surface: vtk.vtkPolyData, array_name: str = ERROR_ARRAY_NAME) -> None:
    point_data = surface.GetPointData()
    errors = point_data.GetScalars()
    errors.SetName(array_name)
    for name in [point_data.GetArrayName(i) for i in range(point_data.GetNumberOfArrays())]:
        if name != array_name:
            point_data.RemoveArray(name)
    point_data.SetActiveScalars(array_name)


def _to_ras_with_normals(surface: vtk.vtkPolyData, mm_to_ras: vtk.vtkMatrix4x4,
                         array_name: str = ERROR_ARRAY_NAME) -> vtk.vtkPolyData:
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
    result.GetPointData().SetActiveScalars(array_name)
    return result
