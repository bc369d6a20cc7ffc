"""Normative calibration of error maps, and region-score aggregation.

What it does:
- From the model-space error maps (mm) of held-out *healthy* scans it estimates, for every place in
  the model grid, how large the position error of healthy anatomy usually is (median) and how much it
  varies (robust spread: MAD * 1.4826, floored). ``z_map`` turns a new error map into a z-map
  ``(error - median) / spread``: "how unusual is this error *here*", which removes the large healthy
  error in places the network always finds hard (see DESIGN.md: ~30 mm mean healthy error).
- ``aggregate`` / ``Aggregation`` reduce the values of a map inside one region to one region score
  (max, percentile, mean of the top k, mean); ``ppr.statistics.scores.region_scores`` applies them per region
  for the detection and the evaluation alike.
- ``save_calibration`` / ``load_calibration``: the statistics as ``calibration.npz``.

What it does not: build region masks, run the network, or write a bundle: calibrating a bundle
(detection on held-out healthy scans, the statistics written into the bundle) is
``ppr.workflows.calibrate``.

Why a reduced resolution. With the few healthy scans a user has (10-30), a per-voxel median over
scans alone is noise. The statistics are therefore estimated on a coarse grid (one coarse voxel per
``factor``^3 model voxels, default 4^3) by pooling, for each coarse voxel, ``samples_per_axis``^3
voxels of its block from every scan (default 8 per scan), then the median and spread maps are
smoothed with a Gaussian of ``smoothing_voxels`` coarse voxels (default 1, i.e. 4 mm at 1 mm
spacing). Pooling single voxels (not block means) keeps the spread on the scale of single-voxel
errors, so z of a single voxel is not inflated. Registration is only accurate to a few mm anyway,
so statistics sharper than ~4 mm would describe registration noise rather than anatomy.
Memory: n_scans * samples_per_axis^3 * (N/factor)^3 float32 (20 scans at N = 256: 168 MB).

Default overlay threshold: the 99th percentile of the z of the calibration scans' voxels in brain
and skull (the reference's hemispheres and skull, where findings are looked for), each scan's z taken
against the statistics of the *other* scans (leave-one-out): a budget of about 1 % of a new healthy
brain and skull shown. In-sample z (each scan against statistics it contributed to) gave a
threshold that new healthy scans exceeded 2-3 times as often: z 4.06 on the retrained default
model's 5 calibration scans flagged 3.1 % of 5 held-out healthy heads. Why not rarer: healthy position
errors are heavy-tailed (a patch is now and then placed in the mirror hemisphere), so on the default
model's 5 calibration scans the 99.9th percentile was z 16.0 against 4.95 for the 99th, above the z
of most haemorrhage voxels. Why brain and skull: over the whole head the neck and face, where healthy
errors vary little and z runs high, set a threshold nothing in the brain reached.

Places too few healthy scans measured (outside most calibration heads: the edge of the field of
view, an unusually large head) have no statistics: their z is 0 ("nothing known to be unusual")
rather than a z against the median of elsewhere. ``scan_count`` records, per coarse voxel, how many
scans contributed. Only measured places of each scan count (``ppr.image.field_of_view``: its head, less
the places whose network patch reaches a cut of its field of view): invented air beyond a cut
neck is no evidence of what healthy error looks like there.

Reference figures for the out-of-depth check (``ppr.statistics.reliability``): with a brain mask, every
calibration scan's brain median z and fraction of brain and skull above the overlay threshold,
each against the statistics of the *other* scans (leave-one-out), so they show what a new healthy
scan from the same scanners gives rather than the optimistic in-sample figure.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.ndimage

from ppr.errors import BundleError, PPRError
from ppr.image.imageio import write_atomically
from ppr.statistics.reliability import ordinary_tissue_figures

# 2: scan_count (version-1 files are read as measured everywhere); 3: the calibration scans'
# leave-one-out reference figures (older files get ppr.statistics.reliability's defaults)
CALIBRATION_FORMAT_VERSION = 3
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
MIN_SCANS = 3


@dataclass(frozen=True)
class CalibrationConfig:
    """How the healthy error statistics are estimated (see the module docstring for the why).

    factor: a coarse voxel covers factor^3 model voxels.
    samples_per_axis: voxels pooled per block per axis from every scan (samples_per_axis <= factor).
    smoothing_voxels: Gaussian sigma, in coarse voxels, applied to the median and spread maps.
    min_spread_mm: floor of the spread so z does not explode where healthy errors are all equal
        (PPR position error maps, mm).
    min_spread_intensity: the same floor for autoencoder residual maps (intensity in [0, 1], where
        healthy residuals are ~0.02-0.1: a floor in mm would swamp them).
    min_spread_fraction: a second floor, this fraction of the median spread inside the head.
    overlay_percentile: percentile of healthy brain-and-skull z used as the default overlay threshold.
    min_scans_measured: a place needs samples from this many scans (at most all of them) to have a z.
    """

    factor: int = 4
    samples_per_axis: int = 2
    smoothing_voxels: float = 1.0
    min_spread_mm: float = 0.5
    min_spread_intensity: float = 0.005
    min_spread_fraction: float = 0.1
    overlay_percentile: float = 99.0
    min_scans_measured: int = MIN_SCANS

    def __post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, got {self.factor}")
        if not 1 <= self.samples_per_axis <= self.factor:
            raise ValueError(f"samples_per_axis must be in [1, factor], got {self.samples_per_axis}")
        if (self.smoothing_voxels < 0 or self.min_spread_mm <= 0 or self.min_spread_intensity <= 0
                or self.min_spread_fraction < 0):
            raise ValueError("smoothing_voxels, min_spread_fraction must be >= 0 and min_spread_mm > 0")
        if not 50.0 <= self.overlay_percentile < 100.0:
            raise ValueError(f"overlay_percentile must be in [50, 100), got {self.overlay_percentile}")
        if self.min_scans_measured < 1:
            raise ValueError(f"min_scans_measured must be at least 1, got {self.min_scans_measured}")

    @property
    def sample_offsets(self) -> np.ndarray:
        """Positions, inside a block, of the pooled voxels along one axis (evenly spread)."""
        step = self.factor / self.samples_per_axis
        return np.floor((np.arange(self.samples_per_axis) + 0.5) * step).astype(int)

    @property
    def block_centre(self) -> float:
        """Model-voxel coordinate, inside a block, that the coarse statistics describe."""
        return float(self.sample_offsets.mean())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def min_spread(self, unit: str) -> float:
        """The absolute spread floor for error maps in ``unit`` ("mm" or "intensity")."""
        floors = {"mm": self.min_spread_mm, "intensity": self.min_spread_intensity}
        if unit not in floors:
            raise ValueError(f"unknown error map unit {unit!r}; expected one of {sorted(floors)}")
        return floors[unit]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CalibrationConfig":
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True, eq=False)
class Calibration:
    """Per-place healthy error statistics of one model, on the coarse grid.

    median_mm, spread_mm: float32 arrays of shape ``coarse_shape`` (model axes z, y, x).
    grid_shape: shape of the model-space error maps this calibration applies to.
    scan_count: per coarse voxel, how many scans measured it (None: everywhere measured, as in
        calibrations written before it was recorded).
    reference_brain_median_z, reference_fraction_above: per calibration scan, leave-one-out, its
        brain median z and fraction of brain and skull above the overlay threshold (None in
        calibrations written before they were recorded; see ``ppr.statistics.reliability``).
    """

    median_mm: np.ndarray
    spread_mm: np.ndarray
    grid_shape: tuple[int, int, int]
    n_scans: int
    case_names: tuple[str, ...]
    overlay_threshold_z: float
    config: CalibrationConfig
    scan_count: np.ndarray | None = None
    reference_brain_median_z: np.ndarray | None = None
    reference_fraction_above: np.ndarray | None = None

    @property
    def factor(self) -> int:
        return self.config.factor

    @property
    def measured(self) -> np.ndarray:
        """Coarse voxels with statistics: measured by enough scans (bool, coarse grid)."""
        if self.scan_count is None:
            return np.ones(self.median_mm.shape, dtype=bool)
        return self.scan_count >= min(self.config.min_scans_measured, self.n_scans)


# ----------------------------------------------------------------------------- fitting


def block_samples(error_map_mm: np.ndarray, config: CalibrationConfig) -> np.ndarray:
    """The pooled voxels of every coarse block: shape (samples_per_axis^3, *coarse_shape), float32.

    The map is padded at its far edges (edge values) up to a multiple of ``factor``.
    """
    k = config.factor
    pad = [(0, (-size) % k) for size in error_map_mm.shape]
    padded = np.pad(np.asarray(error_map_mm, dtype=np.float32), pad, mode="edge")
    coarse = tuple(size // k for size in padded.shape)
    blocks = padded.reshape(coarse[0], k, coarse[1], k, coarse[2], k)
    offsets = config.sample_offsets
    picked = blocks[:, offsets][:, :, :, offsets][:, :, :, :, :, offsets]
    # axes now (c0, s, c1, s, c2, s): samples first so scans stack along one axis
    return np.ascontiguousarray(picked.transpose(1, 3, 5, 0, 2, 4).reshape(-1, *coarse))


def _median_axis0(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median along axis 0 ignoring NaN, and the number of values it used.

    Sorting puts NaN last, so the median is read at the middle of each column's valid part
    (np.nanmedian loops in Python over columns, far too slow for 10^5-10^6 columns).
    """
    ordered = np.sort(values, axis=0)
    count = (~np.isnan(values)).sum(axis=0)
    low = np.clip((count - 1) // 2, 0, None)[None]
    high = np.clip(count // 2, 0, values.shape[0] - 1)[None]
    median = 0.5 * (np.take_along_axis(ordered, low, 0)[0] + np.take_along_axis(ordered, high, 0)[0])
    return np.where(count > 0, median, np.nan).astype(np.float32), count


def robust_statistics(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, spread (MAD * 1.4826) and number of valid samples along axis 0, NaN ignored."""
    median, count = _median_axis0(samples)
    deviation, _ = _median_axis0(np.abs(samples - median))
    return median, (deviation * MAD_TO_SIGMA).astype(np.float32), count


def _smooth_where_measured(values: np.ndarray, weights: np.ndarray, sigma_voxels: float) -> np.ndarray:
    """Gaussian smoothing weighted by the number of samples (normalised convolution).

    Weighting keeps places no scan measured (outside every head mask) from pulling their
    neighbours: a plain Gaussian would mix background errors into the scalp and skull.
    Unmeasured places far from any measurement take the median of the measured ones.
    """
    weights = weights.astype(np.float64)
    filled = np.where(weights > 0, values, 0.0)
    if sigma_voxels > 0:
        numerator = scipy.ndimage.gaussian_filter(filled * weights, sigma_voxels, mode="nearest")
        denominator = scipy.ndimage.gaussian_filter(weights, sigma_voxels, mode="nearest")
    else:
        numerator, denominator = filled * weights, weights
    supported = denominator > 1e-6 * max(float(weights.max()), 1.0)
    if not supported.any():
        raise PPRError("The calibration error maps contain no finite head voxel: check the detection output.")
    smoothed = np.where(supported, numerator / np.where(supported, denominator, 1.0), np.nan)
    return np.where(supported, smoothed, np.median(smoothed[supported])).astype(np.float32)


def fit_calibration(
    error_maps_mm: Iterable[np.ndarray],
    case_names: Iterable[str],
    config: CalibrationConfig = CalibrationConfig(),
    head_masks: Iterable[np.ndarray] | None = None,
    threshold_mask: np.ndarray | None = None,
    unit: str = "mm",
    brain_mask: np.ndarray | None = None,
) -> Calibration:
    """Estimate healthy error statistics from model-space error maps (mm) of healthy scans.

    error_maps_mm may be a generator (maps are reduced one at a time, never all held at full size).
    head_masks, when given (one per map, model space), restrict the statistics to head voxels:
    background errors say nothing about anatomy and would otherwise leak into the head's edge.
    NaN voxels (not computed) are ignored. threshold_mask (model space, e.g. brain and skull of the
    reference) restricts the voxels the overlay threshold is taken over; None: all measured voxels.
    brain_mask (model space, the reference's hemispheres), when given, adds the scans' leave-one-out
    reference figures (brain median z; fraction of ``threshold_mask`` above the threshold).
    """
    scans = zip(error_maps_mm, head_masks) if head_masks is not None else ((m, None) for m in error_maps_mm)
    return fit_calibration_scans(scans, case_names, config, threshold_mask, unit, brain_mask)


def fit_calibration_scans(
    scans: Iterable[tuple[np.ndarray, np.ndarray | None]],
    case_names: Iterable[str],
    config: CalibrationConfig = CalibrationConfig(),
    threshold_mask: np.ndarray | None = None,
    unit: str = "mm",
    brain_mask: np.ndarray | None = None,
) -> Calibration:
    """``fit_calibration`` over (error map, mask of its measured head or None) pairs, e.g. from a
    generator."""
    names = tuple(case_names)
    samples, grid_shape, scan_count = [], None, None
    for error_map, head_mask in scans:
        error_map = np.asarray(error_map)
        if error_map.ndim != 3:
            raise PPRError(f"A calibration error map must be 3D, got shape {error_map.shape}.")
        if grid_shape is None:
            grid_shape = tuple(int(size) for size in error_map.shape)
        elif error_map.shape != grid_shape:
            raise PPRError(
                f"Calibration error maps differ in shape ({error_map.shape} vs {grid_shape}): "
                "use one model bundle for all calibration scans."
            )
        scan_samples = block_samples(error_map, config)
        if head_mask is not None:
            scan_samples[block_samples(np.asarray(head_mask, np.float32), config) < 0.5] = np.nan
        measured_here = np.isfinite(scan_samples).any(axis=0).astype(np.int32)
        scan_count = measured_here if scan_count is None else scan_count + measured_here
        samples.append(scan_samples)
    if len(samples) < MIN_SCANS:
        raise PPRError(
            f"Calibration needs at least {MIN_SCANS} healthy scans, got {len(samples)}: "
            "give more held-out healthy head CTs (10 or more give stable statistics)."
        )
    if len(names) != len(samples):
        raise ValueError(f"{len(names)} case names for {len(samples)} error maps")
    per_scan = len(samples[0])
    stacked = np.concatenate(samples, axis=0)
    del samples
    median, spread = _statistics(stacked, config, unit)
    measured = scan_count >= min(config.min_scans_measured, len(names))
    # Places too few scans measured get z 0 when applied: they set no threshold either.
    held_out = [np.where(measured[None], z, np.nan) for z in _leave_one_out_z(stacked, per_scan, config, unit)]
    focus = None
    if threshold_mask is not None:
        if np.shape(threshold_mask) != grid_shape:
            raise ValueError(f"threshold_mask shape {np.shape(threshold_mask)} differs from the maps' {grid_shape}")
        inside = block_samples(np.asarray(threshold_mask, np.float32), config) >= 0.5
        # Tiny regions (synthetic tests, odd references) fall back to every measured voxel.
        if sum(int((np.isfinite(z) & inside).sum()) for z in held_out) >= 100:
            focus = inside
    counted = np.concatenate([z[np.isfinite(z) & (True if focus is None else focus)] for z in held_out])
    if not counted.size:
        raise PPRError("No place was measured by enough calibration scans: give more healthy head CTs.")
    threshold = float(np.percentile(counted, config.overlay_percentile))
    del counted
    references = (None, None)
    if brain_mask is not None:
        if np.shape(brain_mask) != grid_shape:
            raise ValueError(f"brain_mask shape {np.shape(brain_mask)} differs from the maps' {grid_shape}")
        brain = block_samples(np.asarray(brain_mask, np.float32), config) >= 0.5
        references = _leave_one_out_figures(held_out, brain, focus, threshold)
    return Calibration(
        median_mm=median,
        spread_mm=spread,
        grid_shape=grid_shape,
        n_scans=len(names),
        case_names=names,
        overlay_threshold_z=threshold,
        config=config,
        scan_count=scan_count.astype(np.uint16),
        reference_brain_median_z=references[0],
        reference_fraction_above=references[1],
    )


def _statistics(stacked: np.ndarray, config: CalibrationConfig, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed median and floored spread (coarse grid) of stacked pooled samples (NaN: not measured)."""
    median, spread, count = robust_statistics(stacked)
    median = _smooth_where_measured(median, count, config.smoothing_voxels)
    spread = _smooth_where_measured(spread, count, config.smoothing_voxels)
    return median, _floor_spread(spread, count > 0, config, unit)


def _leave_one_out_z(stacked: np.ndarray, per_scan: int, config: CalibrationConfig, unit: str
                     ) -> Iterator[np.ndarray]:
    """Per calibration scan, the z of its pooled samples against the statistics of the *other*
    scans only (NaN where too few of the others measured the place): what a new healthy scan gives.

    ``stacked`` holds the scans' pooled samples one after the other, ``per_scan`` rows each.
    """
    n_scans = len(stacked) // per_scan
    measured_by = np.isfinite(stacked).reshape(n_scans, per_scan, *stacked.shape[1:]).any(axis=1)
    for index in range(n_scans):
        own = stacked[index * per_scan:(index + 1) * per_scan]
        others = np.delete(stacked, np.s_[index * per_scan:(index + 1) * per_scan], axis=0)
        median, spread = _statistics(others, config, unit)
        del others
        others_count = measured_by.sum(axis=0) - measured_by[index]
        measured = (others_count >= min(config.min_scans_measured, n_scans - 1))[None] & np.isfinite(own)
        yield np.where(measured, (own - median) / spread, np.nan).astype(np.float32)


def _leave_one_out_figures(held_out: Sequence[np.ndarray], brain: np.ndarray, focus: np.ndarray | None,
                           threshold_z: float) -> tuple[np.ndarray, np.ndarray]:
    """Per scan: brain median z and fraction of brain and skull (``focus``; None: every measured
    place) above ``threshold_z``, from its leave-one-out z (``_leave_one_out_z``)."""
    medians, fractions = [], []
    for z in held_out:
        measured = np.isfinite(z)
        figures = ordinary_tissue_figures(z, brain & measured, measured if focus is None else focus & measured,
                                          threshold_z)
        medians.append(figures[0])
        fractions.append(figures[1])
    return np.asarray(medians, np.float32), np.asarray(fractions, np.float32)


def _floor_spread(spread: np.ndarray, measured: np.ndarray, config: CalibrationConfig, unit: str) -> np.ndarray:
    typical = float(np.median(spread[measured]))
    floor = max(config.min_spread(unit), config.min_spread_fraction * typical)
    return np.maximum(spread, floor).astype(np.float32)


# ----------------------------------------------------------------------------- applying


def upsample_to_grid(coarse: np.ndarray, config: CalibrationConfig, grid_shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear interpolation from the coarse grid to the model grid (both model space).

    Coarse voxel j describes model voxel ``j * factor + block_centre``; beyond the outermost coarse
    centres the edge values are kept.
    """
    k = config.factor
    return scipy.ndimage.affine_transform(
        np.asarray(coarse, dtype=np.float32),
        matrix=np.full(3, 1.0 / k),
        offset=np.full(3, -config.block_centre / k),
        output_shape=tuple(grid_shape),
        order=1,
        mode="nearest",
    )


def z_map(error_map_mm: np.ndarray, calibration: Calibration) -> np.ndarray:
    """z = (error - healthy median) / healthy spread, per model voxel (float32, model space);
    0 where too few healthy scans were measured to say what is usual."""
    error_map_mm = np.asarray(error_map_mm, dtype=np.float32)
    if error_map_mm.shape != tuple(calibration.grid_shape):
        raise PPRError(
            f"The calibration was made for model grid {tuple(calibration.grid_shape)} but this error map "
            f"is {error_map_mm.shape}: recalibrate the bundle (python -m ppr calibrate)."
        )
    median = upsample_to_grid(calibration.median_mm, calibration.config, error_map_mm.shape)
    spread = upsample_to_grid(calibration.spread_mm, calibration.config, error_map_mm.shape)
    measured = measured_on_grid(calibration, error_map_mm.shape)
    return np.where(measured, (error_map_mm - median) / spread, 0.0).astype(np.float32)


def measured_on_grid(calibration: Calibration, grid_shape: tuple[int, ...]) -> np.ndarray:
    """Model voxels where the calibration has statistics (bool, model grid; elsewhere z is 0)."""
    return upsample_to_grid(calibration.measured.astype(np.float32), calibration.config, grid_shape) >= 0.5


# ----------------------------------------------------------------------------- files


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    """Write ``calibration.npz`` (no pickles: plain arrays, numbers and a JSON config), atomically
    (``ppr.image.imageio.write_atomically``: ``OutputFileError``, "no space left on device")."""
    path = Path(path)
    write_atomically(path, lambda temporary: _write_npz(calibration, temporary))
    return path


def _write_npz(calibration: Calibration, path: Path) -> None:
    with open(path, "wb") as handle:
        np.savez_compressed(
            handle,
            format_version=np.int64(CALIBRATION_FORMAT_VERSION),
            median_mm=calibration.median_mm.astype(np.float32),
            spread_mm=calibration.spread_mm.astype(np.float32),
            factor=np.int64(calibration.factor),
            grid_shape=np.asarray(calibration.grid_shape, dtype=np.int64),
            n_scans=np.int64(calibration.n_scans),
            case_names=np.asarray(calibration.case_names, dtype=str),
            overlay_threshold_z=np.float64(calibration.overlay_threshold_z),
            config_json=np.asarray(json.dumps(calibration.config.to_dict(), sort_keys=True)),
            **({} if calibration.scan_count is None
               else {"scan_count": calibration.scan_count.astype(np.uint16)}),
            **({} if calibration.reference_brain_median_z is None else {
                "reference_brain_median_z": np.asarray(calibration.reference_brain_median_z, np.float32),
                "reference_fraction_above": np.asarray(calibration.reference_fraction_above, np.float32)}),
        )


def load_calibration(path: str | Path) -> Calibration:
    """Read ``calibration.npz``; a missing, corrupt or newer file raises ``BundleError``."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"No calibration found at {path}: run `python -m ppr calibrate` on this bundle.")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"])
            if version > CALIBRATION_FORMAT_VERSION:
                raise BundleError(
                    f"{path} has calibration format {version}, newer than this software "
                    f"({CALIBRATION_FORMAT_VERSION}): update the extension."
                )
            config = CalibrationConfig.from_dict(json.loads(str(data["config_json"])))
            calibration = Calibration(
                median_mm=data["median_mm"].astype(np.float32),
                spread_mm=data["spread_mm"].astype(np.float32),
                grid_shape=tuple(int(v) for v in data["grid_shape"]),
                n_scans=int(data["n_scans"]),
                case_names=tuple(str(v) for v in data["case_names"]),
                overlay_threshold_z=float(data["overlay_threshold_z"]),
                config=config,
                scan_count=data["scan_count"].astype(np.int32) if "scan_count" in data.files else None,
                reference_brain_median_z=_optional(data, "reference_brain_median_z"),
                reference_fraction_above=_optional(data, "reference_fraction_above"),
            )
            stored_factor = int(data["factor"])
    except BundleError:
        raise
    except Exception as error:  # zip, key and value errors all mean the same to the user
        raise BundleError(f"{path} is not a readable calibration file ({error}): recalibrate the bundle.") from error
    counts_shape = calibration.median_mm.shape if calibration.scan_count is None else calibration.scan_count.shape
    references = (calibration.reference_brain_median_z, calibration.reference_fraction_above)
    if (stored_factor != config.factor or calibration.median_mm.shape != calibration.spread_mm.shape
            or counts_shape != calibration.median_mm.shape
            or any(figures is not None and figures.shape != (calibration.n_scans,) for figures in references)):
        raise BundleError(f"{path} is inconsistent: recalibrate the bundle.")
    return calibration


def _optional(data: Mapping[str, np.ndarray], key: str) -> np.ndarray | None:
    return data[key].astype(np.float32) if key in data.files else None


# ----------------------------------------------------------------------------- region scores

AGGREGATE_METHODS = ("max", "percentile", "top_k_mean", "mean")


def aggregate(values: np.ndarray, method: str, **params: float) -> float:
    """One number from the values of a map inside a region (NaN are ignored).

    method "max"; "percentile" with ``p`` in [0, 100]; "top_k_mean" with ``k``: a fraction of the
    region's voxels when 0 < k < 1, a voxel count when k >= 1 (at least one voxel is always used);
    "mean". An empty region gives NaN: there is nothing to score.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if method not in AGGREGATE_METHODS:
        raise ValueError(f"unknown aggregate {method!r}; choose one of {AGGREGATE_METHODS}")
    unknown = set(params) - {"max": set(), "percentile": {"p"}, "top_k_mean": {"k"}, "mean": set()}[method]
    if unknown:
        raise ValueError(f"aggregate {method!r} takes no parameter {sorted(unknown)}")
    if values.size == 0:
        return math.nan
    if method == "max":
        return float(values.max())
    if method == "mean":
        return float(values.mean())
    if method == "percentile":
        p = float(params.get("p", 99.0))
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile p must be in [0, 100], got {p}")
        return float(np.percentile(values, p))
    return _top_k_mean(values, float(params.get("k", 0.01)))


def _top_k_mean(values: np.ndarray, k: float) -> float:
    if k <= 0:
        raise ValueError(f"top_k_mean k must be positive, got {k}")
    count = math.ceil(k * values.size) if k < 1 else int(k)
    count = min(max(count, 1), values.size)
    return float(np.partition(values, values.size - count)[values.size - count :].mean())


@dataclass(frozen=True)
class Aggregation:
    """A configured aggregate, e.g. ``Aggregation("top_k_mean", k=0.01)(values)``."""

    method: str = "top_k_mean"
    p: float = 99.0
    k: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in AGGREGATE_METHODS:
            raise ValueError(f"unknown aggregate {self.method!r}; choose one of {AGGREGATE_METHODS}")

    @property
    def params(self) -> dict[str, float]:
        return {"percentile": {"p": self.p}, "top_k_mean": {"k": self.k}}.get(self.method, {})

    def __call__(self, values: np.ndarray) -> float:
        return aggregate(values, self.method, **self.params)

    def describe(self) -> str:
        return f"{self.method}" + "".join(f" {key}={value:g}" for key, value in self.params.items())
