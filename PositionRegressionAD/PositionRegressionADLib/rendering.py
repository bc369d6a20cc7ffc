"""Offscreen pictures of results: slices through the worst point, skull surface from several sides.

Slices are made by Slicer's own slice logic (``vtkMRMLSliceLogic``), so a picture blends the input
and the displayed map (``DetectionResults.displayed_map``: the z-map of a calibrated model, else
the error map) exactly as a slice view does: same colour table, threshold and opacity. It needs no
OpenGL. A small cyan cross marks the most anomalous point. The surface is rendered with plain VTK
in an offscreen window (EGL with Mesa llvmpipe on a machine without a display), coloured by the
array its display shows (z or error probed at each point) with the same table and range as the
overlay.

This module only draws what is in the scene; it computes no result and changes no result node.
Temporary slice nodes it needs are removed again before it returns.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from PositionRegressionADLib.report import error_unit_of
from PositionRegressionADLib.results import DetectionResults
from PositionRegressionADLib.scene_io import SceneContext
from PositionRegressionADLib.skull_surface import Z_ARRAY_NAME

SLICE_ORIENTATIONS = ("Axial", "Coronal", "Sagittal")
MARKER_RGB = (0, 255, 255)
# Camera direction (from the head towards the camera, RAS) and view-up of each surface view.
SURFACE_VIEWS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "anterior": ((0, 1, 0), (0, 0, 1)),
    "left": ((-1, 0, 0), (0, 0, 1)),
    "right": ((1, 0, 0), (0, 0, 1)),
    "posterior": ((0, -1, 0), (0, 0, 1)),
    "superior": ((0, 0, 1), (0, 1, 0)),
    "inferior": ((0, 0, -1), (0, 1, 0)),
}


def render_slices(context: SceneContext, results: DetectionResults, background: slicer.vtkMRMLScalarVolumeNode,
                  out_prefix: Path, size_px: int = 512,
                  point_ras: tuple[float, float, float] | None = None) -> list[Path]:
    """Write ``<out_prefix>_axial.png`` etc.: the displayed map over ``background`` through ``point_ras``.

    point_ras: the most anomalous point when not given. Returns the written paths.
    """
    point = point_ras or results.max_error_ras
    overlay_opacity = _overlay_opacity(context.scene, results)
    written = []
    for orientation in SLICE_ORIENTATIONS:
        image = _slice_image(context, background, results.displayed_map, overlay_opacity, orientation, point, size_px)
        path = Path(f"{out_prefix}_{orientation.lower()}.png")
        _write_png(image, path)
        written.append(path)
    return written


def _overlay_opacity(scene: slicer.vtkMRMLScene, results: DetectionResults) -> float:
    # The user's current choice if a slice view shows the displayed map, else the usual default.
    for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
        if composite.GetForegroundVolumeID() == results.displayed_map.GetID():
            return composite.GetForegroundOpacity()
    return 0.5


@contextlib.contextmanager
def _snapshot_slice(context: SceneContext, background: slicer.vtkMRMLVolumeNode, orientation: str,
                    point_ras: tuple[float, float, float], size_px: int):
    """A temporary slice logic showing ``background`` through ``point_ras``; its nodes go on exit."""
    scene = context.scene
    first_new = scene.GetNumberOfNodes()
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(context.app_logic)
    logic.SetMRMLScene(scene)
    try:
        slice_node = logic.AddSliceNode(f"PPRSnapshot{orientation}")
        logic.GetSliceCompositeNode().SetBackgroundVolumeID(background.GetID())
        getattr(slice_node, f"SetOrientationTo{orientation}")()
        logic.ResizeSliceNode(size_px, size_px)
        logic.FitSliceToVolume(background, size_px, size_px)
        slice_node.JumpSliceByOffsetting(*point_ras)
        yield logic, slice_node
    finally:
        logic.SetMRMLScene(None)
        # The slice logic added its slice, composite, model, transform and display nodes: take them out.
        for index in reversed(range(first_new, scene.GetNumberOfNodes())):
            scene.RemoveNode(scene.GetNthNode(index))


def _slice_image(context: SceneContext, background: slicer.vtkMRMLVolumeNode, foreground: slicer.vtkMRMLVolumeNode,
                 opacity: float, orientation: str, point_ras: tuple[float, float, float], size_px: int) -> np.ndarray:
    """RGB pixels (rows top to bottom) of one slice as a slice view would show it, marker drawn."""
    with _snapshot_slice(context, background, orientation, point_ras, size_px) as (logic, slice_node):
        composite = logic.GetSliceCompositeNode()
        composite.SetForegroundVolumeID(foreground.GetID())
        composite.SetForegroundOpacity(opacity)
        producer = logic.GetImageDataConnection().GetProducer()
        producer.Update()
        rgb = _image_to_array(producer.GetOutputDataObject(0))[..., :3].copy()
        _draw_marker(rgb, _ras_to_pixel(slice_node, point_ras))
        return rgb


def _image_to_array(image: vtk.vtkImageData) -> np.ndarray:
    """(rows, cols, components) with row 0 at the top (VTK images start at the bottom)."""
    width, height, _ = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    return scalars.reshape(height, width, -1)[::-1]


def _ras_to_pixel(slice_node: slicer.vtkMRMLSliceNode, point_ras: tuple[float, float, float]) -> tuple[int, int]:
    """Pixel (row from the top, column) of a RAS point in the slice image."""
    ras_to_xy = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Invert(slice_node.GetXYToRAS(), ras_to_xy)
    x, y, _, _ = ras_to_xy.MultiplyPoint((*point_ras, 1.0))
    height = slice_node.GetDimensions()[1]
    return int(round(height - 1 - y)), int(round(x))


def _draw_marker(rgb: np.ndarray, pixel: tuple[int, int], gap: int = 8, arm: int = 14) -> None:
    """A 2-pixel-wide cross with an open centre, so it points at the spot without covering it."""
    row, col = pixel
    height, width, _ = rgb.shape
    for offset in range(gap, gap + arm):
        for side in (0, 1):
            for r, c in ((row - offset, col + side), (row + offset, col + side),
                         (row + side, col - offset), (row + side, col + offset)):
                if 0 <= r < height and 0 <= c < width:
                    rgb[r, c] = MARKER_RGB


def slice_pixel_of(context: SceneContext, background: slicer.vtkMRMLVolumeNode, orientation: str,
                   point_ras: tuple[float, float, float], size_px: int = 512) -> tuple[int, int]:
    """Where ``render_slices`` puts ``point_ras`` in its ``orientation`` picture (row, column)."""
    with _snapshot_slice(context, background, orientation, point_ras, size_px) as (_, slice_node):
        return _ras_to_pixel(slice_node, point_ras)


# ---------------------------------------------------------------------------------------------
# Surface


def _use_offscreen_egl() -> None:
    # Without a display VTK tries X first and warns; EGL renders on the CPU with Mesa llvmpipe.
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def render_surface(results: DetectionResults, path: Path, view_px: int = 400,
                   views: tuple[str, ...] = tuple(SURFACE_VIEWS)) -> Path:
    """Write one PNG with the skull surface coloured as its display shows it (z or error), one tile
    per view (3 per row)."""
    _use_offscreen_egl()
    display = results.skull_surface.GetDisplayNode()
    array_name = display.GetActiveScalarName()
    lookup = vtk.vtkLookupTable()
    lookup.DeepCopy(display.GetColorNode().GetLookupTable())
    lookup.SetRange(display.GetScalarRange())

    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(results.skull_surface.GetPolyData())
    mapper.SetScalarModeToUsePointFieldData()
    mapper.SelectColorArray(array_name)
    mapper.SetLookupTable(lookup)
    mapper.UseLookupTableScalarRangeOn()
    mapper.ScalarVisibilityOn()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetSpecular(0.2)

    renderer = vtk.vtkRenderer()
    renderer.AddActor(actor)
    renderer.AddViewProp(_scalar_bar(lookup, "z" if array_name == Z_ARRAY_NAME else f"error {error_unit_of(results.scores)}"))
    renderer.SetBackground(0.1, 0.1, 0.12)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.AddRenderer(renderer)
    window.SetSize(view_px, view_px)
    label = vtk.vtkTextActor()
    label.GetTextProperty().SetFontSize(16)
    label.SetPosition(8, 8)
    renderer.AddViewProp(label)
    try:
        tiles = []
        for name in views:
            label.SetInput(name)
            tiles.append(_render_view(window, renderer, *SURFACE_VIEWS[name]))
    finally:
        window.Finalize()
    _write_png(_montage(tiles, columns=3), Path(path))
    return Path(path)


def _scalar_bar(lookup: vtk.vtkLookupTable, title: str) -> vtk.vtkScalarBarActor:
    bar = vtk.vtkScalarBarActor()
    bar.SetLookupTable(lookup)
    bar.SetTitle(title)
    bar.SetNumberOfLabels(3)
    bar.SetMaximumWidthInPixels(60)
    bar.SetPosition(0.85, 0.1)
    bar.SetWidth(0.12)
    bar.SetHeight(0.8)
    return bar


def _render_view(window: vtk.vtkRenderWindow, renderer: vtk.vtkRenderer, direction: tuple[float, float, float],
                 view_up: tuple[float, float, float]) -> np.ndarray:
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    camera.SetPosition(*direction)
    camera.SetViewUp(*view_up)
    renderer.ResetCamera()
    renderer.ResetCameraClippingRange()
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.SetInputBufferTypeToRGB()
    grab.Update()
    return _image_to_array(grab.GetOutput())[..., :3].copy()


def _montage(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    rows = -(-len(tiles) // columns)
    height, width, _ = tiles[0].shape
    sheet = np.zeros((rows * height, columns * width, 3), dtype=np.uint8)
    for index, tile in enumerate(tiles):
        row, col = divmod(index, columns)
        sheet[row * height:(row + 1) * height, col * width:(col + 1) * width] = tile
    return sheet


def _write_png(rgb: np.ndarray, path: Path) -> None:
    """Write rows-from-the-top RGB pixels as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, components = rgb.shape
    image = vtk.vtkImageData()
    image.SetDimensions(width, height, 1)
    flat = np.ascontiguousarray(rgb[::-1]).reshape(-1, components)
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    if writer.GetErrorCode() or not path.is_file():
        raise OSError(f"The picture {path} could not be written: check the folder and free space.")
