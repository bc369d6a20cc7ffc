"""Outputs in the format of the Medical Out-of-Distribution Analysis Challenge (MOOD, MICCAI).

What it does: writes, for one case, the two files MOOD's evaluation reads (github.com/MIC-DKFZ/mood,
scripts/evalresults.py):
- pixel level: a NIfTI named like the input file (``00000.nii.gz``) with the input's shape and
  geometry, one score per voxel in [0, 1] (MOOD clips to [0, 1], reads it as float16, and pools all
  voxels of all cases into one average precision);
- sample level: ``<input file name>.txt`` (``00000.nii.gz.txt``) holding one number in [0, 1]
  (MOOD pools the cases into one average precision).

Why a fixed normalisation. Both MOOD metrics rank scores *across* cases. Per-case min-max scaling
would give every case a voxel at 1.0, so the brightest noise of a healthy scan would tie with a
real lesion and the pooled AP would collapse; it would also make a healthy case's sample score
depend on its own worst voxel only. The map to [0, 1] is therefore one strictly increasing function
fixed per model (``MoodNormalisation``): ``v / (v + half)`` for error maps (PPR position error in mm,
autoencoder residual in intensity; half maps to 0.5), or a logistic of ``(z - centre) / width`` for z-maps (centre: the calibration's overlay
threshold maps to 0.5). Both keep the order of every pair of values (no clipping, so no new ties
beyond float precision); they are centred on the interesting range because MOOD reads float16,
which resolves about 5e-4 near 1.

What it does not: compute the maps or the sample score (``ppr.workflows.detection``, ``ppr.statistics.calibration``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ppr.image.imageio import write_image, write_text
from ppr.statistics.calibration import Calibration

NIFTI_SUFFIXES = (".nii.gz", ".nii")
DEFAULT_HALF_MM = 20.0  # about the healthy median error of a coarse model (DESIGN.md: ~30 mm mean)
DEFAULT_HALF_INTENSITY = 0.05  # about an autoencoder's healthy residual on the [0, 1] intensity scale
ERROR_KINDS = {"mm": DEFAULT_HALF_MM, "intensity": DEFAULT_HALF_INTENSITY}
DEFAULT_Z_WIDTH = 2.0  # z within centre +- 8 stays resolvable in float16 (0.018 .. 0.982)


@dataclass(frozen=True)
class MoodNormalisation:
    """A strictly increasing map of a score (mm, intensity or z) to [0, 1], fixed per model.

    kind "mm" or "intensity" (an error map in that unit): ``v / (v + half)`` for v >= 0 (negative
    values are 0); ``half``, in the map's unit, maps to 0.5 (``for_error`` picks the unit's default).
    kind "z": ``1 / (1 + exp(-(v - centre) / width))``.
    """

    kind: str = "mm"
    half: float = DEFAULT_HALF_MM
    centre: float = 0.0
    width: float = DEFAULT_Z_WIDTH

    def __post_init__(self) -> None:
        if self.kind not in (*ERROR_KINDS, "z"):
            raise ValueError(f"kind must be one of {(*ERROR_KINDS, 'z')}, got {self.kind!r}")
        if self.half <= 0 or self.width <= 0:
            raise ValueError("half and width must be positive")

    @classmethod
    def for_error(cls, unit: str, half: float | None = None) -> "MoodNormalisation":
        """Error maps in ``unit`` ("mm" or "intensity"): ``half`` maps to 0.5 (default: the unit's)."""
        if unit not in ERROR_KINDS:
            raise ValueError(f"unknown error unit {unit!r}; expected one of {tuple(ERROR_KINDS)}")
        return cls(kind=unit, half=ERROR_KINDS[unit] if half is None else half)

    @classmethod
    def for_z(cls, calibration: Calibration, width: float = DEFAULT_Z_WIDTH) -> "MoodNormalisation":
        """z-maps of a calibrated model: its overlay threshold maps to 0.5."""
        return cls(kind="z", centre=float(calibration.overlay_threshold_z), width=width)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=-np.inf if self.kind == "z" else 0.0)
        if self.kind in ERROR_KINDS:
            positive = np.maximum(values, 0.0)
            return np.where(np.isinf(positive), 1.0, positive / (positive + self.half))
        # exp overflows harmlessly to inf for very negative z: the result is 0
        with np.errstate(over="ignore"):
            return 1.0 / (1.0 + np.exp(-(values - self.centre) / self.width))


@dataclass(frozen=True)
class MoodOutputs:
    pixel_path: Path
    sample_path: Path


def mood_file_names(case_name: str) -> tuple[str, str]:
    """Pixel and sample file names for a case, following MOOD's naming.

    "00000.nii.gz" -> ("00000.nii.gz", "00000.nii.gz.txt"); "ctich_051" -> ("ctich_051.nii.gz",
    "ctich_051.txt"). MOOD names the sample file after the input file, so pass the input's file name.
    """
    if not case_name or Path(case_name).name != case_name:
        raise ValueError(f"case_name must be a plain file name, got {case_name!r}")
    pixel = case_name if case_name.endswith(NIFTI_SUFFIXES) else f"{case_name}.nii.gz"
    return pixel, f"{case_name}.txt"


def write_mood_outputs(
    error_map_input_space: sitk.Image,
    sample_score: float,
    out_dir: str | Path,
    case_name: str,
    normalisation: MoodNormalisation = MoodNormalisation(),
    sample_normalisation: MoodNormalisation | None = None,
) -> MoodOutputs:
    """Write the pixel-level NIfTI and the sample-level text file of one case into ``out_dir``.

    error_map_input_space: the case's map on the input's exact grid (``to_input_space``), in the
        units ``normalisation`` expects (mm or z); NaN voxels (not computed) are written as 0.
    sample_score: the case's score, mapped by ``sample_normalisation`` (None: ``normalisation``, for a
        region aggregate of the same map; the anomaly map's cases are scored on the position z-map,
        whose threshold differs).
    """
    if error_map_input_space.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the error map must be a scalar image")
    if not math.isfinite(float(sample_score)):
        raise ValueError(f"sample_score must be finite, got {sample_score}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pixel_name, sample_name = mood_file_names(case_name)
    scores = normalisation(sitk.GetArrayViewFromImage(error_map_input_space)).astype(np.float32)
    pixel_image = sitk.GetImageFromArray(scores)
    pixel_image.CopyInformation(error_map_input_space)  # same shape, origin, spacing, direction
    write_image(pixel_image, out_dir / pixel_name)  # whole or not at all, as every result
    sample_value = float((sample_normalisation or normalisation)(np.array([sample_score]))[0])
    write_text(out_dir / sample_name, f"{sample_value:.9g}\n")
    return MoodOutputs(out_dir / pixel_name, out_dir / sample_name)
