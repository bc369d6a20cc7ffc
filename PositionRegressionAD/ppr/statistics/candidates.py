"""Anomaly candidates: the connected regions of a high anomaly map (z-map or error map) as a labelmap.

A region is a face-connected (6-neighbour) set of voxels at or above the threshold; regions smaller
than ``min_volume_mm3`` are dropped and at most ``max_count`` are kept, the largest first. The
labelmap numbers them 1, 2, ... by size (1 = the largest; equal sizes in scan order of their first
voxel), 0 elsewhere, on the map's own grid. This is the one piece of code that cuts a map into
candidates: the Slicer module's segmentation (``PositionRegressionADLib.candidates``) and the DICOM
Segmentation (``ppr.workflows.dicom_results``) both take their labels from here.

numpy and SciPy only (no SimpleITK image needed): the map comes as an array with its voxel spacing.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.ndimage

# The defaults of the module's display options (PositionRegressionADLib.results.ResultDisplayOptions).
MIN_CANDIDATE_VOLUME_MM3 = 50.0
MAX_CANDIDATES = 10
# Without a calibration the error map has no natural threshold: this percentile of its support.
THRESHOLD_PERCENTILE = 98.0


def candidate_labels(values: np.ndarray, spacing_mm: Sequence[float], threshold: float,
                     min_volume_mm3: float = MIN_CANDIDATE_VOLUME_MM3,
                     max_count: int = MAX_CANDIDATES) -> np.ndarray:
    """uint16 labelmap (same shape as ``values``) of the regions at or above ``threshold``.

    ``spacing_mm``: the voxel edges in mm (any order: only their product counts).
    """
    values = np.asarray(values)
    min_voxels = max(int(np.ceil(min_volume_mm3 / float(np.prod(spacing_mm)))), 1)
    regions, count = scipy.ndimage.label(values >= threshold)  # the default structure: face neighbours
    labels = np.zeros(values.shape, np.uint16)
    if count == 0 or max_count <= 0:
        return labels
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    # Largest first; among equal sizes the region met first in scan order (scipy numbers them so).
    order = np.argsort(-sizes, kind="stable")
    kept = [region for region in order[:max_count] if sizes[region] >= min_voxels]
    rank_of = np.zeros(count + 1, np.uint16)
    rank_of[np.asarray(kept, int) + 1] = np.arange(1, len(kept) + 1, dtype=np.uint16)
    return rank_of[regions]


def default_threshold(values: np.ndarray, percentile: float = THRESHOLD_PERCENTILE) -> float:
    """The threshold of a map without a calibrated one: ``percentile`` of its support (values > 0)."""
    support = np.asarray(values)[np.asarray(values) > 0]
    return float(np.percentile(support, percentile)) if support.size else 0.0
