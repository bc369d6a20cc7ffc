"""Evaluation of a model bundle on labelled cases: the evaluation run, its cache and its outputs.

What it does:
- ``evaluate``: detection (or the cached maps) of every case, region and voxel scores, the metrics
  of ``ppr.statistics.metrics`` with bootstrap intervals, ``cases.csv``, ROC plots, MOOD outputs.
- ``evaluate_models``: several model bundles (e.g. PPR and the autoencoder baseline) on the same
  cases, each in its own subfolder, and one comparison (``comparison.json`` with the key
  ``methods``, and ``comparison.md``): one row per model and score map (the raw error, and the
  calibrated z where the bundle has a calibration).

What it does not: compute error maps (``ppr.workflows.detection``) or region masks (``ppr.image.masks``); it reads
them. Argument parsing and printing live in ``ppr.cli.evaluate``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.errors import InputImageError, OutputFileError, PPRError
from ppr.image.geometry import to_input_space
from ppr.image.imageio import file_digest, image_case_name, read_image, write_atomically, write_image, write_text
from ppr.statistics.calibration import Aggregation, Calibration, z_map
from ppr.statistics.intensity_atlas import anomaly_map, intensity_z_map, soft_tissue_mask
from ppr.statistics.metrics import (
    DEFAULT_BINS, ScoreHistogram, average_precision, bootstrap_ci, none_if_nan, roc_auc, roc_curve_points,
)
from ppr.statistics.scores import focus_mask, region_scores
from ppr.workflows.detection import DetectOptions, detect
from ppr.workflows.mood import MoodNormalisation, write_mood_outputs

# ----------------------------------------------------------------------------- cases

STRUCTURES: dict[str, str] = {  # label column -> region mask it is scored in
    "any": "head",
    "left": "left_hemisphere",
    "right": "right_hemisphere",
    "skull": "skull",
}
REGIONS = tuple(STRUCTURES.values())


@dataclass(frozen=True)
class Case:
    """One row of the cases CSV, paths resolved against the CSV's folder.

    labels: 0/1 per structure ("any" is the ``anomalous`` column); None where the CSV leaves the
    cell empty or has no such column (the case then does not count for that structure).
    """

    name: str
    image_path: Path
    mask_path: Path | None
    labels: dict[str, int | None] = field(hash=False)

    @property
    def anomalous(self) -> int:
        return int(self.labels["any"])


def _label(text: str | None, column: str, row: int, csv_path: Path) -> int | None:
    text = (text or "").strip()
    if column != "anomalous" and text == "":
        return None
    if text not in ("0", "1"):
        raise PPRError(f"{csv_path}, row {row}: column '{column}' must be 0 or 1, got {text!r}.")
    return int(text)


def read_cases(csv_path: str | Path) -> list[Case]:
    """Read CASES.csv: ``image`` and ``anomalous`` required; ``mask``, ``left``, ``right``, ``skull``
    and ``case`` (a name) optional. Paths are relative to the CSV's folder."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise PPRError(f"{csv_path} does not exist: give the cases CSV (columns image, anomalous).")
    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        missing = {"image", "anomalous"} - columns
        if missing:
            raise PPRError(
                f"{csv_path} lacks the column(s) {sorted(missing)}: it needs 'image' (a path relative to the "
                "CSV) and 'anomalous' (0/1), optionally 'mask', 'left', 'right', 'skull'."
            )
        cases = [_case_from_row(row, number, csv_path) for number, row in enumerate(reader, start=2)]
    if not cases:
        raise PPRError(f"{csv_path} lists no case.")
    names = [case.name for case in cases]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise PPRError(f"{csv_path} lists these cases twice: {duplicates}. Give each case once.")
    return cases


def _case_from_row(row: dict[str, str], number: int, csv_path: Path) -> Case:
    folder = csv_path.parent
    image_path = folder / row["image"].strip()
    if not image_path.exists():
        raise PPRError(f"{csv_path}, row {number}: image {image_path} does not exist.")
    mask_text = (row.get("mask") or "").strip()
    mask_path = folder / mask_text if mask_text else None
    if mask_path is not None and not mask_path.exists():
        raise PPRError(f"{csv_path}, row {number}: mask {mask_path} does not exist.")
    labels = {"any": _label(row["anomalous"], "anomalous", number, csv_path)}
    for column in ("left", "right", "skull"):
        labels[column] = _label(row.get(column), column, number, csv_path)
    name = (row.get("case") or "").strip() or image_case_name(image_path)
    return Case(name=name, image_path=image_path, mask_path=mask_path, labels=labels)


# ----------------------------------------------------------------------------- detection and cache


@dataclass(frozen=True)
class CaseMaps:
    """What the evaluation needs from the detection of one scan.

    error_map_mm: model space, float32, with the model grid's geometry (named for PPR's mm; an
        autoencoder's residual map in intensity travels here too).
    head_mask: model space, uint8, same grid.
    transform: maps model-space points to input-space points (``RegistrationResult.transform``).
    volume, windowed_hu: the scan in model space (normalised intensity; HU clipped to the window),
        for the anomaly map of a bundle with an intensity atlas; None from detectors that do not
        give them.
    """

    error_map_mm: sitk.Image
    head_mask: sitk.Image
    transform: sitk.Transform
    volume: sitk.Image | None = None
    windowed_hu: sitk.Image | None = None


