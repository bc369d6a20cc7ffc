"""Checks that an image can be a head CT before any work is spent on it.

Each check raises ``InputImageError`` with its own plain message (what is wrong, what to do): not a
3D volume (a single slice, 4D, colour/vector pixels), non-finite values, a blank image, an extent too
small for a head, intensities that cannot be CT. It does not check anatomy: that is the
registration's quality figure (``ppr.image.registration``). It never modifies the image.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import InputImageError

MIN_HEAD_EXTENT_MM = 60.0
# True-HU CT of a head always shows air around the head (about -1000 HU) and the skull (> 300 HU).
AIR_HU = -700.0
BONE_HU = 300.0
MIN_AIR_FRACTION = 0.01
MIN_BONE_FRACTION = 0.001
# Pre-windowed data saturates at both ends of its window: air and fat at the bottom, bone at the top.
WINDOW_END_TOLERANCE = 0.02


def check_volume(image: sitk.Image) -> None:
    """Raise InputImageError unless ``image`` is one 3D scalar volume of finite numbers: what every
    loader (CLI, batch, Lib, web viewer) checks before any other use of a scan."""
    _check_scalar(image)
    _check_dimension(image)
    check_finite(sitk.GetArrayViewFromImage(image))


def validate_head_ct(image: sitk.Image, config: PreprocessConfig) -> None:
    """Raise InputImageError if ``image`` cannot be a head CT; return None if it can."""
    check_volume(image)
    values = sitk.GetArrayViewFromImage(image)
    low, high = float(values.min()), float(values.max())
    if low == high:
        raise InputImageError(
            f"Every voxel of the image has the same value ({low:g}): it is blank. "
            "Check that the right file was exported."
        )
    _check_extent(image)
    if config.prewindowed:
        _check_spans_window(values, config.window_hu)
    else:
        _check_ct_intensities(values)


def _check_scalar(image: sitk.Image) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        raise InputImageError(
            f"The image has {components} values per voxel (a colour or vector image), "
            "but a CT has one intensity per voxel. Load the original grey-scale CT."
        )


def _check_dimension(image: sitk.Image) -> None:
    dimension = image.GetDimension()
    if dimension == 2:
        raise InputImageError(
            "The image is a single 2D slice, but a 3D head CT volume is needed. "
            "Load the whole series (the folder of DICOM slices), not one file."
        )
    if dimension == 4:
        raise InputImageError(
            f"The image is 4D (size {image.GetSize()}, e.g. a time series), but one 3D head CT "
            "volume is needed. Extract a single 3D volume first."
        )
    if dimension != 3:
        raise InputImageError(f"The image has {dimension} dimensions; a 3D head CT volume is needed.")
    size = image.GetSize()
    if min(size) < 2:
        raise InputImageError(
            f"The image holds a single slice (size {size}), but a 3D head CT volume is needed. "
            "Load the whole series (the folder of DICOM slices), not one file."
        )


def check_finite(values: np.ndarray) -> None:
    if not np.issubdtype(values.dtype, np.floating):
        return
    bad = np.count_nonzero(~np.isfinite(values))
    if bad:
        raise InputImageError(
            f"The image has {bad} voxels that are not numbers (NaN or infinite). "
            "Re-export the scan, or replace them with air (-1000 HU)."
        )


def _check_extent(image: sitk.Image) -> None:
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    if min(extent) < MIN_HEAD_EXTENT_MM:
        shown = " x ".join(f"{e:.0f}" for e in extent)
        raise InputImageError(
            f"The image covers only {shown} mm, too small to be a head (at least "
            f"{MIN_HEAD_EXTENT_MM:.0f} mm on every axis is needed). Load the whole head scan, "
            "and check the voxel spacing in the file."
        )


def _check_ct_intensities(values: np.ndarray) -> None:
    air = np.count_nonzero(values <= AIR_HU) / values.size
    bone = np.count_nonzero(values >= BONE_HU) / values.size
    if air >= MIN_AIR_FRACTION and bone >= MIN_BONE_FRACTION:
        return
    missing = []
    if air < MIN_AIR_FRACTION:
        missing.append(f"no air near -1000 HU ({100 * air:.2f}% of voxels below {AIR_HU:g})")
    if bone < MIN_BONE_FRACTION:
        missing.append(f"no bone ({100 * bone:.2f}% of voxels above {BONE_HU:g} HU)")
    raise InputImageError(
        "The intensities do not look like a CT in Hounsfield units: "
        + " and ".join(missing)
        + f"; values range from {values.min():g} to {values.max():g}. An MRI or an image without "
        "its HU rescaling cannot be used. If the CT was exported in a display window "
        "(air and bone saturated), say so with the pre-windowed option."
    )


def _check_spans_window(values: np.ndarray, window_hu: tuple[float, float]) -> None:
    lo, hi = window_hu
    tolerance = WINDOW_END_TOLERANCE * (hi - lo)
    air = np.count_nonzero(values <= lo + tolerance) / values.size
    bone = np.count_nonzero(values >= hi - tolerance) / values.size
    if air >= MIN_AIR_FRACTION and bone >= MIN_BONE_FRACTION:
        return
    raise InputImageError(
        f"The image was said to be pre-windowed to [{lo:g}, {hi:g}] HU, but its values "
        f"(from {values.min():g} to {values.max():g}) do not fill that window: "
        f"{100 * air:.2f}% of voxels at the bottom (air, needs {100 * MIN_AIR_FRACTION:g}%) and "
        f"{100 * bone:.3f}% at the top (bone, needs {100 * MIN_BONE_FRACTION:g}%). "
        "Set the window the data was exported in, or use data in Hounsfield units."
    )
