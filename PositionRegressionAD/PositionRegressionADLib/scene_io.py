"""Scenes without the Slicer application: set one up, load volumes, save and load .mrb, write results.

Inside Slicer the application provides the scene and its logics (``SceneContext.from_slicer_app``);
in batch, in tests and in a web viewer ``SceneContext.create`` builds the same pieces from
``slicer-core``: an application logic with the colour logic registered as "Colors" (the volumes
logic looks it up by that name), the volumes logic, and the remote-IO and data-IO logics that
reading a .mrb needs. Every path handed to MRML is made absolute (MRB writing needs it).

This module does not detect anything and does not decide what a result is (``results``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import slicer
import vtk

from ppr.errors import InputImageError, OutputFileError, PPRError
from ppr.image.imageio import VOLUME_SUFFIXES, holds_dicom_series, read_image, write_atomically
from ppr.image.validation import check_volume


class SceneFileError(PPRError):
    """A scene or result file could not be written or read."""


@dataclass(frozen=True)
class SceneContext:
    """A scene and the logics that load and save data into it.

    Usage::

        context = SceneContext.create(cache_dir=Path("/tmp/ppr-cache"))
        volume = load_volume(context, Path("head.nii.gz"))
    """

    scene: slicer.vtkMRMLScene
    app_logic: slicer.vtkSlicerApplicationLogic
    volumes_logic: slicer.vtkSlicerVolumesLogic
    # Held so they stay alive as long as the scene: ReadFromMRB reaches them through the scene.
    io_logics: tuple = ()

    @classmethod
    def create(cls, cache_dir: Path) -> "SceneContext":
        """A new scene with the colour, volumes and data-IO logics, outside any Slicer application."""
        scene = slicer.vtkMRMLScene()
        app_logic = slicer.vtkSlicerApplicationLogic()
        app_logic.SetMRMLScene(scene)
        colour_logic = app_logic.GetColorLogic()
        colour_logic.SetMRMLScene(scene)
        colour_logic.AddDefaultColorNodes()
        app_logic.SetModuleLogic("Colors", colour_logic)
        # Slice logics find their siblings through these collections (slice rendering needs them).
        app_logic.SetSliceLogics(vtk.vtkCollection())
        app_logic.SetViewLogics(vtk.vtkCollection())

        volumes_logic = slicer.vtkSlicerVolumesLogic()
        volumes_logic.SetMRMLScene(scene)
        volumes_logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic("Volumes", volumes_logic)

        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        remote_io = slicer.vtkMRMLRemoteIOLogic()
        remote_io.SetMRMLScene(scene)
        remote_io.SetMRMLApplicationLogic(app_logic)
        remote_io.GetCacheManager().SetRemoteCacheDirectory(str(Path(cache_dir).resolve()))
        data_io = slicer.vtkDataIOManagerLogic()
        data_io.SetMRMLScene(scene)
        data_io.SetMRMLApplicationLogic(app_logic)
        data_io.SetAndObserveDataIOManager(remote_io.GetDataIOManager())
        remote_io.AddDataIOToScene()
        return cls(scene=scene, app_logic=app_logic, volumes_logic=volumes_logic, io_logics=(remote_io, data_io))

    @classmethod
    def from_slicer_app(cls) -> "SceneContext":
        """The running Slicer application's scene and logics."""
        return cls(scene=slicer.mrmlScene, app_logic=slicer.app.applicationLogic(),
                   volumes_logic=slicer.modules.volumes.logic())


def load_volume(context: SceneContext, path: Path, name: str | None = None) -> slicer.vtkMRMLScalarVolumeNode:
    """Load a scalar volume (NIfTI, NRRD, MetaImage, or a folder holding a DICOM series) into the
    context's scene.

    The scan first passes the detector's own reader and checks (``ppr.image.imageio.read_image``,
    ``ppr.image.validation.check_volume``): a truncated file, a size beyond the limit, NaN or infinite
    voxels (Slicer's NIfTI reader makes them 0) and a 4D image (it would keep the first frame) are
    refused with the same message as ``ppr detect``. A DICOM series is placed by that reader (by each
    slice's position: gantry tilt and uneven spacing), not by ITK's even-spacing assumption."""
    path = Path(path).resolve()
    if holds_dicom_series(path):
        image = read_image(path)
        check_volume(image)
        return _volume_node(context, image, name or path.name)
    if not path.is_file():
        raise InputImageError(f"The file {path} does not exist: check the path.")
    check_volume(read_image(path))
    node_name = name or path.name.split(".")[0]
    node = context.volumes_logic.AddArchetypeVolume(str(path), node_name)
    if node is None or node.GetImageData() is None:
        raise InputImageError(f"{path.name} could not be read as a volume: use NIfTI, NRRD or MetaImage.")
    return node


def _volume_node(context: SceneContext, image, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """A scalar volume node holding a SimpleITK image, its LPS geometry turned into RAS."""
    import numpy as np
    import SimpleITK as sitk
    import slicer.util

    node = context.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", context.scene.GenerateUniqueName(name))
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = lps_to_ras @ np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    matrix = vtk.vtkMatrix4x4()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction[row, column])
        matrix.SetElement(row, 3, (lps_to_ras @ np.asarray(image.GetOrigin()))[row])
    node.SetIJKToRASMatrix(matrix)
    node.CreateDefaultDisplayNodes()
    return node


def save_node(node: slicer.vtkMRMLStorableNode, path: Path) -> Path:
    """Write a volume, model, table or segmentation node to ``path`` (format from the suffix), atomically
    (``ppr.image.imageio.write_atomically``: ``OutputFileError`` on failure, "no space left" on a full disk).

    A temporary storage node does the writing, so the node's own storage (and the scene) stay as they
    are. Models are written in LPS, the coordinate system other tools expect.
    """
    path = Path(path).resolve()
    storage = node.CreateDefaultStorageNode()
    if storage is None:
        raise SceneFileError(f"{node.GetName()} cannot be saved to a file.")
    if storage.IsA("vtkMRMLModelStorageNode"):
        storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemLPS)

    def write(temporary: Path) -> None:
        storage.SetFileName(str(temporary))
        if not storage.WriteData(node) or not temporary.is_file():
            raise OutputFileError(f"{node.GetName()} could not be written")
        if node.IsA("vtkMRMLVolumeNode"):
            read_image(temporary)  # whole: ITK's NIfTI writer says nothing when the disk fills up

    # Under its name whole or not at all (a temporary name in the same folder, then a rename).
    write_atomically(path, write)
    return path


def save_scene_mrb(scene: slicer.vtkMRMLScene, path: Path) -> Path:
    """Save the whole scene with its data as one .mrb file."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The zip writer reports every file it adds on VTK's output window; failure shows in the return
    # value, so its chatter goes to a string window for the duration of the write.
    previous = vtk.vtkOutputWindow.GetInstance()
    vtk.vtkOutputWindow.SetInstance(vtk.vtkStringOutputWindow())
    try:
        written = scene.WriteToMRB(str(path))
    finally:
        vtk.vtkOutputWindow.SetInstance(previous)
    if not written or not path.is_file():
        raise SceneFileError(f"The scene could not be saved to {path}: check the folder and free space.")
    return path


def load_scene_mrb(context: SceneContext, path: Path) -> None:
    """Replace the context's scene content with the .mrb file's."""
    path = Path(path).resolve()
    if not path.is_file():
        raise SceneFileError(f"The scene file {path} does not exist: check the path.")
    if not context.scene.ReadFromMRB(str(path)):
        raise SceneFileError(f"The scene file {path} could not be read: it may be damaged.")