class Detector(Protocol):
    """Runs detection on one scan. ``cache_key`` names everything that changes the maps
    (model checksum, stride, inference method), never the device."""

    cache_key: str

    def __call__(self, image: sitk.Image) -> CaseMaps: ...


class MapCache:
    """Model-space maps of detected cases under ``folder``, keyed by image hash + detector key.

    Stored as MetaImage (.mha, doubles for geometry: exact) and an ITK transform file.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def key(self, image_path: Path, detector_key: str) -> str:
        return hashlib.sha256(f"{file_digest(image_path)}|{detector_key}".encode()).hexdigest()[:32]

    def _paths(self, key: str) -> tuple[Path, Path, Path, Path, Path]:
        return (
            self.folder / f"{key}_error_mm.mha",
            self.folder / f"{key}_head_mask.mha",
            self.folder / f"{key}_transform.tfm",
            self.folder / f"{key}_volume.mha",
            self.folder / f"{key}_windowed_hu.mha",
        )

    def load(self, key: str) -> CaseMaps | None:
        error_path, mask_path, transform_path, volume_path, hu_path = self._paths(key)
        if not (error_path.is_file() and mask_path.is_file() and transform_path.is_file()):
            return None
        try:
            return CaseMaps(
                sitk.ReadImage(str(error_path)), sitk.ReadImage(str(mask_path)), sitk.ReadTransform(str(transform_path)),
                sitk.ReadImage(str(volume_path)) if volume_path.is_file() else None,
                sitk.ReadImage(str(hu_path)) if hu_path.is_file() else None,
            )
        except RuntimeError:
            return None  # a cache entry cut short by an interrupted run: detect again

    def save(self, key: str, maps: CaseMaps) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        error_path, mask_path, transform_path, volume_path, hu_path = self._paths(key)
        # each file whole or not at all (ppr.image.imageio), the transform last: load() needs the first three
        write_image(sitk.Cast(maps.error_map_mm, sitk.sitkFloat32), error_path)
        write_image(sitk.Cast(maps.head_mask, sitk.sitkUInt8), mask_path)
        if maps.volume is not None and maps.windowed_hu is not None:
            write_image(sitk.Cast(maps.volume, sitk.sitkFloat32), volume_path)
            write_image(sitk.Cast(maps.windowed_hu, sitk.sitkFloat32), hu_path)
        write_atomically(transform_path, lambda temporary: sitk.WriteTransform(maps.transform, str(temporary)))


def model_key(bundle: Any) -> str:
    """What identifies a model's error maps: weights, network shape, preprocessing and reference.

    Not the bundle checksum: that also covers calibration.npz, and recalibrating must not throw
    away the cached error maps (they do not depend on the calibration).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps(bundle.info.get("network", {}), sort_keys=True).encode())
    digest.update(bundle.preprocess.to_json().encode())
    for name, tensor in sorted(bundle.network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(sitk.GetArrayViewFromImage(bundle.reference).tobytes())
    return digest.hexdigest()[:32]


class BundleDetector:
    """``ppr.workflows.detection.detect`` with one bundle and fixed options, as a ``Detector``."""

    def __init__(self, bundle: Any, stride: int = 1, device: str = "auto", method: str = "dense",
                 post_filter: str = "erosion") -> None:
        self.bundle = bundle
        # z is recomputed here from the raw error map, so detection must not apply the calibration.
        self.options = DetectOptions(method=method, stride=stride, device=device, use_calibration=False,
                                     post_filter=post_filter)
        self.cache_key = f"{model_key(bundle)}|method={method}|stride={stride}"
        if getattr(bundle, "method", "ppr") == "ae":  # PPR keys stay as they were: their caches remain valid
            self.cache_key += f"|post_filter={post_filter}"

    def __call__(self, image: sitk.Image) -> CaseMaps:
        result = detect(image, self.bundle, self.options)
        return CaseMaps(result.error_map_model, result.head_mask_model, result.registration.transform,
                        result.volume_model, result.windowed_hu_model)


# ----------------------------------------------------------------------------- the evaluation run

ProgressFn = Callable[[float, str], None]
SCORE_MAPS = ("mm", "z", "intensity")  # the raw error in its unit (PPR mm, AE intensity), or z
VOXEL_CASES = ("masked", "all")


@dataclass(frozen=True)
class EvaluationConfig:
    """How cases are scored and summarised.

    score_map: "z" (calibrated, needs the bundle's calibration), or the raw error named by its unit:
        "mm" (PPR's position error) or "intensity" (the autoencoder's residual).
    aggregation: how a region's voxels become the region score.
    n_bootstrap, seed: stratified bootstrap resamples of the patient-level metrics.
    voxel_cases: "masked" counts the voxels of cases with a mask; "all" also counts every voxel of
        healthy cases (anomalous = 0, no mask) as negative, as the MOOD challenge does.
    bins: histogram bins of the voxel-level metrics.
    """

    score_map: str = "z"
    aggregation: Aggregation = Aggregation()
    n_bootstrap: int = 1000
    seed: int = 0
    voxel_cases: str = "masked"
    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.score_map not in SCORE_MAPS:
            raise ValueError(f"score_map must be one of {SCORE_MAPS}, got {self.score_map!r}")
        if self.voxel_cases not in VOXEL_CASES:
            raise ValueError(f"voxel_cases must be one of {VOXEL_CASES}, got {self.voxel_cases!r}")
        if self.n_bootstrap < 0 or self.bins < 2:
            raise ValueError("n_bootstrap must be >= 0 and bins >= 2")


@dataclass(frozen=True)
class CaseResult:
    case: Case
    scores: dict[str, float] = field(hash=False)  # region name -> region score
    max_error_mm: float
    score_range: tuple[float, float]
    from_cache: bool
    seconds: float
    # Fraction of brain and skull (inside this scan's head) at or above the calibration's overlay
    # threshold; None unless the z-map is scored. On healthy scans the calibration promises ~1 %.
    flagged_fraction: float | None = None
    # Why the scan could not be scored (unreadable, refused by registration, ...); None when scored.
    # A failed case has NaN scores and counts in no figure; the summary lists it.
    failure: str | None = None

    @property
    def scored(self) -> bool:
        return self.failure is None


def failed_case(case: Case, reason: str, seconds: float) -> CaseResult:
    return CaseResult(case=case, scores={region: math.nan for region in REGIONS}, max_error_mm=math.nan,
                      score_range=(math.nan, math.nan), from_cache=False, seconds=seconds, failure=reason)


def _scored(results: Sequence[CaseResult]) -> list[CaseResult]:
    return [r for r in results if r.scored]


def score_map(maps: CaseMaps, kind: str, calibration: Calibration | None) -> np.ndarray:
    """The map that is scored, model space (z, y, x): the raw error (mm or intensity) or its calibrated z."""
    error = sitk.GetArrayFromImage(maps.error_map_mm).astype(np.float32)
    if kind != "z":
        return error
    if calibration is None:
        raise PPRError(
            "This bundle has no calibration, so z-scores are not available: run `python -m ppr calibrate` "
            "on held-out healthy scans, or evaluate the raw error with --score-map mm."
        )
    return z_map(error, calibration)


def _detect_or_load(case: Case, detector: Detector, cache: MapCache, need_volume: bool = False
                    ) -> tuple[CaseMaps, bool]:
    key = cache.key(case.image_path, detector.cache_key)
    maps = cache.load(key)
    if maps is not None and (maps.windowed_hu is not None or not need_volume):  # caches from before volumes: detect again
        return maps, True
    maps = detector(read_image(case.image_path))
    cache.save(key, maps)
    return maps, False


def score_cases(
    cases: Sequence[Case],
    detector: Detector,
    region_masks: Mapping[str, np.ndarray],
    cache: MapCache,
    config: EvaluationConfig,
    calibration: Calibration | None = None,
    progress: ProgressFn | None = None,
) -> list[CaseResult]:
    """Detect (or load from the cache) every case and aggregate its map in each region.

    A case that cannot be read or detected gets a failed ``CaseResult`` (``failure``: the reason) and
    the others go on; a result that cannot be written (``OutputFileError``: a full disk) stops the run."""
    missing = set(REGIONS) - set(region_masks)
    if missing:
        raise ValueError(f"region masks lack {sorted(missing)}")
    results = []
    for index, case in enumerate(cases):
        if progress:
            progress(index / len(cases), f"case {case.name}")
        started = time.perf_counter()
        try:
            maps, cached = _detect_or_load(case, detector, cache)
        except OutputFileError:
            raise
        except PPRError as error:
            results.append(failed_case(case, str(error), time.perf_counter() - started))
            continue
        except Exception as error:  # one scan's unexpected failure must not end the evaluation; say what it was
            results.append(failed_case(case, f"this scan could not be processed ({error!r})",
                                       time.perf_counter() - started))
            continue
        values = score_map(maps, config.score_map, calibration)
        error = sitk.GetArrayViewFromImage(maps.error_map_mm)
        head = sitk.GetArrayViewFromImage(maps.head_mask) > 0
        # the same region scoring as the detection (region of the reference and head of this scan)
        scores = region_scores(values, {r: region_masks[r] for r in REGIONS}, head, config.aggregation)
        flagged = None
        if config.score_map == "z" and calibration is not None:
            focus = focus_mask(region_masks, head)
            flagged = float(np.mean(values[focus] >= calibration.overlay_threshold_z))
        results.append(
            CaseResult(
                case=case,
                scores={region: math.nan if value is None else value for region, value in scores.items()},
                max_error_mm=float(np.max(error)),
                score_range=(float(np.nanmin(values)), float(np.nanmax(values))),
                from_cache=cached,
                seconds=time.perf_counter() - started,
                flagged_fraction=flagged,
            )
        )
    return results


def _metric_summary(results: Sequence[CaseResult], config: EvaluationConfig) -> dict[str, Any]:
    summary: dict[str, Any] = {key: {} for key in (
        "auroc", "auroc_ci95", "average_precision", "average_precision_ci95", "n_positive", "n_negative")}
    for structure, region in STRUCTURES.items():
        labelled = [r for r in _scored(results)
                    if r.case.labels[structure] is not None and math.isfinite(r.scores[region])]
        labels = np.array([r.case.labels[structure] for r in labelled], dtype=int)
        scores = np.array([r.scores[region] for r in labelled], dtype=float)
        auroc = bootstrap_ci(labels, scores, roc_auc, config.n_bootstrap, config.seed)
        ap = bootstrap_ci(labels, scores, average_precision, config.n_bootstrap, config.seed)
        summary["auroc"][structure] = none_if_nan(auroc.value)
        summary["auroc_ci95"][structure] = auroc.as_list()
        summary["average_precision"][structure] = none_if_nan(ap.value)
        summary["average_precision_ci95"][structure] = ap.as_list()
        summary["n_positive"][structure] = int(labels.sum())
        summary["n_negative"][structure] = int(labels.size - labels.sum())
    return summary


def _healthy_flagged(results: Sequence[CaseResult]) -> dict[str, Any] | None:
    """Per healthy case and on average, the fraction of brain and skull over the overlay threshold."""
    healthy = {r.case.name: r.flagged_fraction for r in _scored(results)
               if r.case.anomalous == 0 and r.flagged_fraction is not None}
    if not healthy:
        return None
    return {"mean": float(np.mean(list(healthy.values()))), "cases": healthy}


def _voxel_case(result: CaseResult, voxel_cases: str) -> bool:
    if not result.scored:
        return False
    return result.case.mask_path is not None or (voxel_cases == "all" and result.case.anomalous == 0)


def _mask_in_input_space(case: Case, input_image: sitk.Image) -> np.ndarray:
    if case.mask_path is None:
        return np.zeros(sitk.GetArrayViewFromImage(input_image).shape, bool)
    mask = read_image(case.mask_path)
    if mask.GetSize() != input_image.GetSize():
        raise InputImageError(
            f"The mask {case.mask_path} has size {mask.GetSize()} but its image {case.image_path} has "
            f"{input_image.GetSize()}: masks must be on the image's own grid."
        )
    return sitk.GetArrayViewFromImage(mask) > 0


def input_space_pass(
    results: Sequence[CaseResult],
    cache: MapCache,
    detector: Detector,
    config: EvaluationConfig,
    calibration: Calibration | None = None,
    mood_dir: Path | None = None,
    region_masks: Mapping[str, np.ndarray] | None = None,
    intensity_atlas: Calibration | None = None,
    preprocess: PreprocessConfig | None = None,
) -> ScoreHistogram | None:
    """Voxel scores against masks in input space (None without voxel cases); MOOD files on request.

    The score map goes model space -> input space (linear interpolation); input voxels outside the
    model grid get the lowest score of the evaluation, i.e. count as "not anomalous", so a lesion the
    model cannot see is a miss rather than left out. With ``mood_dir`` every case's map and head score
    are also written in the MOOD challenge format (``ppr.workflows.mood``): with an intensity atlas
    (and the z score map) their pixel map is the anomaly map, as detection shows it, centred on its
    threshold, and their sample score the head's region score on the position z-map.
    """
    anomaly_mood = (mood_dir is not None and intensity_atlas is not None and calibration is not None
                    and config.score_map == "z")
    voxel = [_voxel_case(r, config.voxel_cases) for r in results]
    chosen = [r for r, use in zip(results, voxel) if r.scored and (use or mood_dir is not None)]
    if not chosen:
        return None
    low = min(r.score_range[0] for r in chosen)
    high = max(r.score_range[1] for r in chosen)
    histogram = ScoreHistogram(low, high, config.bins) if any(voxel) else None
    normalisation = mood_normalisation(config.score_map, calibration)
    for result, use in zip(results, voxel):
        if not result.scored or (not use and mood_dir is None):
            continue
        maps, _ = _detect_or_load(result.case, detector, cache, need_volume=anomaly_mood)
        model_map = sitk.GetImageFromArray(score_map(maps, config.score_map, calibration))
        model_map.CopyInformation(maps.error_map_mm)
        input_image = read_image(result.case.image_path)
        input_map = to_input_space(model_map, maps.transform, input_image, default_value=low)
        if use:
            histogram.add(sitk.GetArrayViewFromImage(input_map), _mask_in_input_space(result.case, input_image))
        if anomaly_mood:
            shown = sitk.GetImageFromArray(model_space_maps(maps, calibration, region_masks or {}, intensity_atlas,
                                                            preprocess)[0]["anomaly"])
            shown.CopyInformation(maps.error_map_mm)
            write_mood_outputs(to_input_space(shown, maps.transform, input_image, 0.0), result.scores["head"],
                               mood_dir, result.case.image_path.name,
                               MoodNormalisation(kind="z", centre=float(intensity_atlas.overlay_threshold_z)),
                               normalisation)
        elif mood_dir is not None:
            write_mood_outputs(input_map, result.scores["head"], mood_dir, result.case.image_path.name, normalisation)
    return histogram


LOCALISATION_REGIONS = ("head", "brain and skull")


def model_space_maps(maps: CaseMaps, calibration: Calibration, region_masks: Mapping[str, np.ndarray],
                     intensity_atlas: Calibration | None = None, preprocess: PreprocessConfig | None = None,
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A case's position z-map ("position z") and, with an intensity atlas, its anomaly map
    ("anomaly"), model space, as detection makes them; and its head mask."""
    head = sitk.GetArrayFromImage(maps.head_mask) > 0
    position = np.where(head, z_map(sitk.GetArrayFromImage(maps.error_map_mm), calibration), 0.0).astype(np.float32)
    found = {"position z": position}
    if intensity_atlas is not None:
        if preprocess is None or maps.volume is None or maps.windowed_hu is None:
            raise ValueError("the anomaly map needs the scan's model-space volume and HU and the bundle's preprocessing")
        tissue = soft_tissue_mask(sitk.GetArrayViewFromImage(maps.windowed_hu), head, preprocess)
        density_z = intensity_z_map(sitk.GetArrayFromImage(maps.volume), tissue, intensity_atlas)
        found["anomaly"] = anomaly_map(density_z, position, float(calibration.overlay_threshold_z),
                                       focus_mask(region_masks, head))
    return found, head


def localisation_pass(
    results: Sequence[CaseResult],
    cache: MapCache,
    detector: Detector,
    region_masks: Mapping[str, np.ndarray],
    calibration: Calibration,
    intensity_atlas: Calibration | None = None,
    preprocess: PreprocessConfig | None = None,
    bins: int = DEFAULT_BINS,
) -> dict[str, Any] | None:
    """Where the shown map points, on the cases with a lesion mask, in input space: per map (the
    position z-map, and the anomaly map when there is an intensity atlas) and per region (this scan's
    head; the reference's brain and skull inside it), the voxel average precision, the best Dice
    over thresholds and in how many cases the top 1 % of the map's voxels in that region touches
    the lesion (at least one lesion voxel among them); and per map its overlay threshold and the
    fraction of the healthy cases' brain and skull (model space) at or above it, and the patient
    AUROC of its 99th percentile in brain and skull (healthy cases against the lesion cases; for
    information: the region scores stay the position z's). None without lesion masks.

    The maps go model space -> input space linearly (0 outside the model grid, as detection writes
    them), the regions by nearest neighbour."""
    lesion_cases = [r for r in results if r.scored and r.case.mask_path is not None]
    if not lesion_cases:
        return None
    if intensity_atlas is not None and preprocess is None:
        raise ValueError("the anomaly map needs the bundle's preprocessing (where bone is)")
    kinds = ["position z"] + (["anomaly"] if intensity_atlas is not None else [])
    thresholds = {"position z": float(calibration.overlay_threshold_z)}
    if intensity_atlas is not None:
        thresholds["anomaly"] = float(intensity_atlas.overlay_threshold_z)

    healthy_flagged: dict[str, dict[str, float]] = {kind: {} for kind in kinds}
    p99: dict[str, list[tuple[int, float]]] = {kind: [] for kind in kinds}  # (anomalous, p99 in brain and skull)
    for result in results:
        if result.scored and result.case.anomalous == 0:
            maps, _ = _detect_or_load(result.case, detector, cache, need_volume=intensity_atlas is not None)
            model_maps, head = model_space_maps(maps, calibration, region_masks, intensity_atlas, preprocess)
            focus = focus_mask(region_masks, head)
            for kind in kinds:
                healthy_flagged[kind][result.case.name] = float(np.mean(model_maps[kind][focus] >= thresholds[kind]))
                p99[kind].append((0, float(np.percentile(model_maps[kind][focus], 99.0))))
    per_case = []
    for result in lesion_cases:
        maps, _ = _detect_or_load(result.case, detector, cache, need_volume=intensity_atlas is not None)
        model_maps, head = model_space_maps(maps, calibration, region_masks, intensity_atlas, preprocess)
        regions = {"head": head, "brain and skull": focus_mask(region_masks, head)}
        for kind in kinds:
            brain_and_skull = model_maps[kind][regions["brain and skull"]]
            p99[kind].append((result.case.anomalous, float(np.percentile(brain_and_skull, 99.0))))
        input_image = read_image(result.case.image_path)
        lesion = _mask_in_input_space(result.case, input_image)
        on_input = {name: _on_input_grid(values, maps, input_image, sitk.sitkLinear)
                    for name, values in model_maps.items()}
        inside = {name: _on_input_grid(mask.astype(np.float32), maps, input_image, sitk.sitkNearestNeighbor) > 0.5
                  for name, mask in regions.items()}
        per_case.append((on_input, inside, lesion))
    summary: dict[str, Any] = {"n_cases": len(per_case), "space": "input", "maps": {}}
    for kind in kinds:
        low = min(float(maps_[kind].min()) for maps_, _, _ in per_case)
        high = max(float(maps_[kind].max()) for maps_, _, _ in per_case)
        summary["maps"][kind] = {}
        for region in LOCALISATION_REGIONS:
            histogram = ScoreHistogram(low, high, bins)
            touches = 0
            for maps_, inside, lesion in per_case:
                values, where = maps_[kind][inside[region]], lesion[inside[region]]
                if not values.size:
                    continue
                histogram.add(values, where)
                touches += bool(where[values >= np.percentile(values, 99.0)].any())
            dice, _ = histogram.best_dice()
            summary["maps"][kind][region] = {"voxel_ap": none_if_nan(histogram.average_precision()),
                                             "best_dice": none_if_nan(dice), "top1_touches": touches}
        flagged = healthy_flagged[kind]
        summary["maps"][kind]["threshold"] = thresholds[kind]
        summary["maps"][kind]["healthy_flagged_mean"] = float(np.mean(list(flagged.values()))) if flagged else None
        summary["maps"][kind]["healthy_flagged"] = flagged
        labels = np.array([label for label, _ in p99[kind]], dtype=int)
        summary["maps"][kind]["patient_auroc_p99_brain_and_skull"] = (
            none_if_nan(roc_auc(labels, np.array([value for _, value in p99[kind]])))
            if 0 < labels.sum() < labels.size else None)
    return summary


def _on_input_grid(values: np.ndarray, maps: CaseMaps, input_image: sitk.Image, interpolator: int) -> np.ndarray:
    """A model-space array (z, y, x) on the input's grid (0 outside the model grid)."""
    image = sitk.GetImageFromArray(np.asarray(values, dtype=np.float32))
    image.CopyInformation(maps.error_map_mm)
    return sitk.GetArrayFromImage(to_input_space(image, maps.transform, input_image, 0.0, interpolator))


def mood_normalisation(kind: str, calibration: Calibration | None) -> MoodNormalisation:
    """The fixed [0, 1] map of this model's scores: z around the overlay threshold, mm around
    the healthy median error of the calibration (or the default scale without one); an autoencoder
    residual (intensity) the same way, its default scale 0.05 of the intensity range."""
    if kind == "z":
        return MoodNormalisation.for_z(calibration)
    if calibration is None:
        return MoodNormalisation.for_error(kind)
    floor = 1e-3 if kind == "intensity" else 1.0  # a calibration median this small would crowd 1.0
    return MoodNormalisation.for_error(kind, half=max(float(np.median(calibration.median_mm)), floor))


def evaluate(
    cases: Sequence[Case],
    detector: Detector,
    region_masks: Mapping[str, np.ndarray],
    out_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    calibration: Calibration | None = None,
    progress: ProgressFn | None = None,
    mood_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    intensity_atlas: Calibration | None = None,
    preprocess: PreprocessConfig | None = None,
) -> dict[str, Any]:
    """Score every case, compute patient- and voxel-level metrics, write the outputs, return the summary.

    A case that cannot be scored (unreadable, refused by registration, ...) gets its reason in
    ``cases.csv`` (status "failed") and in the summary (``n_failed``, ``failed_cases``: name -> reason);
    the figures are over the others (``n_cases`` of them); when none is left, a ``PPRError``.

    Writes under out_dir: ``cases.csv`` (per-case scores), ``summary.json``, ``roc_<structure>.png``
    and ``cache/`` (model-space maps, reused by the next run with the same model and options; or
    ``cache_dir``, e.g. one cache shared by two score maps of one model);
    with ``mood_dir`` also every case's MOOD challenge files (pixel NIfTI and sample text).
    With the z score map and cases with lesion masks, ``localisation`` (``localisation_pass``): the
    position z-map and, with ``intensity_atlas`` (and the bundle's ``preprocess``), the anomaly map
    side by side.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = MapCache(Path(cache_dir) if cache_dir is not None else out_dir / "cache")
    results = score_cases(cases, detector, region_masks, cache, config, calibration, _scaled(progress, 0.0, 0.8))
    failed = [r for r in results if not r.scored]
    if len(failed) == len(results):
        write_case_scores(results, out_dir / "cases.csv", "intensity" if config.score_map == "intensity" else "mm")
        raise PPRError(f"No case could be scored (reasons in {out_dir / 'cases.csv'}); the first: "
                       f"{failed[0].case.name}: {failed[0].failure}")
    summary: dict[str, Any] = {
        # Every figure is over the scored cases; failed cases are counted and named, never left out silently.
        "n_cases": len(results) - len(failed),
        "n_failed": len(failed),
        "failed_cases": {r.case.name: r.failure for r in failed},
        "n_anomalous": int(sum(r.case.anomalous for r in _scored(results))),
        "score": {"map": config.score_map, "aggregate": config.aggregation.describe()},
        "bootstrap": {"n_resamples": config.n_bootstrap, "seed": config.seed, "stratified": True, "interval": 0.95},
    }
    summary.update(_metric_summary(results, config))
    summary["healthy_flagged_fraction"] = _healthy_flagged(results)
    if progress:
        progress(0.8, "voxel-level metrics")
    mood_dir = Path(mood_dir) if mood_dir is not None else None
    histogram = input_space_pass(results, cache, detector, config, calibration, mood_dir, region_masks,
                                 intensity_atlas, preprocess)
    summary.update(_voxel_summary(histogram, results, config))
    summary["localisation"] = None
    if config.score_map == "z" and calibration is not None:
        summary["localisation"] = localisation_pass(results, cache, detector, region_masks, calibration,
                                                    intensity_atlas, preprocess, config.bins)
    summary["roc_curves"] = write_roc_curves(results, out_dir, summary["auroc_ci95"])
    summary["mood_dir"] = None if mood_dir is None else str(mood_dir)
    write_case_scores(results, out_dir / "cases.csv", "intensity" if config.score_map == "intensity" else "mm")
    summary["seconds"] = round(time.perf_counter() - started, 3)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if progress:
        progress(1.0, "done")
    return summary


def _scaled(progress: ProgressFn | None, start: float, end: float) -> ProgressFn | None:
    if progress is None:
        return None
    return lambda fraction, message: progress(start + (end - start) * fraction, message)


def _voxel_summary(
    histogram: ScoreHistogram | None, results: Sequence[CaseResult], config: EvaluationConfig
) -> dict[str, Any]:
    if histogram is None:
        return {"voxel_ap": None, "voxel_auroc": None, "best_dice": None, "best_dice_threshold": None, "voxel": None}
    dice, threshold = histogram.best_dice()
    return {
        "voxel_ap": none_if_nan(histogram.average_precision()),
        "voxel_auroc": none_if_nan(histogram.auroc()),
        "best_dice": none_if_nan(dice),
        "best_dice_threshold": none_if_nan(threshold),
        "voxel": {
            "cases": config.voxel_cases,
            "n_cases": sum(_voxel_case(r, config.voxel_cases) for r in results),
            "n_voxels": histogram.n_voxels,
            "n_positive": histogram.n_positive,
            "bins": histogram.bins,
            "range": [histogram.low, histogram.high],
            "space": "input",
        },
    }


# ----------------------------------------------------------------------------- outputs

CSV_COLUMNS = (
    "case", "image", "anomalous", "left", "right", "skull", "mask",
    *(f"score_{region}" for region in REGIONS), "max_error_mm", "from_cache", "seconds", "status", "reason",
)


def case_score_columns(error_unit: str = "mm") -> tuple[str, ...]:
    """The cases.csv columns; the maximum error is named by its unit (max_error_mm for PPR)."""
    return tuple(f"max_error_{error_unit}" if column == "max_error_mm" else column for column in CSV_COLUMNS)


def write_case_scores(results: Sequence[CaseResult], path: Path, error_unit: str = "mm") -> None:
    """cases.csv, written atomically (``ppr.image.imageio.write_text``)."""
    columns = case_score_columns(error_unit)
    with io.StringIO(newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for r in results:
            labels = r.case.labels
            writer.writerow({
                "case": r.case.name,
                "image": str(r.case.image_path),
                "anomalous": r.case.anomalous,
                **{column: "" if labels[column] is None else labels[column] for column in ("left", "right", "skull")},
                "mask": "" if r.case.mask_path is None else str(r.case.mask_path),
                **{f"score_{region}": "" if not r.scored else f"{r.scores[region]:.6g}" for region in REGIONS},
                columns[-5]: "" if not r.scored else f"{r.max_error_mm:.6g}",
                "from_cache": int(r.from_cache),
                "seconds": f"{r.seconds:.3f}",
                "status": "ok" if r.scored else "failed",
                "reason": r.failure or "",
            })
        text = handle.getvalue()
    write_text(path, text)


def write_roc_curves(
    results: Sequence[CaseResult], out_dir: Path, intervals: Mapping[str, list[float | None]] | None = None
) -> dict[str, str]:
    """One ROC curve PNG per structure with both classes present; returns structure -> file name.

    intervals: the AUROC confidence interval per structure, shown in the legend when given.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = {}
    for structure, region in STRUCTURES.items():
        labelled = [r for r in _scored(results) if r.case.labels[structure] is not None and math.isfinite(r.scores[region])]
        labels = np.array([r.case.labels[structure] for r in labelled], dtype=int)
        if labels.size == 0 or labels.min() == labels.max():
            continue
        scores = np.array([r.scores[region] for r in labelled])
        fpr, tpr = roc_curve_points(labels, scores)
        figure = Figure(figsize=(4.5, 4.5), dpi=100)
        FigureCanvasAgg(figure)  # Agg canvas: no display, no pyplot global state
        axes = figure.add_subplot()
        low, high = (intervals or {}).get(structure, [None, None])
        interval = f" [{low:.2f}, {high:.2f}]" if low is not None else ""
        axes.plot(fpr, tpr, color="C0", label=f"AUROC {roc_auc(labels, scores):.3f}{interval}")
        axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate",
                 title=f"{structure}: {int(labels.sum())} anomalous vs {int(labels.size - labels.sum())} not "
                       f"(score in {region})")
        axes.legend(loc="lower right")
        figure.tight_layout()
        name = f"roc_{structure}.png"
        write_atomically(out_dir / name, lambda temporary, figure=figure: figure.savefig(temporary, format="png"))
        written[structure] = name
    return written


# ----------------------------------------------------------------------------- several models


@dataclass(frozen=True)
class ModelUnderTest:
    """One model of a comparison: ``name`` is its subfolder and its name in the table."""

    name: str
    bundle: Any


def model_names(paths: Sequence[Path]) -> list[str]:
    """Subfolder names of bundles: the bundle's own name, numbered where two share it."""
    stems = [image_case_name(Path(path)).removesuffix(".zip") or "model" for path in paths]
    names = []
    for index, stem in enumerate(stems):
        names.append(stem if stems.count(stem) == 1 else f"{stem}_{stems[:index + 1].count(stem)}")
    return names


def comparison_score_maps(bundle: Any) -> list[str]:
    """The score maps compared for one bundle: its raw error, and z where it is calibrated."""
    raw = getattr(bundle, "error_unit", "mm")
    return [raw, "z"] if bundle.calibration is not None else [raw]


def evaluate_models(
    cases: Sequence[Case],
    models: Sequence[ModelUnderTest],
    out_dir: str | Path,
    config: EvaluationConfig = EvaluationConfig(),
    stride: int = 1,
    device: str = "auto",
    post_filter: str = "erosion",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Evaluate every model on the same cases with every score map it has; write the comparison.

    For model ``name`` and score map ``map`` the full single-model output (``evaluate``) goes to
    ``out_dir/name/map/``; the detections are cached once per model in ``out_dir/name/cache/``, so
    the z row reuses the raw row's maps. ``config.score_map`` is replaced per row; everything else
    (aggregate, bootstrap, voxel cases) is the same for all rows. Returns the comparison
    (``methods``: one row per model and score map), also written as ``comparison.json`` and
    ``comparison.md`` in ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise PPRError(f"Two models share a name ({names}): give each model its own name.")
    runs = [(model, kind) for model in models for kind in comparison_score_maps(model.bundle)]
    rows = []
    for index, (model, kind) in enumerate(runs):
        detector = BundleDetector(model.bundle, stride=stride, device=device, post_filter=post_filter)
        row_config = dataclasses.replace(config, score_map=kind)
        summary = evaluate(cases, detector, model.bundle.region_masks, out_dir / model.name / kind, row_config,
                           model.bundle.calibration, _scaled(progress, index / len(runs), (index + 1) / len(runs)),
                           cache_dir=out_dir / model.name / "cache")
        rows.append(comparison_row(model, kind, summary, out_dir / model.name / kind))
    comparison = {
        "methods": rows,
        "n_cases": len(cases),
        "score": {"aggregate": config.aggregation.describe()},
        "bootstrap": {"n_resamples": config.n_bootstrap, "seed": config.seed, "interval": 0.95},
        "post_filter": post_filter,
        "stride": stride,
    }
    write_text(out_dir / "comparison.json", json.dumps(comparison, indent=2, sort_keys=True) + "\n")
    write_text(out_dir / "comparison.md", comparison_markdown(comparison))
    return comparison


METHOD_LABELS = {"ppr": "PPR", "ae": "AE"}


def score_map_label(kind: str) -> str:
    return "calibrated z" if kind == "z" else f"raw error ({kind})"


def comparison_row(model: ModelUnderTest, kind: str, summary: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """One row of the comparison: patient-level (any) and voxel-level figures of one score map."""
    return {
        "model": model.name,
        "bundle": str(getattr(model.bundle, "path", "") or ""),
        "method": getattr(model.bundle, "method", "ppr"),
        "score_map": kind,
        "score_map_label": score_map_label(kind),
        "auroc_any": summary["auroc"]["any"],
        "auroc_any_ci95": summary["auroc_ci95"]["any"],
        "ap_any": summary["average_precision"]["any"],
        "ap_any_ci95": summary["average_precision_ci95"]["any"],
        "voxel_ap": summary["voxel_ap"],
        "best_dice": summary["best_dice"],
        "n_cases": summary["n_cases"],
        "n_anomalous": summary["n_anomalous"],
        "n_failed": summary["n_failed"],
        "failed_cases": summary["failed_cases"],
        "folder": str(folder),
    }


def _figure(value: float | None, interval: Sequence[float | None] | None = None, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if interval is None or interval[0] is None:
        return f"{value:.{digits}f}"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def comparison_markdown(comparison: Mapping[str, Any]) -> str:
    """The comparison as a markdown table: rows method x score map."""
    lines = [
        f"{comparison['n_cases']} cases; region score: {comparison['score']['aggregate']}; "
        f"95 % intervals from {comparison['bootstrap']['n_resamples']} stratified bootstrap resamples "
        f"(seed {comparison['bootstrap']['seed']}).",
        "",
        "| model | method | score map | patient AUROC (any) [95 % CI] | AP (any) [95 % CI] | voxel AP | best Dice |",
        "|---|---|---|---|---|---|---|",
    ]
    failed = [f"{row['model']} ({row['score_map']}): {', '.join(row['failed_cases'])}"
              for row in comparison["methods"] if row.get("n_failed")]
    if failed:
        lines[1:1] = ["", "Failed cases, left out of that row's figures: " + "; ".join(failed) + "."]
    for row in comparison["methods"]:
        lines.append(
            f"| {row['model']} | {METHOD_LABELS.get(row['method'], row['method'])} | {row['score_map_label']} | "
            f"{_figure(row['auroc_any'], row['auroc_any_ci95'])} | {_figure(row['ap_any'], row['ap_any_ci95'])} | "
            # Voxel AP sits near the prevalence (~0.003 for haemorrhage): 3 decimals would hide it.
            f"{_figure(row['voxel_ap'], digits=4)} | {_figure(row['best_dice'])} |"
        )
    return "\n".join(lines) + "\n"
