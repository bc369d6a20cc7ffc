"""Where a volume's voxels are: IJK -> RAS matrices and the millimetre-scaled IJK space.

Filters that measure distances (smoothing, decimation) run on a volume's voxels with its spacing and
a zero origin ("mm-IJK" space); ``mm_to_ras`` then maps their output to RAS with the volume's full
geometry (origin, spacing and direction). This module reads geometry; it never changes a node.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk


def ijk_to_ras(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def matrix_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, col) for col in range(4)] for row in range(4)])


def voxel_to_ras(volume: slicer.vtkMRMLVolumeNode, ijk: tuple[float, float, float]) -> tuple[float, float, float]:
    ras = matrix_array(ijk_to_ras(volume)) @ np.array([*ijk, 1.0])
    return tuple(float(v) for v in ras[:3])


def mm_image(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkImageData:
    """The volume's voxels with its spacing and a zero origin (mm-IJK space), sharing its memory."""
    image = vtk.vtkImageData()
    image.ShallowCopy(volume.GetImageData())
    image.SetOrigin(0.0, 0.0, 0.0)
    image.SetSpacing(volume.GetSpacing())
    return image


def mm_to_ras(volume: slicer.vtkMRMLVolumeNode) -> vtk.vtkMatrix4x4:
    """Matrix from the volume's mm-IJK space to RAS."""
    scale = np.diag([1.0 / s for s in volume.GetSpacing()] + [1.0])
    combined = matrix_array(ijk_to_ras(volume)) @ scale
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, combined[row, col])
    return matrix
