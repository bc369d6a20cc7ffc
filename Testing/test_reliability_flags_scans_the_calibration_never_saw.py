"""The out-of-depth check: the calibration stores its own scans' leave-one-out brain median z and
fraction above the threshold; a scan whose ordinary brain tissue is far outside that range is
flagged in plain words with its figure, a lesion alone is not, and older calibration files get the
documented default range."""

from __future__ import annotations

import numpy as np
import pytest

from ppr.statistics.calibration import CalibrationConfig, fit_calibration, load_calibration, save_calibration, z_map
from ppr.statistics.reliability import (
    DEFAULT_BRAIN_MEDIAN_Z_RANGE,
    MARGIN_Z,
    assess,
    ordinary_tissue_figures,
)

SHAPE = (32, 32, 32)
MEDIAN_MM, SPREAD_MM = 20.0, 4.0
SHIFTED_SCAN, SHIFT_MM = 4, 8.0  # one calibration scan reads 2 healthy spreads high


def _brain() -> np.ndarray:
    brain = np.zeros(SHAPE, dtype=bool)
    brain[4:28, 4:28, 4:28] = True
    return brain


def _healthy(rng: np.random.Generator, shift_mm: float = 0.0) -> np.ndarray:
    return (MEDIAN_MM + shift_mm + SPREAD_MM * rng.normal(size=SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def calibration():
    rng = np.random.default_rng(0)
    maps = [_healthy(rng, SHIFT_MM if index == SHIFTED_SCAN else 0.0) for index in range(5)]
    brain = _brain()
    return fit_calibration(maps, [f"c{i}" for i in range(5)], CalibrationConfig(factor=4), None,
                           threshold_mask=brain, brain_mask=brain)


def test_each_calibration_scan_gets_its_figures_against_the_other_scans(calibration) -> None:
    medians = calibration.reference_brain_median_z
    fractions = calibration.reference_fraction_above
    assert medians.shape == fractions.shape == (5,)
    # Left out, the shifted scan is measured against four unshifted ones: z ~ 8 mm / 4 mm = 2.
    assert medians[SHIFTED_SCAN] == pytest.approx(SHIFT_MM / SPREAD_MM, abs=0.35)
    # The others are measured against statistics one quarter of which is shifted: a little below 0.
    others = np.delete(medians, SHIFTED_SCAN)
    assert np.all(np.abs(others) < 0.6) and np.all(others < 0.1)
    assert fractions[SHIFTED_SCAN] > 5 * np.delete(fractions, SHIFTED_SCAN).max()


def test_a_scan_far_outside_the_healthy_range_is_flagged_with_its_figure(calibration) -> None:
    rng = np.random.default_rng(1)
    brain = _brain()
    # 28 mm above: ~5.5 healthy spreads (the pooled spread, the shifted scan included, is ~5 mm)
    z = z_map(_healthy(rng, 7.0 * SPREAD_MM), calibration)
    check = assess(z, brain, brain, calibration)
    low, high = float(calibration.reference_brain_median_z.min()), float(calibration.reference_brain_median_z.max())
    assert check.healthy_brain_median_z == pytest.approx((low, high))
    assert check.brain_median_z > high + MARGIN_Z and check.brain_median_z == pytest.approx(5.5, abs=0.4)
    assert not check.reliable and check.range_source == "calibration"
    assert check.message.startswith(
        f"Scores are not reliable for this scan: its ordinary brain tissue is {check.brain_median_z:.1f} z above "
        f"what the calibration saw (healthy scans: {low:.1f} to {high:.1f} z)")
    assert "Calibrate the model on a few healthy scans from this scanner (ppr calibrate" in check.message
    assert check.to_json_dict()["reliable"] is False
    assert check.to_json_dict()["brain_median_z"] == pytest.approx(check.brain_median_z, abs=1e-4)

    # Far below is as far out of depth as far above.
    low_scan = assess(z_map(_healthy(rng, -4.0 * SPREAD_MM), calibration), brain, brain, calibration)
    assert not low_scan.reliable and " z below what the calibration saw" in low_scan.message


def test_a_lesion_alone_does_not_trip_the_check(calibration) -> None:
    rng = np.random.default_rng(2)
    brain = _brain()
    errors = _healthy(rng)
    errors[4:28, 4:28, 4:9] += 60.0  # a 'lesion' over a fifth of the brain
    z = z_map(errors, calibration)
    check = assess(z, brain, brain, calibration)
    assert check.reliable and check.message == ""
    assert abs(check.brain_median_z) < 1.0
    assert check.fraction_above == pytest.approx(5 / 24, abs=0.03)


def test_the_figures_are_a_median_and_a_fraction_of_the_measured_places() -> None:
    z = np.arange(10, dtype=np.float32)
    brain = np.zeros(10, dtype=bool)
    brain[:5] = True
    focus = np.ones(10, dtype=bool)
    assert ordinary_tissue_figures(z, brain, focus, 6.5) == pytest.approx((2.0, 0.3))
    median, fraction = ordinary_tissue_figures(z, np.zeros(10, dtype=bool), focus, 6.5)
    assert np.isnan(median) and fraction == pytest.approx(0.3)


def test_the_figures_survive_the_file_and_older_files_get_the_default_range(calibration, tmp_path) -> None:
    loaded = load_calibration(save_calibration(calibration, tmp_path / "calibration.npz"))
    np.testing.assert_array_equal(loaded.reference_brain_median_z, calibration.reference_brain_median_z)
    np.testing.assert_array_equal(loaded.reference_fraction_above, calibration.reference_fraction_above)

    with np.load(tmp_path / "calibration.npz") as data:
        version_2 = {key: data[key] for key in data.files if not key.startswith("reference_")}
    version_2["format_version"] = np.int64(2)
    np.savez(tmp_path / "old.npz", **version_2)
    old = load_calibration(tmp_path / "old.npz")
    assert old.reference_brain_median_z is None
    brain = _brain()
    z = z_map(_healthy(np.random.default_rng(3), 3.5 * SPREAD_MM), old)
    check = assess(z, brain, brain, old)
    assert check.range_source == "default" and check.healthy_brain_median_z == DEFAULT_BRAIN_MEDIAN_Z_RANGE
    assert not check.reliable and "(healthy scans: -0.5 to 0.5 z)" in check.message
