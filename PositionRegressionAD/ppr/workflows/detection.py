"""Detection: one head CT and a model bundle in, its error map, z-map and region scores out.

Steps, each timed: preprocess (validate, register to the bundle's reference, place on the model
grid, normalise: ``ppr.image.preprocess.to_model_space``), the error map in model space
(``ppr.networks.inference.error_map``), the map back on the input's own grid (model space -> input space,
linear, ``ppr.image.geometry.to_input_space``: exactly the input's origin, spacing, direction and size;
0 outside the model grid), and region scores (``ppr.statistics.scores``) on the model-space map with the
bundle's reference regions.

With a calibrated bundle (``bundle.calibration``, unless ``DetectOptions.use_calibration`` is
False) it also computes the z-map in model space (``ppr.statistics.scores.head_z_map``: 0 outside the head),
brings it to input space the same way as the error map, scores the regions on the z-map instead of
the error, and places the most anomalous point at the highest z inside brain and skull
(``ppr.statistics.scores.focus_mask``). Without calibration the region scores and the most anomalous point
come from the error in mm, as before calibration existed.

With a calibrated bundle that also carries an intensity atlas (``bundle.intensity_atlas``,
``ppr.statistics.intensity_atlas``), the shown map (``z_map_*``, the overlay, the most anomalous point,
the candidates downstream) is the anomaly map: the scan's density against healthy heads at the same
place, raised where the position error is unusual too; its threshold is the atlas's. The position
z-map stays available as its own map (``position_z_map_*``, "PPR position error") and the region
scores and the out-of-depth check stay on it: it carries the patient-level signal, the anomaly map
the localisation (the model card's figures).

Only the measured head counts (``ppr.image.field_of_view``: this scan's head mask less the places whose
network context reaches a cut of its field of view, where the scanned box cuts through the head):
the region scores, the summaries, the most anomalous point and the out-of-depth check
(``ppr.statistics.reliability``, calibrated bundles only) look there only, and the z-map is 0 elsewhere. The
error map keeps the raw error of the whole head.

An autoencoder bundle (``bundle.method == "ae"``, the paper's baseline) goes through the same steps
with the residual map of ``ppr.networks.autoencoder.residual_map`` (post-filtered |x - AE(x)|, unit
"intensity") in place of the position error (unit "mm"); ``DetectionResult.unit`` says which.
Everything after the map (input space, calibration, z-map, region scores) is the same code.

What it does not: read or write files (``ppr.cli.detect``), train, or calibrate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import SimpleITK as sitk

from ppr.image.field_of_view import context_voxels, measured_mask, scanned_box
from ppr.image.geometry import to_input_space
from ppr.image.preprocess import to_model_space
from ppr.image.registration import RegistrationResult
from ppr.networks.autoencoder import POST_FILTERS, residual_map
from ppr.networks.inference import InferenceOptions, error_map, resolve_device
from ppr.statistics.calibration import measured_on_grid
from ppr.statistics.intensity_atlas import anomaly_map, intensity_z_map, soft_tissue_mask
from ppr.statistics.reliability import Reliability, assess
from ppr.statistics.scores import BRAIN_REGIONS, ScoreOptions, error_summary, focus_mask, head_z_map, region_scores
from ppr.workflows.bundle import ModelBundle

ProgressFn = Callable[[float, str], None]


@dataclass(frozen=True)
class DetectOptions:
    """method "dense" | "patches"; stride 1, 2 or 4 (4 = fast preview); device auto | cpu | cuda;
    tile: dense tile edge in voxels (memory bound); scores: region score aggregate;
    use_calibration: compute the z-map and score on it when the bundle is calibrated (False: the
    raw error in mm only, e.g. to compare, or while calibrating); post_filter: the autoencoder's
    residual post-filter, "erosion" (haemorrhage, the default), "median" (fracture) or "none"
    (ignored for PPR bundles; method, stride and tile are ignored for AE bundles, which reconstruct
    the whole volume at once)."""

    method: str = "dense"
    stride: int = 1
    device: str = "auto"
    tile: int = 128
    scores: ScoreOptions = field(default_factory=ScoreOptions)
    use_calibration: bool = True
    post_filter: str = "erosion"

    def __post_init__(self) -> None:
        if self.post_filter not in POST_FILTERS:
            raise ValueError(f"post_filter must be one of {POST_FILTERS}, got {self.post_filter!r}")

    def inference(self) -> InferenceOptions:
        return InferenceOptions(method=self.method, stride=self.stride, device=self.device, tile=self.tile)


@dataclass(frozen=True)
class DetectionResult:
    """error_map_model: float32 in ``unit`` on the model grid (0 outside the head);
    error_map_input: the same on the input's exact grid; head_mask_model: uint8, model grid;
    registration: model -> input transform and its quality; regions: region scores (z with a
    calibration, else the error's unit; None where a region misses the scan); error_mm: max, p99,
    mean of the error over the head (in ``unit``: mm for PPR, intensity for the AE); max_error_lps: the physical point (LPS mm) of the highest z inside brain
    and skull (calibrated) or of the highest error (not calibrated); seconds: wall time of each step.
    z_map_model / z_map_input: the calibrated z-map (float32, 0 outside the head) on the model grid
    and on the input's exact grid, None without calibration; z: max, p99, mean of z over the head;
    overlay_threshold_z: the calibration's overlay threshold (None without calibration);
    unit: the error map's unit, "mm" (PPR position error) or "intensity" (AE residual);
    measured_mask_model: uint8, model grid: the head less the places near a cut of the field of
    view (``ppr.image.field_of_view``), where scores, summaries and z look; reliability: the
    out-of-depth check (``ppr.statistics.reliability``), None without calibration;
    brain_shift_hu: HU added to the scan so that its brain's median matches the reference's
    (``ppr.image.preprocess``; how far this scanner's calibration is from the training data's).
    position_z_map_model / position_z_map_input: the position error's z-map ("PPR position error")
    when the shown z-map is the anomaly map (bundle with an intensity atlas), else None (the shown
    z-map is the position z-map itself); position_overlay_threshold_z: its threshold.
    volume_model: the scan in model space (normalised intensity), as the network saw it;
    windowed_hu_model: the same in HU clipped to the window (where its bone is)."""

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
    z_map_model: sitk.Image | None = None
    z_map_input: sitk.Image | None = None
    z: dict[str, float | None] | None = None
    overlay_threshold_z: float | None = None
    unit: str = "mm"
    brain_shift_hu: float = 0.0
    measured_mask_model: sitk.Image | None = None
    reliability: Reliability | None = None
    position_z_map_model: sitk.Image | None = None
    position_z_map_input: sitk.Image | None = None
    position_overlay_threshold_z: float | None = None
    volume_model: sitk.Image | None = None
    windowed_hu_model: sitk.Image | None = None

    @property
    def shown_map(self) -> str:
        """What z_map_* holds: "anomaly" (intensity against the atlas, raised by the position z),
        "position z" (calibrated, no atlas) or "none" (not calibrated)."""
        if self.z_map_model is None:
            return "none"
        return "anomaly" if self.position_z_map_model is not None else "position z"

    @property
    def score_map(self) -> str:
        """"z" when the regions were scored on the calibrated z-map, else the raw error's unit
        ("mm" for PPR, "intensity" for the AE)."""
        return "z" if self.z_map_model is not None else self.unit


def detect(image: sitk.Image, bundle: ModelBundle, options: DetectOptions = DetectOptions(),
           progress: ProgressFn | None = None) -> DetectionResult:
    """The whole pipeline for one scan (see the module docstring).

    Raises InputImageError / RegistrationError (from preprocessing) with messages for the user, and
    PPRError when the bundle's calibration was made for another model grid.
    """
    report = progress or (lambda fraction, message: None)
    seconds: dict[str, float] = {}
    device = resolve_device(options.device)
    calibration = bundle.calibration if options.use_calibration else None

    report(0.0, "bringing the scan into model space")
    started = time.perf_counter()
    model = to_model_space(image, bundle.reference, bundle.preprocess, bundle.intensity_anchor)
    seconds["preprocess"] = time.perf_counter() - started
    seconds.update({f"preprocess.{step}": value for step, value in model.seconds.items()})

    report(0.3, "computing the error map")
    started = time.perf_counter()
    volume = sitk.GetArrayFromImage(model.volume).astype(np.float32)
    whole_head = sitk.GetArrayFromImage(model.head_mask) > 0
    # The network still sees the whole head; only what is scored is the measured part.
    head = measured_mask(whole_head, scanned_box(image, model.registration.transform, model.volume),
                         context_voxels(bundle.network))
    fully_cut = not head.any()
    if fully_cut:  # no place a whole patch away from every cut: score the head, and say so (reliability)
        head = whole_head
    if bundle.method == "ae":
        errors = residual_map(volume, whole_head, bundle.network, options.post_filter, device)
    else:
        errors = error_map(volume, whole_head, bundle.network, bundle.preprocess.spacing_mm, options.inference(),
                           _scaled(report, 0.3, 0.85))
    # The summary (error_mm) is over the head; the map resampled to the input must hold nothing
    # else, or its linear mixes could exceed that summary (inference already returns 0 outside the
    # head; this keeps the two consistent whatever the inference path does outside it).
    errors = np.where(whole_head, errors, np.float32(0.0)).astype(np.float32, copy=False)
    seconds["error_map"] = time.perf_counter() - started

    report(0.85, "mapping the error map onto the input grid")
    started = time.perf_counter()
    error_model = _model_image(errors, model.volume)
    error_input = _on_input_grid(error_model, model.registration, image)
    seconds["to_input_space"] = time.perf_counter() - started

    z_model = z_input = reliability = position_model = position_input = None
    shown_threshold = None if calibration is None else float(calibration.overlay_threshold_z)
    focus = focus_mask(bundle.region_masks, head)  # brain and skull in this head: where findings are looked for
    if calibration is not None:
        report(0.88, "computing the z-map")
        started = time.perf_counter()
        z_values = head_z_map(errors, head, calibration)
        z_model = _model_image(z_values, model.volume)
        z_input = _on_input_grid(z_model, model.registration, image)
        calibrated = head & measured_on_grid(calibration, z_values.shape)
        brain = np.zeros_like(head)
        for name in BRAIN_REGIONS:
            brain |= bundle.region_masks.get(name, False)
        reliability = assess(z_values, brain & calibrated, focus & calibrated, calibration, measured=not fully_cut)
        seconds["z_map"] = time.perf_counter() - started
        shown_values = z_values
        if bundle.intensity_atlas is not None and bundle.method == "ppr":
            report(0.9, "computing the anomaly map")
            started = time.perf_counter()
            tissue = soft_tissue_mask(sitk.GetArrayViewFromImage(model.windowed_hu), head, bundle.preprocess)
            density_z = intensity_z_map(volume, tissue, bundle.intensity_atlas)
            shown_values = anomaly_map(density_z, z_values, float(calibration.overlay_threshold_z), focus)
            position_model, position_input = z_model, z_input
            z_model = _model_image(shown_values, model.volume)
            z_input = _on_input_grid(z_model, model.registration, image)
            shown_threshold = float(bundle.intensity_atlas.overlay_threshold_z)
            seconds["anomaly_map"] = time.perf_counter() - started

    report(0.92, "scoring regions")
    started = time.perf_counter()
    scored = errors if z_model is None else z_values
    regions = region_scores(scored, bundle.region_masks, head, options.scores)
    summary = error_summary(errors, whole_head)  # describes the error map, which keeps the whole head
    if z_input is None:
        point = highest_error_point(error_input)
    else:
        point = highest_point_inside(z_input, _model_image(focus.astype(np.uint8), model.volume),
                                     model.registration)
    seconds["scores"] = time.perf_counter() - started
    report(1.0, "done")
    return DetectionResult(
        error_model, error_input, model.head_mask, model.registration, regions, summary, point, seconds,
        str(device), options, z_map_model=z_model, z_map_input=z_input,
        z=None if z_model is None else error_summary(shown_values, head),
        overlay_threshold_z=shown_threshold,
        unit=bundle.error_unit, brain_shift_hu=model.brain_shift_hu,
        measured_mask_model=_model_image(head.astype(np.uint8), model.volume), reliability=reliability,
        position_z_map_model=position_model, position_z_map_input=position_input,
        position_overlay_threshold_z=None if position_model is None else float(calibration.overlay_threshold_z),
        volume_model=model.volume, windowed_hu_model=model.windowed_hu)


def highest_error_point(error_map_input: sitk.Image) -> tuple[float, float, float]:
    """Physical point (LPS mm) of the voxel with the highest error."""
    values = sitk.GetArrayViewFromImage(error_map_input)
    k, j, i = np.unravel_index(int(np.argmax(values)), values.shape)
    return tuple(float(v) for v in error_map_input.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))


def highest_point_inside(map_input: sitk.Image, mask_model: sitk.Image,
                         registration: RegistrationResult) -> tuple[float, float, float]:
    """Physical point (LPS mm) of the input voxel with the highest value inside a model-space mask.

    The mask goes model space -> input space (nearest neighbour, the input's exact grid) so the
    point is a voxel of the map the user sees; where the mask misses the input grid altogether,
    the highest voxel of the whole map.
    """
    mask = to_input_space(mask_model, registration.transform, map_input, 0, sitk.sitkNearestNeighbor)
    inside = sitk.GetArrayViewFromImage(mask) > 0
    values = sitk.GetArrayViewFromImage(map_input)
    if not inside.any():
        return highest_error_point(map_input)
    candidates = np.where(inside, values, -np.inf)
    k, j, i = np.unravel_index(int(np.argmax(candidates)), candidates.shape)
    return tuple(float(v) for v in map_input.TransformIndexToPhysicalPoint((int(i), int(j), int(k))))


def _model_image(values: np.ndarray, model_volume: sitk.Image) -> sitk.Image:
    """A model-space array (z, y, x) as an image on the model grid."""
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(model_volume)
    return image


def _on_input_grid(model_map: sitk.Image, registration: RegistrationResult, image: sitk.Image) -> sitk.Image:
    """Model space -> input space (linear, 0 outside the model grid), float32 on the input's exact grid."""
    return sitk.Cast(to_input_space(sitk.Cast(model_map, sitk.sitkFloat32), registration.transform, image, 0.0),
                     sitk.sitkFloat32)


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    return lambda fraction, message: progress(start + (end - start) * fraction, message)
