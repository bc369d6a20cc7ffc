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


def _color_table(name: str, singleton_tag: str,
                 entries: list[tuple[str, tuple[float, float, float]]]) -> slicer.vtkMRMLColorTableNode:
    """A new user colour table node (not yet in any scene) holding ``entries`` (name, RGB 0..1)."""
    table = slicer.vtkMRMLColorTableNode()
    table.SetTypeToUser()
    table.SetName(name)
    table.SetNumberOfColors(len(entries))
    table.GetLookupTable().SetTableRange(0, len(entries) - 1)
    for index, (entry_name, (red, green, blue)) in enumerate(entries):
        table.SetColor(index, entry_name, red, green, blue, 1.0)
    table.SetSingletonTag(singleton_tag)
    return table


def build_inferno_color_table(count: int = 256) -> slicer.vtkMRMLColorTableNode:
    """A new colour table node (not yet in any scene) holding the ramp."""
    return _color_table(COLOR_TABLE_NAME, COLOR_TABLE_SINGLETON_TAG,
                        [(f"inferno {index}", colour) for index, colour in enumerate(inferno_colors(count))])


def existing_inferno_color_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode | None:
    """The scene's Inferno-like table if a detection (or a loaded scene) put one there."""
    return scene.GetSingletonNode(COLOR_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")


def inferno_color_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode:
    """The scene's Inferno-like table, added on first use and reused afterwards."""
    existing = existing_inferno_color_table(scene)
    return existing if existing is not None else scene.AddNode(build_inferno_color_table())


# ---------------------------------------------------------------------------------------------
# The skull surface's table: bone below the threshold, the ramp above it.
#
# With the plain ramp the surface is black wherever the map is near 0, which is almost everywhere:
# the skull reads as a dark silhouette and the eye cannot place the hot spots on it. The surface
# table starts with BONE_FRACTION of its entries in a bone colour; the surface's scalar range is
# set so that the overlay threshold falls exactly where the bone ends (``surface_scalar_range``),
# so the skull is bone-coloured where the slices show nothing and coloured where they show the map.

SURFACE_TABLE_NAME = "PPR skull surface"
SURFACE_TABLE_SINGLETON_TAG = "PPRSkullSurface"
BONE_FRACTION = 0.25
BONE_COLOR = (0.89, 0.85, 0.79)
# The ramp part starts at a visible purple, not at Inferno's black, so the threshold stands out.
SURFACE_RAMP_START = 0.3


def build_surface_color_table(count: int = 256) -> slicer.vtkMRMLColorTableNode:
    """A new colour table node (not yet in any scene): bone, then the upper part of the ramp."""
    bone_entries = round(BONE_FRACTION * count)
    if bone_entries < 1 or count - bone_entries < 2:
        raise ValueError(f"a surface table needs room for bone and a ramp, got {count} colours")
    ramp = inferno_colors(256)[round(SURFACE_RAMP_START * 255):]
    ramp_entries = count - bone_entries
    entries = [("bone", BONE_COLOR)] * bone_entries + [
        (f"surface {offset}", ramp[round(offset / (ramp_entries - 1) * (len(ramp) - 1))])
        for offset in range(ramp_entries)]
    return _color_table(SURFACE_TABLE_NAME, SURFACE_TABLE_SINGLETON_TAG, entries)


def existing_surface_color_table(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLColorTableNode | None:
    """The scene's skull surface table if a detection (or a loaded scene) put one there."""
    return scene.GetSingletonNode(SURFACE_TABLE_SINGLETON_TAG, "vtkMRMLColorTableNode")


def surface_scalar_range(threshold: float, top: float) -> tuple[float, float]:
    """The surface's scalar range that puts ``threshold`` where the bone part of the table ends
    and ``top`` at its last colour (the overlay's own colour maximum)."""
    top = max(top, threshold + 1e-6)
    low = threshold - BONE_FRACTION / (1.0 - BONE_FRACTION) * (top - threshold)
    return low, top
