"""Anomaly candidates: connected regions of a high anomaly map (z-map or error map) as a segmentation.

The regions themselves come from ``ppr.statistics.candidates.candidate_labels`` (also behind the
DICOM Segmentation of ``ppr detect --dicom-out``); this module makes them a Slicer segmentation.

One segment per region at or above the threshold, small regions dropped, the largest first, each
named with its volume and peak value (z, or error in mm). All segments share one labelmap on the error map's grid (the
input's), so the segmentation is ready for the Segment Editor and for Segment Statistics. The
segmentation node is returned detached: adding it to a scene is the caller's job.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ppr.statistics.candidates import candidate_labels

from PositionRegressionADLib.geometry import ijk_to_ras


def build_candidates(error_map: slicer.vtkMRMLScalarVolumeNode, threshold_mm: float, min_volume_mm3: float,
                     max_count: int, name: str, unit: str = "mm") -> slicer.vtkMRMLSegmentationNode:
    """Segmentation of the regions at or above the threshold of at least ``min_volume_mm3``.

    ``error_map`` is the displayed map: the error map (``unit`` "mm", threshold in mm) or the z-map
    (``unit`` "z", threshold in z).
    """
    spacing = error_map.GetSpacing()
    dimensions = error_map.GetImageData().GetDimensions()
    errors = numpy_support.vtk_to_numpy(error_map.GetImageData().GetPointData().GetScalars())
    # The regions are cut by ppr (one piece of code for the module and the DICOM Segmentation).
    labels = candidate_labels(errors.reshape(dimensions[::-1]), spacing, threshold_mm, min_volume_mm3,
                              max_count).ravel()
    count = int(labels.max(initial=0))

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
        segment.SetName(f"Candidate {rank}: {inside.sum() * voxel_ml:.1f} mL, peak {_peak(errors[inside].max(), unit)}")
        colour = [0.0, 0.0, 0.0, 0.0]
        colours.GetColor((rank - 1) % colours.GetNumberOfColors(), colour)
        segment.SetColor(colour[:3])
        segment.AddRepresentation(labelmap_name, labelmap)
        segment.SetLabelValue(rank)
        segmentation.AddSegment(segment, f"candidate_{rank}")
    return segmentation_node


def _peak(value: float, unit: str) -> str:
    if unit in ("z", "mm"):
        return f"z {value:.1f}" if unit == "z" else f"{value:.1f} mm"
    return f"{value:.3g} ({unit})"  # an autoencoder residual, in intensity


def _oriented_labelmap(volume: slicer.vtkMRMLScalarVolumeNode, labels: np.ndarray) -> slicer.vtkOrientedImageData:
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetDimensions(volume.GetImageData().GetDimensions())
    labelmap.SetImageToWorldMatrix(ijk_to_ras(volume))
    labelmap.GetPointData().SetScalars(numpy_support.numpy_to_vtk(labels, deep=True, array_type=vtk.VTK_UNSIGNED_SHORT))
    return labelmap
