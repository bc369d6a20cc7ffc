"""Normative calibration: healthy statistics, z-maps, threshold, files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ppr.statistics.calibration import (
    CalibrationConfig,
    block_samples,
    fit_calibration,
    load_calibration,
    save_calibration,
    upsample_to_grid,
    z_map,
)
from ppr.errors import BundleError, PPRError

SHAPE = (32, 32, 32)


def _healthy_maps(n: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Error maps whose healthy median and spread vary smoothly over the grid."""
    z, y, x = np.meshgrid(*[np.linspace(0, 1, s) for s in SHAPE], indexing="ij")
    median = 10.0 + 30.0 * x  # the network finds the right side hard
    spread = 2.0 + 6.0 * z
    rng = np.random.default_rng(seed)
    maps = [(median + spread * rng.normal(size=SHAPE)).astype(np.float32) for _ in range(n)]
    return maps, median, spread


def test_statistics_recover_the_healthy_median_and_spread() -> None:
    maps, median, spread = _healthy_maps(12)
    calibration = fit_calibration(maps, [f"c{i}" for i in range(12)], CalibrationConfig(factor=4))
    assert calibration.median_mm.shape == (8, 8, 8) and calibration.grid_shape == SHAPE
    inner = (slice(4, 28),) * 3  # away from the edges where smoothing pads
    fitted_median = upsample_to_grid(calibration.median_mm, calibration.config, SHAPE)
    fitted_spread = upsample_to_grid(calibration.spread_mm, calibration.config, SHAPE)
    assert np.abs(fitted_median - median)[inner].mean() < 1.0  # mm, against a 30 mm range
    assert np.abs(fitted_spread / spread - 1.0)[inner].mean() < 0.15


def test_z_of_a_new_healthy_scan_is_standard_and_a_lesion_stands_out() -> None:
    maps, median, spread = _healthy_maps(12)
    calibration = fit_calibration(maps, [str(i) for i in range(12)])
    new_scan = _healthy_maps(1, seed=99)[0][0]
    lesion = (slice(4, 8), slice(12, 16), slice(4, 8))
    new_scan[lesion] += 5.0 * spread[lesion]
    z = z_map(new_scan, calibration)
    healthy = np.ones(SHAPE, bool)
    healthy[lesion] = False
    assert abs(float(np.median(z[healthy]))) < 0.15
    assert 0.85 < float(np.std(z[healthy])) < 1.2
    assert float(np.median(z[lesion])) > 4.0
    # the raw error map would rank this lesion below healthy voxels on the hard right side
    assert float(np.median(new_scan[lesion])) < float(np.percentile(new_scan[healthy], 90))
    # default overlay threshold: the 99th percentile of a standard normal is 2.33
    assert 2.0 < calibration.overlay_threshold_z < 2.8


def test_linear_statistics_are_reproduced_exactly_where_they_were_measured() -> None:
    # a ramp has median = ramp; trilinear upsampling of a ramp is the ramp: checks the half-voxel alignment
    ramp = np.broadcast_to(np.arange(SHAPE[2], dtype=np.float32), SHAPE)
    maps = [ramp + offset for offset in (-1.0, 0.0, 1.0)]
    config = CalibrationConfig(factor=4, samples_per_axis=1, smoothing_voxels=0.0)
    calibration = fit_calibration(maps, ["a", "b", "c"], config)
    fitted = upsample_to_grid(calibration.median_mm, config, SHAPE)
    first, last = config.block_centre, 4 * 7 + config.block_centre  # outermost coarse centres
    inside = (np.arange(SHAPE[2]) >= first) & (np.arange(SHAPE[2]) <= last)
    np.testing.assert_allclose(fitted[..., inside], ramp[..., inside], atol=1e-4)
    np.testing.assert_allclose(fitted[..., 0], first, atol=1e-4)  # edge values held beyond the centres


def test_spread_floor_keeps_z_finite_where_healthy_errors_are_equal() -> None:
    maps = [np.full(SHAPE, 5.0, np.float32) for _ in range(4)]
    config = CalibrationConfig(min_spread_mm=0.5)
    calibration = fit_calibration(maps, list("abcd"), config)
    assert float(calibration.spread_mm.min()) == 0.5
    z = z_map(np.full(SHAPE, 6.0, np.float32), calibration)
    np.testing.assert_allclose(z, 2.0, atol=1e-5)


