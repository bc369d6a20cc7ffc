"""Region-score aggregates: max, percentile, mean of the top k, mean; per region mask."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ppr.statistics.calibration import Aggregation, aggregate
from ppr.statistics.scores import region_scores


def test_each_aggregate_on_known_values() -> None:
    values = np.arange(1.0, 101.0)  # 1 .. 100
    assert aggregate(values, "max") == 100.0
    assert aggregate(values, "mean") == 50.5
    assert aggregate(values, "percentile", p=50) == 50.5
    assert aggregate(values, "percentile", p=99) == pytest.approx(99.01)
    assert aggregate(values, "top_k_mean", k=0.1) == np.mean(np.arange(91.0, 101.0))  # 10 %
    assert aggregate(values, "top_k_mean", k=3) == 99.0  # a count
    assert aggregate(values, "top_k_mean", k=0.001) == 100.0  # at least one voxel


def test_top_k_fraction_rounds_up_and_count_is_capped() -> None:
    values = np.array([5.0, 1.0, 4.0, 2.0, 3.0])
    assert aggregate(values, "top_k_mean", k=0.3) == 4.5  # ceil(1.5) = 2 voxels
    assert aggregate(values, "top_k_mean", k=50) == 3.0  # all five


def test_nan_is_ignored_and_an_empty_region_is_nan() -> None:
    assert aggregate(np.array([np.nan, 2.0, 7.0]), "max") == 7.0
    assert math.isnan(aggregate(np.array([]), "mean"))
    assert math.isnan(aggregate(np.array([np.nan]), "top_k_mean", k=2))


def test_bad_methods_and_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown aggregate"):
        aggregate(np.ones(3), "median")
    with pytest.raises(ValueError, match="no parameter"):
        aggregate(np.ones(3), "max", p=3)
    with pytest.raises(ValueError, match="in \\[0, 100\\]"):
        aggregate(np.ones(3), "percentile", p=101)
    with pytest.raises(ValueError, match="positive"):
        aggregate(np.ones(3), "top_k_mean", k=0)


def test_any_configured_aggregation_scores_regions_inside_the_head() -> None:
    # ppr.statistics.scores.region_scores (shared with the detection) takes an Aggregation as its aggregate
    score_map = np.zeros((4, 4, 4))
    score_map[:, :, :2] = 1.0
    score_map[0, 0, 3] = 9.0
    score_map[3, 3, 3] = 50.0  # outside this scan's head: must not count
    head = np.ones_like(score_map, bool)
    head[3, 3, 3] = False
    left = np.zeros_like(score_map, bool)
    left[:, :, :2] = True
    regions = {"left_hemisphere": left, "right_hemisphere": ~left}
    assert region_scores(score_map, regions, head, Aggregation("max")) == {
        "left_hemisphere": 1.0, "right_hemisphere": 9.0}
    assert region_scores(score_map, {"right_hemisphere": ~left}, head, Aggregation("top_k_mean", k=2)) == {
        "right_hemisphere": 4.5}
    assert region_scores(score_map, {"left_hemisphere": left}, head, Aggregation("mean")) == {"left_hemisphere": 1.0}


def test_aggregation_describes_itself() -> None:
    assert Aggregation("percentile", p=99.5).describe() == "percentile p=99.5"
    assert Aggregation("max").params == {}
    with pytest.raises(ValueError):
        Aggregation("mode")
