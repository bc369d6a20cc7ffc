"""Region scores of one error map or z-map: how anomalous each region of the head looks.

For each region mask of the bundle's reference (left_hemisphere, right_hemisphere, skull, head,
from ``ppr.image.preprocess.region_masks``) the score is an aggregate of the map inside the region and
inside this scan's head mask (outside it the maps are 0 by convention, which would pull the score
down where the scan is cut short). Aggregates: the 99th percentile (default; robust to a few noisy
voxels yet sensitive to a lesion of about 1 % of the region), the maximum, and the mean of the top
k. The arithmetic is ``ppr.statistics.calibration.aggregate``, shared with the evaluation.

The map is the position error in mm, or, with a calibrated bundle, its z-map
(``head_z_map``: ``ppr.statistics.calibration.z_map`` inside the head, 0 outside): "how unusual is this error
for this place in a healthy head". ``focus_mask`` says where the most anomalous point is looked for
(brain and skull before the neck and face).

What it does not: estimate the calibration (``ppr.statistics.calibration``) or resample anything; maps and
masks are model-space arrays (z, y, x) of one shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ppr.statistics.calibration import Calibration, aggregate, z_map

AGGREGATES = ("p99", "max", "top_k_mean")
# Regions where an anomaly matters to the user (the paper's three structures); the neck and the
# shoulders in the lower slices have large healthy errors and would otherwise hold the maximum.
FOCUS_REGIONS = ("left_hemisphere", "right_hemisphere", "skull")
BRAIN_REGIONS = ("left_hemisphere", "right_hemisphere")


@dataclass(frozen=True)
class ScoreOptions:
    """aggregate: "p99", "max" or "top_k_mean"; top_k: fraction of the region (< 1) or voxel count."""

    aggregate: str = "p99"
    top_k: float = 0.01

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}, got {self.aggregate!r}")

    def __call__(self, values: np.ndarray) -> float:
        if self.aggregate == "p99":
            return aggregate(values, "percentile", p=99.0)
        if self.aggregate == "max":
            return aggregate(values, "max")
        return aggregate(values, "top_k_mean", k=self.top_k)


def region_scores(error_map_mm: np.ndarray, regions: Mapping[str, np.ndarray], head_mask: np.ndarray,
                  options: ScoreOptions = ScoreOptions()) -> dict[str, float | None]:
    """Score of each region (None where the region does not meet this scan's head).

    ``error_map_mm`` may be a z-map as well: the scores are then in z.
    """
    head = np.asarray(head_mask, dtype=bool)
    scores: dict[str, float | None] = {}
    for name, region in regions.items():
        region = np.asarray(region, dtype=bool)
        if region.shape != error_map_mm.shape or head.shape != error_map_mm.shape:
            raise ValueError(f"region {name!r} {region.shape}, head {head.shape} and map "
                             f"{error_map_mm.shape} must have one shape")
        value = options(error_map_mm[region & head])
        scores[name] = None if math.isnan(value) else value
    return scores


def error_summary(error_map_mm: np.ndarray, head_mask: np.ndarray) -> dict[str, float | None]:
    """max, p99 and mean of a map (error in mm, or z) over the head (None for an empty head)."""
    values = error_map_mm[np.asarray(head_mask, dtype=bool)]
    if values.size == 0:
        return {"max": None, "p99": None, "mean": None}
    return {"max": float(values.max()), "p99": float(np.percentile(values, 99.0)), "mean": float(values.mean())}


def head_z_map(error_map_mm: np.ndarray, head_mask: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The calibrated z-map of a model-space error map: z inside this scan's head, 0 outside.

    Outside the head the error is 0 by convention, so its z would only say "less error than the
    healthy median": meaningless, and strongly negative. 0 there ("nothing unusual") keeps the
    overlay, the surface probe and linear resampling at the head's edge free of that artefact,
    like the error map's 0.
    """
    head = np.asarray(head_mask, dtype=bool)
    return np.where(head, z_map(error_map_mm, calibration), 0.0).astype(np.float32)


def focus_mask(regions: Mapping[str, np.ndarray], head_mask: np.ndarray) -> np.ndarray:
    """Where the most anomalous point is looked for: brain and skull inside this scan's head.

    The union of the hemispheres and the skull when it meets the head, else the whole head.
    """
    head = np.asarray(head_mask, dtype=bool)
    focus = np.zeros_like(head)
    for name in FOCUS_REGIONS:
        if name in regions:
            focus |= np.asarray(regions[name], dtype=bool)
    focus &= head
    return focus if focus.any() else head
