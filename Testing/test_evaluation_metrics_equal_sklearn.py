"""AUROC and average precision in numpy equal scikit-learn's, ties and edge cases included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ppr.statistics.metrics import average_precision, roc_auc, roc_curve_points


def test_auroc_and_ap_of_a_hand_worked_example() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>both -> 3 of 4
    assert roc_auc(labels, scores) == 0.75
    # thresholds 0.8: P=1, R=.5; 0.4: P=.5; 0.35: P=2/3, R=1 -> .5*1 + .5*2/3
    assert average_precision(labels, scores) == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-15)


def test_ties_between_classes_count_one_half() -> None:
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.5, 0.5, 0.5, 0.5])
    assert roc_auc(labels, scores) == 0.5
    assert average_precision(labels, scores) == 0.5
    assert roc_auc(labels, scores) == roc_auc_score(labels, scores)
    assert average_precision(labels, scores) == average_precision_score(labels, scores)


@pytest.mark.parametrize("seed", range(25))
def test_random_inputs_with_ties_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 400))
    labels = rng.integers(0, 2, size)
    labels[0], labels[1] = 0, 1  # both classes present
    # few distinct values on odd seeds so ties are everywhere
    scores = rng.integers(0, 5, size).astype(float) if seed % 2 else rng.normal(size=size)
    scores = scores + labels * rng.uniform(0, 1)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12, abs=1e-15)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), rel=1e-12, abs=1e-15
    )


def test_perfect_and_inverted_rankings() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert roc_auc(labels, scores) == 1.0
    assert roc_auc(labels, -scores) == 0.0
    assert average_precision(labels, scores) == 1.0
    assert average_precision(labels, -scores) == pytest.approx(average_precision_score(labels, -scores), abs=1e-15)


def test_one_class_is_undefined_not_a_number() -> None:
    assert np.isnan(roc_auc(np.zeros(4), np.arange(4.0)))
    assert np.isnan(average_precision(np.zeros(4), np.arange(4.0)))
    assert roc_auc(np.array([True, False]), np.array([2.0, 1.0])) == 1.0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0/1"):
        roc_auc(np.array([0, 2]), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        average_precision(np.array([0, 1]), np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="scores for"):
        roc_auc(np.array([0, 1]), np.array([1.0]))


def test_roc_points_match_sklearn_curve() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60).astype(float)
    fpr, tpr = roc_curve_points(labels, scores)
    sk_fpr, sk_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=1e-15)
    np.testing.assert_allclose(tpr, sk_tpr, atol=1e-15)
