"""Detection: one head CT and a model bundle in, its error map (mm) and region scores out.

Steps, each timed: preprocess (validate, register to the bundle's reference, place on the model
grid, normalise: ``ppr.preprocess.to_model_space``), the error map in model space
(``ppr.inference.error_map``), the map back on the input's own grid (model space -> input space,
linear, ``ppr.geometry.to_input_space``: exactly the input's origin, spacing, direction and size;
0 outside the model grid), and region scores (``ppr.scores``) on the model-space map with the
bundle's reference regions.

What it does not: read or write files (``cli_detect``), train, or calibrate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ppr.bundle import ModelBundle
from ppr.inference import InferenceOptions, error_map, resolve_device
from ppr.registration import RegistrationResult
from ppr.scores import ScoreOptions, error_summary, region_scores

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class DetectOptions:
    """method "dense" | "patches"; stride 1, 2 or 4 (4 = fast preview); device auto | cpu | cuda;
    tile: dense tile edge in voxels (memory bound); scores: region score aggregate."""

    method: str = "dense"
    stride: int = 1
    device: str = "auto"
    tile: int = 128
    scores: ScoreOptions = field(default_factory=ScoreOptions)

    def inference(self) -> InferenceOptions:
        return InferenceOptions(method=self.method, stride=self.stride, device=self.device, tile=self.tile)


@dataclass(frozen=True)
class DetectionResult:
    """error_map_model: float32 mm on the model grid (0 outside the head);
    error_map_input: the same on the input's exact grid; head_mask_model: uint8, model grid;
    registration: model -> input transform and its quality; regions: region scores (mm, None
    where a region misses the scan); error_mm: max, p99, mean over the head; max_error_lps: the
    physical point (LPS mm) of the highest error; seconds: wall time of each step."""

    error_map_model: sitk.Image
    error_map_input: sitk.Image
    head_mask_model: sitk.Image
    registration: RegistrationResult
    regions: dict[str, float | None]
    error_mm: dict[str, float | None]
    max_error_lps: tuple[float, float, float]
    seconds: dict[str, float]
    device: str
    options: DetectOptions


def detect(image: sitk.Image, bundle: ModelBundle, options: DetectOptions = DetectOptions(),
           progress: ProgressFn | None = None) -> DetectionResult:
    """The whole pipeline for one scan (see the module docstring).

    Raises InputImageError / RegistrationError (from preprocessing) with messages for the user.
    """
    from ppr.preprocess import to_input_space, to_model_space

    report = progress or (lambda fraction, message: None)
    seconds: dict[str, float] = {}
    device = resolve_device(options.device)

    report(0.0, "bringing the scan into model space")
    started = time.perf_counter()
    model = to_model_space(image, bundle.reference, bundle.preprocess)
    seconds["preprocess"] = time.perf_counter() - started
    seconds.update({f"preprocess.{step}": value for step, value in model.seconds.items()})

    report(0.3, "computing the error map")
    started = time.perf_counter()
    volume = sitk.GetArrayFromImage(model.volume).astype(np.float32)
    head = sitk.GetArrayFromImage(model.head_mask) > 0
    errors = error_map(volume, head, bundle.network, bundle.preprocess.spacing_mm, options.inference(),
                       _scaled(report, 0.3, 0.85))
    seconds["error_map"] = time.perf_counter() - started

    report(0.85, "mapping the error map onto the input grid")
    started = time.perf_counter()
    error_model = sitk.GetImageFromArray(errors.astype(np.float32))
    error_model.CopyInformation(model.volume)
    error_input = sitk.Cast(to_input_space(error_model, model.registration.transform, image, 0.0),
                            sitk.sitkFloat32)
    seconds["to_input_space"] = time.perf_counter() - started

    report(0.9, "scoring regions")
    started = time.perf_counter()
    regions = region_scores(errors, bundle.region_masks, head, options.scores)
    summary = error_summary(errors, head)
    seconds["scores"] = time.perf_counter() - started
    report(1.0, "done")
    return DetectionResult(error_model, error_input, model.head_mask, model.registration, regions, summary,
                           highest_error_point(error_input), seconds, str(device), options)


def highest_error_point(error_map_input: sitk.Image) -> tuple[float, float, float]:
    """Physical point (LPS mm) of the voxel with the highest error."""
    values = sitk.GetArrayViewFromImage(error_map_input)
    k, j, i = np.unravel_index(int(np.argmax(values)), values.shape)
    return tuple(float(v) for v in error_map_input.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    return lambda fraction, message: progress(start + (end - start) * fraction, message)
