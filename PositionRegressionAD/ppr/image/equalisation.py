"""The equalisation curve: a monotone map HU -> [0, 1] from a histogram (numpy only).

Kept apart from ``ppr.image.intensity`` (which works on SimpleITK images) so that training on a
machine with torch but without SimpleITK (``scripts/train-from-pack.py``) can map augmented HU
through the reference's curve. It does not decide whose histogram is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EQUALIZE_BINS = 256


@dataclass(frozen=True)
class EqualisationCurve:
    """A monotone map HU -> [0, 1]: the cumulative histogram sampled at bin centres (HU)."""

    centres_hu: np.ndarray
    cumulative: np.ndarray

    @classmethod
    def of(cls, values_hu: np.ndarray, bins: int = EQUALIZE_BINS) -> "EqualisationCurve":
        """The equalisation curve of values (what scikit-image's equalize_hist computes)."""
        counts, edges = np.histogram(values_hu, bins=bins, range=(float(values_hu.min()), float(values_hu.max())))
        cumulative = np.cumsum(counts, dtype=np.float64)
        return cls((edges[:-1] + edges[1:]) / 2.0, cumulative / cumulative[-1])

    def apply(self, values_hu: np.ndarray) -> np.ndarray:
        return np.interp(values_hu, self.centres_hu, self.cumulative).astype(np.float32)
