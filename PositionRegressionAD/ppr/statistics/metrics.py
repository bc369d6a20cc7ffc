"""Evaluation metrics in numpy: ranking metrics, bootstrap intervals, voxel-level AP and Dice.

What it does:
- Metrics that equal scikit-learn's: ``roc_auc`` (rank-based, ties count one half, equal
  to ``sklearn.metrics.roc_auc_score``), ``average_precision`` (step-wise, as
  ``sklearn.metrics.average_precision_score`` defines it), ``roc_curve_points``, and stratified
  bootstrap confidence intervals (``bootstrap_ci``, seeded).
- ``ScoreHistogram``: voxel-level average precision and best Dice over many voxels in constant
  memory. Scores are binned on a fixed range: the AP it returns is *exactly* scikit-learn's AP of
  the scores rounded down to their bin's lower edge; the only difference to the unbinned AP comes
  from voxels of different labels that share a bin (with the default 2^14 bins over the observed
  range this moved AP by < 1e-3 in the tests; see test_evaluation_voxel_metrics.py).

What it does not: read cases, run detection or write files (``ppr.workflows.evaluation``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------- ranking metrics


def _binary_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels).ravel()
    values = np.unique(labels)
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 (or bool), got values {values[:5]}")
    return labels.astype(bool)


def tie_groups(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative counts per distinct score, highest score first (int64 arrays)."""
    labels = _binary_labels(labels)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"{scores.size} scores for {labels.size} labels")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    distinct, group = np.unique(scores, return_inverse=True)
    positives = np.bincount(group[labels], minlength=distinct.size)
    negatives = np.bincount(group[~labels], minlength=distinct.size)
    return positives[::-1].astype(np.int64), negatives[::-1].astype(np.int64)


def auroc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AUROC from per-threshold counts (highest first): P(pos > neg) + 0.5 P(pos == neg).

    NaN when one class is absent (scikit-learn also returns NaN, with a warning).
    """
    n_pos, n_neg = float(positives.sum()), float(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    above = np.cumsum(positives) - positives
    # the sum counts in halves so that it stays an integer for patient-level sizes (exact)
    halves = np.dot(negatives.astype(np.float64), (2 * above + positives).astype(np.float64))
    return float(halves / (2.0 * n_pos * n_neg))


def average_precision_from_counts(positives: np.ndarray, negatives: np.ndarray) -> float:
    """AP = sum over thresholds of (recall step) * precision, thresholds highest first.

    Empty thresholds (no voxel) are skipped. NaN when there is no positive (scikit-learn returns 0
    with a warning there, which reads like a real result; NaN says "undefined").
    """
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    keep = (positives + negatives) > 0
    positives, negatives = positives[keep], negatives[keep]
    n_pos = positives.sum()
    if n_pos == 0:
        return float("nan")
    true_pos = np.cumsum(positives)
    precision = true_pos / (true_pos + np.cumsum(negatives))
    return float(np.dot(positives / n_pos, precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (equals ``sklearn.metrics.roc_auc_score``, ties included)."""
    return auroc_from_counts(*tie_groups(labels, scores))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (equals ``sklearn.metrics.average_precision_score``, ties included)."""
    return average_precision_from_counts(*tie_groups(labels, scores))


def roc_curve_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct threshold, starting at (0, 0)."""
    positives, negatives = tie_groups(labels, scores)
    fpr = np.concatenate([[0.0], np.cumsum(negatives) / max(negatives.sum(), 1)])
    tpr = np.concatenate([[0.0], np.cumsum(positives) / max(positives.sum(), 1)])
    return fpr, tpr