def test_head_masks_restrict_the_threshold_to_head_voxels() -> None:
    maps, _, _ = _healthy_maps(6)
    head = np.zeros(SHAPE, bool)
    head[8:24, 8:24, 8:24] = True
    outside_outlier = [m.copy() for m in maps]
    for m in outside_outlier:
        m[~head] = 500.0 + 100 * np.random.default_rng(1).normal(size=int((~head).sum()))
    with_mask = fit_calibration(outside_outlier, list("abcdef"), head_masks=[head] * 6)
    assert 2.0 < with_mask.overlay_threshold_z < 4.5


def test_block_samples_pick_the_documented_voxels() -> None:
    values = np.arange(8**3, dtype=np.float32).reshape(8, 8, 8)
    config = CalibrationConfig(factor=4, samples_per_axis=2)
    assert list(config.sample_offsets) == [1, 3]
    samples = block_samples(values, config)
    assert samples.shape == (8, 2, 2, 2)
    assert samples[0, 0, 0, 0] == values[1, 1, 1] and samples[-1, 1, 1, 1] == values[7, 7, 7]
    # a grid that is not a multiple of the factor is padded with its edge values
    assert block_samples(np.ones((9, 8, 8), np.float32), config).shape == (8, 3, 2, 2)


def test_nan_voxels_are_ignored() -> None:
    maps, _, _ = _healthy_maps(5)
    maps[0][:, :, :4] = np.nan
    calibration = fit_calibration(maps, list("abcde"))
    assert np.isfinite(calibration.median_mm).all() and np.isfinite(calibration.spread_mm).all()


def test_too_few_scans_or_mismatched_grids_are_refused() -> None:
    maps, _, _ = _healthy_maps(3)
    with pytest.raises(PPRError, match="at least 3 healthy scans"):
        fit_calibration(maps[:2], ["a", "b"])
    with pytest.raises(PPRError, match="differ in shape"):
        fit_calibration(maps[:2] + [np.zeros((16, 16, 16))], list("abc"))
    calibration = fit_calibration(maps, list("abc"))
    with pytest.raises(PPRError, match="recalibrate"):
        z_map(np.zeros((16, 16, 16)), calibration)


def test_save_and_load_round_trip(tmp_path) -> None:
    maps, _, _ = _healthy_maps(4)
    config = CalibrationConfig(factor=2, smoothing_voxels=1.5)
    calibration = fit_calibration(maps, ["ctich_054", "ctich_056", "ctich_057", "ctich_100"], config)
    path = save_calibration(calibration, tmp_path / "calibration.npz")
    loaded = load_calibration(path)
    np.testing.assert_array_equal(loaded.median_mm, calibration.median_mm)
    np.testing.assert_array_equal(loaded.spread_mm, calibration.spread_mm)
    assert loaded.config == config and loaded.factor == 2
    assert loaded.grid_shape == SHAPE and loaded.n_scans == 4
    assert loaded.case_names == ("ctich_054", "ctich_056", "ctich_057", "ctich_100")
    assert loaded.overlay_threshold_z == calibration.overlay_threshold_z
    np.testing.assert_array_equal(z_map(maps[0], loaded), z_map(maps[0], calibration))


def test_missing_or_corrupt_file_raises_bundle_error(tmp_path) -> None:
    with pytest.raises(BundleError, match="ppr calibrate"):
        load_calibration(tmp_path / "calibration.npz")
    (tmp_path / "calibration.npz").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="not a readable calibration"):
        load_calibration(tmp_path / "calibration.npz")


def test_robust_statistics_equal_numpy_nanmedian_with_gaps() -> None:
    from ppr.statistics.calibration import robust_statistics

    rng = np.random.default_rng(4)
    samples = rng.normal(size=(9, 5, 6)).astype(np.float32)
    samples[rng.random(samples.shape) < 0.3] = np.nan
    samples[:, 0, 0] = np.nan  # a place no scan measured
    median, spread, count = robust_statistics(samples)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns on the all-NaN column
        expected = np.nanmedian(samples, axis=0)
        expected_mad = np.nanmedian(np.abs(samples - expected), axis=0) * 1.4826
    np.testing.assert_allclose(median, expected, rtol=1e-6, equal_nan=True)
    np.testing.assert_allclose(spread, expected_mad, rtol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(count, (~np.isnan(samples)).sum(axis=0))
