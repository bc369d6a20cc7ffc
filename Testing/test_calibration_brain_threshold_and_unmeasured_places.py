"""Calibration: the overlay threshold comes from brain and skull, and places no healthy scan measured
have no z (0), not a z against the statistics of elsewhere."""

from __future__ import annotations

import numpy as np

from ppr.statistics.calibration import CalibrationConfig, fit_calibration, load_calibration, save_calibration, z_map

SHAPE = (32, 32, 32)


def _scans(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Healthy error maps in a head that covers z < 24 only; the 'neck' (x < 8) has errors that vary
    far less than the rest, the way a face and neck do for a position network."""
    rng = np.random.default_rng(seed)
    head = np.zeros(SHAPE, dtype=bool)
    head[:24] = True
    maps = []
    for _ in range(n):
        values = 20.0 + 4.0 * rng.normal(size=SHAPE)
        values[:, :, :8] = 5.0 + 1.0 * rng.standard_t(1.5, size=(32, 32, 8))  # heavy tails, small spread
        maps.append(np.where(head, values, 0.0).astype(np.float32))
    return maps, [head] * n


def test_places_no_scan_measured_have_z_zero_and_measured_places_keep_their_z() -> None:
    maps, heads = _scans(5)
    calibration = fit_calibration(maps, [f"c{i}" for i in range(5)], CalibrationConfig(factor=4), heads)
    assert calibration.scan_count is not None
    assert calibration.scan_count[:6].min() == 5 and calibration.scan_count[6:].max() == 0
    anomalous = np.full(SHAPE, 60.0, dtype=np.float32)
    z = z_map(anomalous, calibration)
    assert np.all(z[28:] == 0.0)  # beyond every calibration head: nothing is known there
    assert z[4:20, 4:28, 12:28].min() > 5.0  # 60 mm where 20 +- 4 is usual


def test_the_overlay_threshold_is_taken_over_the_threshold_mask_only() -> None:
    maps, heads = _scans(5)
    config = CalibrationConfig(factor=4, overlay_percentile=99.9)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[:24, :, 14:] = True  # away from the neck, whose statistics smoothing mixes in
    whole_head = fit_calibration(maps, [f"c{i}" for i in range(5)], config, heads)
    brain_only = fit_calibration(maps, [f"c{i}" for i in range(5)], config, heads, threshold_mask=brain)
    # The neck's heavy tails over a tiny spread push the whole-head percentile up; in the brain the
    # errors are normal, so its 99.9th percentile z is near 3.
    assert whole_head.overlay_threshold_z > brain_only.overlay_threshold_z + 1.0
    assert 2.0 < brain_only.overlay_threshold_z < 4.5


def test_scan_counts_survive_the_file_and_older_files_count_as_measured(tmp_path) -> None:
    maps, heads = _scans(4)
    calibration = fit_calibration(maps, [f"c{i}" for i in range(4)], CalibrationConfig(factor=4), heads)
    loaded = load_calibration(save_calibration(calibration, tmp_path / "calibration.npz"))
    np.testing.assert_array_equal(loaded.scan_count, calibration.scan_count)
    np.testing.assert_array_equal(loaded.measured, calibration.measured)

    with np.load(tmp_path / "calibration.npz") as data:
        version_1 = {key: data[key] for key in data.files if key != "scan_count"}
    version_1["format_version"] = np.int64(1)
    np.savez(tmp_path / "old.npz", **version_1)
    old = load_calibration(tmp_path / "old.npz")
    assert old.scan_count is None and old.measured.all()


def test_the_spread_floor_follows_the_error_unit() -> None:
    """Autoencoder residuals (intensity, ~0.05) must not be floored at the 0.5 of a map in mm."""
    rng = np.random.default_rng(3)
    maps = [(0.05 + 0.01 * rng.normal(size=SHAPE)).astype(np.float32) for _ in range(4)]
    names = [f"c{i}" for i in range(4)]
    config = CalibrationConfig(factor=4)
    as_intensity = fit_calibration(maps, names, config, unit="intensity")
    as_mm = fit_calibration(maps, names, config, unit="mm")
    assert 0.005 <= float(np.median(as_intensity.spread_mm)) < 0.02  # the real spread, ~0.01
    assert float(as_mm.spread_mm.min()) == 0.5  # the mm floor swamps it


def test_the_overlay_threshold_is_set_by_held_out_scans_not_in_sample() -> None:
    # Healthy errors vary between heads, not only between voxels: each scan has its own offset per
    # place (a coarse field) on top of voxel noise, so in-sample z (a scan against statistics it
    # helped make) are too narrow, and a threshold from them is exceeded too often by a new scan.
    rng = np.random.default_rng(11)
    shape = (32, 32, 32)

    def healthy_scan() -> np.ndarray:
        offset = np.kron(rng.normal(0.0, 6.0, (4, 4, 4)), np.ones((8, 8, 8)))
        return (30.0 + offset + rng.gamma(2.0, 2.0, shape)).astype(np.float32)

    scans = [healthy_scan() for _ in range(5)]
    calibration = fit_calibration(scans, list("abcde"), CalibrationConfig(factor=4))
    in_sample = np.percentile(np.concatenate([z_map(scan, calibration).ravel() for scan in scans]), 99)
    assert calibration.overlay_threshold_z > in_sample + 0.2
    new_scans = [z_map(healthy_scan(), calibration) for _ in range(8)]
    above = np.mean([np.mean(z >= calibration.overlay_threshold_z) for z in new_scans])
    assert 0.003 <= above <= 0.025
