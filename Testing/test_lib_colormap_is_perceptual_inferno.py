"""The error map's colour table: close to matplotlib's Inferno, lightness rising monotonically, one per scene."""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from PositionRegressionADLib.colormap import build_inferno_color_table, inferno_color_table, inferno_colors


def _table_rgb(table) -> np.ndarray:
    colours = []
    for index in range(table.GetNumberOfColors()):
        rgba = [0.0] * 4
        table.GetColor(index, rgba)
        colours.append(rgba[:3])
    return np.array(colours)


def _lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* of sRGB colours (0..1)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(luminance > 0.008856, 116 * np.cbrt(luminance) - 16, 903.3 * luminance)


def test_the_table_is_within_7_levels_of_matplotlib_inferno():
    matplotlib = pytest.importorskip("matplotlib")
    reference = matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3]
    table = _table_rgb(build_inferno_color_table())
    assert table.shape == (256, 3)
    assert np.abs(table - reference).max() * 255 < 7.0


def test_lightness_rises_monotonically_from_black_to_light_yellow():
    lightness = _lightness(np.array(inferno_colors(256)))
    assert np.all(np.diff(lightness) > 0)
    assert lightness[0] < 2.0 and lightness[-1] > 95.0


def test_each_table_entry_is_opaque_and_named():
    table = build_inferno_color_table(16)
    rgba = [0.0] * 4
    table.GetColor(15, rgba)
    assert rgba[3] == 1.0
    assert table.GetColorName(15) == "inferno 15"


def test_a_scene_gets_one_table_however_often_it_is_asked():
    scene = slicer.vtkMRMLScene()
    first = inferno_color_table(scene)
    second = inferno_color_table(scene)
    assert first is second
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode") == 1


def test_fewer_than_two_colours_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        inferno_colors(1)


def test_the_surface_table_is_bone_then_the_upper_ramp_and_the_range_puts_the_threshold_at_the_seam():
    from PositionRegressionADLib.colormap import (
        BONE_COLOR,
        BONE_FRACTION,
        build_surface_color_table,
        surface_scalar_range,
    )

    rgb = _table_rgb(build_surface_color_table(256))
    seam = round(BONE_FRACTION * 256)
    np.testing.assert_allclose(rgb[:seam], np.tile(BONE_COLOR, (seam, 1)), atol=1 / 255)  # 8-bit table
    ramp = _lightness(rgb[seam:])
    assert np.all(np.diff(ramp) >= -1e-3)  # the coloured part still brightens monotonically
    assert ramp[0] < _lightness(np.array([BONE_COLOR]))[0] - 20  # the first colour stands out from bone
    low, high = surface_scalar_range(4.0, 12.0)
    assert high == 12.0 and low + BONE_FRACTION * (high - low) == pytest.approx(4.0)
