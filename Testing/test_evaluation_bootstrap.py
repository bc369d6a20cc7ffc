"""Bootstrap confidence intervals: reproducible with a seed, stratified, and sensible."""

from __future__ import annotations

import numpy as np

from ppr.statistics.metrics import average_precision, bootstrap_ci, roc_auc


def _cases(seed: int = 0, n_pos: int = 8, n_neg: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    scores = rng.normal(size=labels.size) + 1.0 * labels
    return labels, scores


def test_same_seed_gives_the_same_interval_and_another_seed_another() -> None:
    labels, scores = _cases()
    first = bootstrap_ci(labels, scores, roc_auc, n_resamples=300, seed=7)
    again = bootstrap_ci(labels, scores, roc_auc, n_resamples=300, seed=7)
    other = bootstrap_ci(labels, scores, roc_auc, n_resamples=300, seed=8)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)


def test_interval_contains_the_estimate_and_is_inside_zero_one() -> None:
    labels, scores = _cases()
    for metric in (roc_auc, average_precision):
        interval = bootstrap_ci(labels, scores, metric, n_resamples=500, seed=0)
        assert interval.value == metric(labels, scores)
        assert 0.0 <= interval.low < interval.value < interval.high <= 1.0


def test_every_resample_keeps_both_classes_even_with_one_positive() -> None:
    # with one positive an unstratified resample would miss it ~37% of the time (AUROC undefined)
    labels = np.r_[1, np.zeros(9, int)]
    scores = np.r_[0.95, np.linspace(0.0, 1.0, 9)]
    interval = bootstrap_ci(labels, scores, roc_auc, n_resamples=200, seed=1)
    assert np.isfinite(interval.low) and np.isfinite(interval.high)
    # the positive ranks above 8 of 9 negatives; resamples vary only the negatives
    assert 0.5 <= interval.low <= interval.value <= interval.high <= 1.0


def test_interval_narrows_with_more_cases() -> None:
    small = bootstrap_ci(*_cases(1, 5, 15), roc_auc, n_resamples=400, seed=0)
    large = bootstrap_ci(*_cases(1, 200, 600), roc_auc, n_resamples=400, seed=0)
    assert (large.high - large.low) < 0.5 * (small.high - small.low)


def test_one_class_gives_undefined_interval() -> None:
    interval = bootstrap_ci(np.zeros(5, int), np.arange(5.0), roc_auc, n_resamples=10)
    assert np.isnan(interval.value) and interval.as_list() == [None, None]
