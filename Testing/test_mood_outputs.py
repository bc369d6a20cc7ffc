"""MOOD challenge outputs: file names, shape and geometry, [0, 1] scores from a fixed monotone map."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import average_precision_score

from ppr.statistics.calibration import CalibrationConfig, fit_calibration
from ppr.workflows.mood import MoodNormalisation, mood_file_names, write_mood_outputs


def _input_like_map(values: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.SetSpacing((0.45, 0.45, 5.0))
    image.SetOrigin((-115.0, -98.5, 12.0))
    image.SetDirection((1, 0, 0, 0, -1, 0, 0, 0, 1))
    return image


def test_pixel_and_sample_files_follow_mood_naming_and_geometry(tmp_path) -> None:
    rng = np.random.default_rng(0)
    error_map = _input_like_map(rng.gamma(2.0, 10.0, (6, 20, 24)))
    outputs = write_mood_outputs(error_map, 35.0, tmp_path, "00042.nii.gz", MoodNormalisation("mm", half=20.0))
    assert outputs.pixel_path == tmp_path / "00042.nii.gz"
    assert outputs.sample_path == tmp_path / "00042.nii.gz.txt"
    written = sitk.ReadImage(str(outputs.pixel_path))
    assert written.GetSize() == error_map.GetSize()
    assert written.GetSpacing() == pytest.approx(error_map.GetSpacing())
    assert written.GetOrigin() == pytest.approx(error_map.GetOrigin())
    assert written.GetDirection() == pytest.approx(error_map.GetDirection())
    values = sitk.GetArrayFromImage(written)
    raw = sitk.GetArrayFromImage(error_map)
    np.testing.assert_allclose(values, raw / (raw + 20.0), rtol=1e-6)
    assert 0.0 <= values.min() and values.max() < 1.0
    # MOOD reads the first line with float()
    assert float(outputs.sample_path.read_text().splitlines()[0]) == pytest.approx(35.0 / 55.0)


def test_file_names_without_extension_and_bad_names() -> None:
    assert mood_file_names("ctich_051") == ("ctich_051.nii.gz", "ctich_051.txt")
    assert mood_file_names("a.nii") == ("a.nii", "a.nii.txt")
    with pytest.raises(ValueError):
        mood_file_names("../escape")


def test_normalisation_is_fixed_across_cases_so_pooled_ap_is_kept() -> None:
    # a healthy case (low errors) and a lesion case: per-case min-max would put both maxima at 1
    rng = np.random.default_rng(1)
    healthy = rng.gamma(2.0, 8.0, 4000)
    lesion_case = rng.gamma(2.0, 8.0, 4000)
    lesion_case[:200] += 60.0
    labels = np.r_[np.zeros(4000), np.r_[np.ones(200), np.zeros(3800)]]
    raw = np.r_[healthy, lesion_case]
    normalise = MoodNormalisation("mm", half=20.0)
    fixed = np.r_[normalise(healthy), normalise(lesion_case)]
    per_case = np.r_[[(c - c.min()) / (c.max() - c.min()) for c in (healthy, lesion_case)]].ravel()
    assert average_precision_score(labels, fixed) == pytest.approx(average_precision_score(labels, raw), abs=1e-12)
    assert average_precision_score(labels, per_case) < average_precision_score(labels, raw) - 0.01


def test_normalisations_are_strictly_increasing_into_zero_one() -> None:
    values = np.linspace(-50.0, 400.0, 2001)
    for normalise in (MoodNormalisation("mm", half=15.0), MoodNormalisation("z", centre=3.0, width=2.0)):
        mapped = normalise(values)
        assert mapped.min() >= 0.0 and mapped.max() <= 1.0
        inside = values >= 0.0 if normalise.kind == "mm" else np.abs(values - 3.0) < 30.0
        assert np.all(np.diff(mapped[inside]) > 0)
    assert MoodNormalisation("mm", half=15.0)(np.array([15.0]))[0] == 0.5
    assert MoodNormalisation("z", centre=3.0)(np.array([3.0, np.nan, np.inf]))[0] == 0.5
    assert list(MoodNormalisation("z", centre=3.0)(np.array([np.nan, np.inf]))) == [0.0, 1.0]
    assert list(MoodNormalisation("mm")(np.array([np.nan, -4.0, np.inf]))) == [0.0, 0.0, 1.0]


def test_z_normalisation_is_centred_on_the_calibration_threshold() -> None:
    rng = np.random.default_rng(2)
    maps = [rng.normal(20.0, 3.0, (16, 16, 16)).astype(np.float32) for _ in range(4)]
    calibration = fit_calibration(maps, list("abcd"), CalibrationConfig(factor=2))
    normalise = MoodNormalisation.for_z(calibration)
    assert normalise.centre == calibration.overlay_threshold_z
    assert normalise(np.array([calibration.overlay_threshold_z]))[0] == pytest.approx(0.5)


def test_nan_voxels_become_zero_and_non_finite_sample_is_refused(tmp_path) -> None:
    values = np.full((3, 4, 5), 10.0)
    values[0] = np.nan
    outputs = write_mood_outputs(_input_like_map(values), 1.0, tmp_path, "case")
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs.pixel_path)))
    assert (written[0] == 0).all() and written[1:].min() == pytest.approx(10.0 / 30.0)
    with pytest.raises(ValueError, match="finite"):
        write_mood_outputs(_input_like_map(values), float("nan"), tmp_path, "case")


def test_error_maps_are_normalised_around_their_own_unit():
    """An autoencoder residual (~0.05) must not be squeezed by the mm scale (half 20 mm)."""
    from ppr.workflows.mood import MoodNormalisation

    residual = MoodNormalisation.for_error("intensity")
    position = MoodNormalisation.for_error("mm")
    assert residual(np.array([0.05]))[0] == pytest.approx(0.5)
    assert position(np.array([20.0]))[0] == pytest.approx(0.5)
    values = np.array([0.0, 0.01, 0.05, 0.2, 1.0])
    assert np.all(np.diff(residual(values)) > 0)  # strictly increasing: no new ties
    with pytest.raises(ValueError):
        MoodNormalisation.for_error("hu")