# ----------------------------------------------------------------------------- bootstrap

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a bootstrap confidence interval (NaN where undefined)."""

    value: float
    low: float
    high: float

    def as_list(self) -> list[float | None]:
        return [none_if_nan(self.low), none_if_nan(self.high)]


def none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def bootstrap_ci(
    labels: np.ndarray,
    scores: np.ndarray,
    metric: Metric,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``metric``, resampling positives and negatives separately.

    Stratified so that every resample keeps the class counts of the data (an AUROC or AP is never
    undefined in a resample). The same seed gives the same interval.
    """
    labels = _binary_labels(labels)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    value = metric(labels, scores)
    pos_index, neg_index = np.flatnonzero(labels), np.flatnonzero(~labels)
    if pos_index.size == 0 or neg_index.size == 0 or n_resamples <= 0:
        return Interval(value, float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    resampled = np.empty(n_resamples)
    for i in range(n_resamples):
        chosen = np.concatenate(
            [rng.choice(pos_index, pos_index.size, replace=True), rng.choice(neg_index, neg_index.size, replace=True)]
        )
        resampled[i] = metric(labels[chosen], scores[chosen])
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return Interval(value, float(low), float(high))


# ----------------------------------------------------------------------------- voxel level

DEFAULT_BINS = 2**14


class ScoreHistogram:
    """Counts of positive and negative voxels per score bin, accumulated case by case.

    Usage::

        histogram = ScoreHistogram(low=0.0, high=300.0)
        for scores, mask in cases:
            histogram.add(scores, mask)
        histogram.average_precision(), histogram.best_dice()

    Scores below ``low`` / above ``high`` fall into the first / last bin: choose the range from the
    data (the evaluation takes the minimum and maximum over all cases first).
    """

    def __init__(self, low: float, high: float, bins: int = DEFAULT_BINS) -> None:
        if not np.isfinite(low) or not np.isfinite(high):
            raise ValueError(f"histogram range must be finite, got [{low}, {high}]")
        if high <= low:
            high = low + 1.0  # a constant map: every voxel in one bin is still correct
        self.low, self.high, self.bins = float(low), float(high), int(bins)
        self.positives = np.zeros(self.bins, dtype=np.int64)
        self.negatives = np.zeros(self.bins, dtype=np.int64)

    def bin_index(self, scores: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(scores, dtype=np.float64) - self.low) * (self.bins / (self.high - self.low))
        return np.clip(np.floor(scaled), 0, self.bins - 1).astype(np.int64)

    def bin_lower_edges(self) -> np.ndarray:
        return self.low + np.arange(self.bins) * ((self.high - self.low) / self.bins)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        scores = np.asarray(scores).ravel()
        labels = np.asarray(labels).ravel().astype(bool)
        if scores.shape != labels.shape:
            raise ValueError(f"{scores.size} scores for {labels.size} labels")
        valid = ~np.isnan(scores)
        index = self.bin_index(scores[valid])
        valid_labels = labels[valid]
        self.positives += np.bincount(index[valid_labels], minlength=self.bins)
        self.negatives += np.bincount(index[~valid_labels], minlength=self.bins)

    @property
    def n_positive(self) -> int:
        return int(self.positives.sum())

    @property
    def n_voxels(self) -> int:
        return int(self.positives.sum() + self.negatives.sum())

    def average_precision(self) -> float:
        return average_precision_from_counts(self.positives[::-1], self.negatives[::-1])

    def auroc(self) -> float:
        return auroc_from_counts(self.positives[::-1], self.negatives[::-1])

    def best_dice(self) -> tuple[float, float]:
        """Highest Dice of "score >= threshold" against the labels over all bin edges, and that edge.

        (NaN, NaN) when there is no positive voxel.
        """
        n_pos = self.n_positive
        if n_pos == 0:
            return float("nan"), float("nan")
        true_pos = np.cumsum(self.positives[::-1]).astype(np.float64)
        predicted = true_pos + np.cumsum(self.negatives[::-1])
        dice = 2.0 * true_pos / (predicted + n_pos)
        best = int(np.argmax(dice))
        return float(dice[best]), float(self.bin_lower_edges()[::-1][best])
