"""Offscreen pictures: slices through the highest error show the overlay there and only there; the
skull surface picture is not blank and shows the error's colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from vtk.util import numpy_support

from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.rendering import MARKER_RGB, SLICE_ORIENTATIONS, render_slices, render_surface, slice_pixel_of
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADLib.testing import FAKE_PEAK_VARIABLE, InProcessFakeDetection, scene_node_ids
from synthetic_heads import oblique_direction, synthetic_head

PEAK_LPS = (-30.0, 15.0, 20.0)  # right parietal brain; LPS x < 0 is the patient's right
SIZE_PX = 256


def read_png(path: Path) -> np.ndarray:
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return pixels[::-1, :, :3].astype(int)  # rows from the top


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    mp = pytest.MonkeyPatch()
    mp.setenv(FAKE_PEAK_VARIABLE, ",".join(str(v) for v in PEAK_LPS))
    try:
        image = synthetic_head(size=(80, 80, 32), spacing=(2.5, 2.7, 5.0), direction=oblique_direction((3, -2, 15)),
                               window_hu=(-20.0, 100.0))
        sitk.WriteImage(image, str(tmp / "head.nii.gz"))
        context = SceneContext.create(tmp / "cache")
        volume = load_volume(context, tmp / "head.nii.gz")
        (tmp / "model").mkdir()
        results = DetectionLogic(context.scene, launcher=InProcessFakeDetection).detect(
            volume, DetectionOptions(model_path=tmp / "model"))
        before = scene_node_ids(context.scene)
        slices = render_slices(context, results, volume, tmp / "png" / "head", size_px=SIZE_PX)
        surface = render_surface(results, tmp / "png" / "surface.png", view_px=200)
        after = scene_node_ids(context.scene)
    finally:
        mp.undo()
    return context, volume, results, slices, surface, before, after


def test_rendering_leaves_the_scene_as_it_was(rendered):
    *_, before, after = rendered
    assert after == before


@pytest.mark.parametrize("orientation", SLICE_ORIENTATIONS)
def test_slice_pictures_show_the_overlay_at_the_highest_error(rendered, orientation):
    context, volume, results, slices, *_ = rendered
    path = slices[SLICE_ORIENTATIONS.index(orientation)]
    assert path.name == f"head_{orientation.lower()}.png"
    pixels = read_png(path)
    assert pixels.shape == (SIZE_PX, SIZE_PX, 3)
    assert pixels.std() > 20  # not blank

    row, col = slice_pixel_of(context, volume, orientation, results.max_error_ras, SIZE_PX)
    assert 0 <= row < SIZE_PX and 0 <= col < SIZE_PX
    # The marker's arms start 8 px from the point: the point itself shows the overlay.
    hot = pixels[row - 2:row + 3, col - 2:col + 3].reshape(-1, 3).mean(axis=0)
    # Inferno's top is a pale yellow: blended over grey it stays clearly yellow (blue well below red).
    assert hot[0] - hot[2] > 30 and hot[0] > 150, f"no overlay colour at the highest error: {hot}"
    assert tuple(pixels[row - 9, col]) == MARKER_RGB

    # Colourful (overlay) pixels are all near the point: the overlay sits where the error is.
    saturation = pixels.max(axis=-1) - pixels.min(axis=-1)
    colourful = np.argwhere((saturation > 30) & ~np.all(pixels == MARKER_RGB, axis=-1))
    distances = np.linalg.norm(colourful - np.array([row, col]), axis=1)
    assert len(colourful) > 20
    assert np.percentile(distances, 95) < SIZE_PX * 0.15


def test_surface_picture_shows_six_coloured_views(rendered):
    *_, surface, _, _ = rendered
    pixels = read_png(surface)
    assert pixels.shape == (400, 600, 3)
    background = pixels[2, 2]
    for row in range(2):
        for col in range(3):
            tile = pixels[row * 200:(row + 1) * 200, col * 200:(col + 1) * 200]
            drawn = np.any(np.abs(tile - background) > 10, axis=-1).mean()
            assert drawn > 0.1, f"view {row * 3 + col} is nearly empty ({drawn:.2%} drawn)"
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 200
