"""The error map's colour table: an Inferno-like perceptual ramp built in code.

Slicer ships no Inferno or Viridis table, and a rainbow would invent edges in a smooth error map, so
the table is interpolated from 17 control colours of matplotlib's Inferno (black, purple, red, yellow:
lightness rises monotonically, readable in greyscale print). It does not pick the displayed range:
the display nodes map their own window onto the table.
"""

from __future__ import annotations

import slicer

COLOR_TABLE_NAME = "PPR Inferno"
# A singleton tag makes a second detection (or a loaded scene) reuse the table instead of adding a copy.
COLOR_TABLE_SINGLETON_TAG = "PPRInferno"

# Matplotlib's Inferno sampled at 17 evenly spaced points; linear interpolation between them stays
# within 7/255 of the original 256-entry map.
INFERNO_CONTROL_COLORS: tuple[str, ...] = (
    "#000004", "#0b0724", "#210c4a", "#3d0965", "#57106e", "#71196e", "#8a226a", "#a32c61", "#bc3754",
    "#d04545", "#e35933", "#f1711f", "#f98c0a", "#fcaa0f", "#f9c932", "#f2e865", "#fcffa4",
)


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    value = hex_colour.lstrip("#")
    return tuple(int(value[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


def inferno_colors(count: int = 256) -> list[tuple[float, float, float]]:
    """``count`` RGB colours (0..1) of the Inferno-like ramp, dark to light."""
    if count < 2:
        raise ValueError(f"a colour ramp needs at least 2 colours, got {count}")
    controls = [_rgb(colour) for colour in INFERNO_CONTROL_COLORS]
    segments = len(controls) - 1
    colours = []
    for index in range(count):
        position = index / (count - 1) * segments
        lower = min(int(position), segments - 1)
        weight = position - lower
        colours.append(tuple((1 - weight) * a + weight * b for a, b in zip(controls[lower], controls[lower + 1])))
    return colours


def build_inferno_color_table(count: int = 256) -> slicer.vtkMRMLColorTableNode:
    """A new colour table node (not yet in any scene) holding the ramp."""
    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToUser()
    table.SetName(COLOR_TABLE_NAME)
    table.SetNumberOfColors(count)
    table.GetLookupTable().SetTableRange(0, count - 1)
    for index, (red, green, blue) in enumerate(inferno_colors(count)):
        table.SetColor(index, f"inferno {index}", red, green, blue, 1.0)
    table.SetSingletonTag(COLOR_TABLE_SINGLETON_TAG)
    return table


def existing_inferno_color_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode | None:
    """The scene's Inferno-like table if a detection (or a loaded scene) put one there."""
    return scene.GetSingletonNode(COLOR_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")


def inferno_color_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode:
    """The scene's Inferno-like table, added on first use and reused afterwards."""
    existing = existing_inferno_color_table(scene)
    return existing if existing is not None else scene.AddNode(build_inferno_color_table())
