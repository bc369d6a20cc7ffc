"""Voxel-level AP and best Dice from score histograms, checked against scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from ppr.statistics.metrics import ScoreHistogram


def _lesion_case(seed: int, shape=(20, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.zeros(shape, bool)
    z, y, x = rng.integers(4, 14, 3)
    mask[z : z + 5, y : y + 6, x : x + 6] = True
    scores = rng.gamma(2.0, 5.0, shape) + 30.0 * mask * rng.uniform(0.3, 1.0, shape)
    return scores, mask


def test_binned_ap_equals_sklearn_on_scores_rounded_to_bins() -> None:
    cases = [_lesion_case(seed) for seed in range(3)]
    scores = np.concatenate([c[0].ravel() for c in cases])
    labels = np.concatenate([c[1].ravel() for c in cases])
    histogram = ScoreHistogram(float(scores.min()), float(scores.max()), bins=256)
    for case_scores, case_mask in cases:
        histogram.add(case_scores, case_mask)
    assert histogram.n_voxels == labels.size and histogram.n_positive == labels.sum()
    quantised = histogram.bin_index(scores)
    assert histogram.average_precision() == pytest.approx(average_precision_score(labels, quantised), rel=1e-12)
    assert histogram.auroc() == pytest.approx(roc_auc_score(labels, quantised), rel=1e-12)


def test_default_bins_are_within_1e3_of_the_exact_ap() -> None:
    cases = [_lesion_case(seed) for seed in range(4)]
    scores = np.concatenate([c[0].ravel() for c in cases])
    labels = np.concatenate([c[1].ravel() for c in cases])
    histogram = ScoreHistogram(float(scores.min()), float(scores.max()))
    for case_scores, case_mask in cases:
        histogram.add(case_scores, case_mask)
    exact = average_precision_score(labels, scores)
    assert 0.2 < exact < 0.95  # a case where binning could matter
    assert abs(histogram.average_precision() - exact) < 1e-3


def test_best_dice_is_the_best_threshold_dice() -> None:
    scores, mask = _lesion_case(5)
    histogram = ScoreHistogram(float(scores.min()), float(scores.max()), bins=64)
    histogram.add(scores, mask)
    dice, threshold = histogram.best_dice()
    # brute force over the same thresholds (bin lower edges), Dice = F1 of the binary prediction
    edges = histogram.bin_lower_edges()
    index = histogram.bin_index(scores)
    brute = [f1_score(mask.ravel(), (index >= b).ravel()) for b in range(histogram.bins)]
    assert dice == pytest.approx(max(brute), rel=1e-12)
    assert threshold == edges[int(np.argmax(brute))]


def test_perfect_separation_gives_ap_and_dice_one() -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[2:4, 2:4, 2:4] = True
    scores = np.where(mask, 10.0, 1.0)
    histogram = ScoreHistogram(0.0, 10.0, bins=100)
    histogram.add(scores, mask)
    assert histogram.average_precision() == 1.0
    assert histogram.best_dice() == (1.0, 9.9)


def test_out_of_range_and_nan_scores() -> None:
    histogram = ScoreHistogram(0.0, 1.0, bins=10)
    histogram.add(np.array([-5.0, 0.5, 7.0, np.nan]), np.array([0, 0, 1, 1]))
    assert histogram.n_voxels == 3  # NaN voxels (outside the scan) are not counted
    assert histogram.negatives[0] == 1 and histogram.positives[-1] == 1
    empty = ScoreHistogram(0.0, 1.0)
    empty.add(np.zeros(4), np.zeros(4))
    assert np.isnan(empty.average_precision()) and np.isnan(empty.best_dice()[0])
