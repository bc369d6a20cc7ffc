"""The preprocessing pipeline on synthetic heads: reading, grids, model space, intensities, way back."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.config import PreprocessConfig
from ppr.image.geometry import IDENTITY_DIRECTION, Grid, isotropic_grid, resample_isotropic
from ppr.image.imageio import read_image, write_image
from ppr.image.intensity import EqualisationCurve, normalize
from ppr.image.masks import head_mask
from ppr.image.preprocess import intensity_anchor, prepare_reference, to_input_space, to_model_space
from synthetic_heads import make_head_to_physical, oblique_direction, synthetic_head

CONFIG = PreprocessConfig(size=80, spacing_mm=2.5)
STEPS = {"read", "validate", "resample", "register", "place", "intensity", "masks"}


@pytest.fixture(scope="module")
def head() -> sitk.Image:
    # Away from the physical origin, as scanners place heads.
    return synthetic_head(size=(90, 90, 40), spacing=(2.2, 2.2, 5.0),
                          head_to_physical=make_head_to_physical(translation_mm=(-30.0, 120.0, 60.0)))


@pytest.fixture(scope="module")
def reference(head) -> sitk.Image:
    return prepare_reference(head, CONFIG)


def test_reference_is_on_the_model_grid_centred_on_the_head_in_windowed_hu(head, reference):
    grid = Grid.of(reference)
    assert grid.size == (80, 80, 80)
    assert grid.spacing == (2.5, 2.5, 2.5)
    assert grid.direction == IDENTITY_DIRECTION
    assert reference.GetPixelID() == sitk.sitkFloat32
    # The head is centred: its foreground centroid is at the grid centre, within a voxel.
    statistics = sitk.LabelShapeStatisticsImageFilter()
    statistics.Execute(head_mask(reference, CONFIG.window_hu))
    assert np.linalg.norm(np.subtract(statistics.GetCentroid(1), grid.center_mm())) < 2.5
    # HU clipped to the window: brain (28-40 HU) in the middle of the head, air at the window's floor.
    values = sitk.GetArrayViewFromImage(reference)
    brain_point = reference.TransformPhysicalPointToIndex(head.TransformIndexToPhysicalPoint((45, 45, 18)))
    assert 20.0 < values[brain_point[::-1]] < 45.0
    assert values[0, 0, 0] == pytest.approx(CONFIG.window_hu[0])
    assert values.max() <= CONFIG.window_hu[1]


def test_model_space_volume_is_normalised_masked_and_timed(head, reference):
    moved = synthetic_head(
        size=(100, 100, 40), spacing=(2.0, 2.0, 5.0), direction=oblique_direction((0.0, 5.0, -15.0)),
        head_to_physical=make_head_to_physical((5.0, 0.0, -10.0), (-36.0, 128.0, 60.0)),
    )
    result = to_model_space(moved, reference, CONFIG)
    assert Grid.of(result.volume) == Grid.of(reference)
    assert Grid.of(result.head_mask) == Grid.of(reference)
    assert result.volume.GetPixelID() == sitk.sitkFloat32
    assert result.head_mask.GetPixelID() == sitk.sitkUInt8
    volume = sitk.GetArrayViewFromImage(result.volume)
    inside = sitk.GetArrayViewFromImage(result.head_mask).astype(bool)
    assert volume.min() >= 0.0 and volume.max() <= 1.0
    assert np.all(volume[~inside] == 0.0)
    # Equalised with the reference head's curve: the moved head (same anatomy) reads as the
    # reference does under it, and its brain needed almost no shift.
    anchor = intensity_anchor(reference, CONFIG)
    reference_head = sitk.GetArrayViewFromImage(head_mask(reference, CONFIG.window_hu)).astype(bool)
    reference_median = np.median(anchor.curve.apply(sitk.GetArrayViewFromImage(reference)[reference_head]))
    assert np.median(volume[inside]) == pytest.approx(reference_median, abs=0.1)
    assert abs(result.brain_shift_hu) < 2.0
    # The head mask is about the head's volume (analytic scalp ellipsoid 72 x 90 x 80 mm: 2.17 l,
    # plus the part of neck and face in the grid).
    head_ml = inside.sum() * CONFIG.spacing_mm**3 / 1000.0
    assert 2000.0 < head_ml < 3200.0
    assert set(result.seconds) == STEPS and set(result.cpu_seconds) == STEPS
    assert all(value >= 0.0 for value in result.seconds.values())
    assert all(value >= 0.0 for value in result.cpu_seconds.values())
    assert result.seconds["register"] == pytest.approx(result.registration.seconds, rel=0.2, abs=0.05)


def test_to_model_space_reads_a_path_and_times_reading(head, reference, tmp_path):
    path = tmp_path / "head.nrrd"
    write_image(head, path)
    result = to_model_space(path, reference, CONFIG)
    assert result.seconds["read"] > 0.0
    # The reference itself comes back to the identity (up to the registration's accuracy).
    assert np.allclose(result.registration.transform.GetParameters()[:3], 0.0, atol=np.deg2rad(0.5))
    assert np.allclose(result.registration.transform.GetParameters()[3:], 0.0, atol=0.5)


def test_wrong_reference_grid_is_refused(head):
    other = prepare_reference(head, PreprocessConfig(size=64, spacing_mm=3.0))
    with pytest.raises(ValueError, match="prepare_reference"):
        to_model_space(head, other, CONFIG)


def test_equalisation_off_maps_the_window_linearly():
    values = np.array([[[-1000.0, -20.0, 40.0, 100.0, 400.0]]], dtype=np.float32)
    image = sitk.GetImageFromArray(values)
    mask = sitk.GetImageFromArray(np.array([[[0, 1, 1, 1, 1]]], dtype=np.uint8))
    out = sitk.GetArrayFromImage(normalize(image, mask, PreprocessConfig(equalize=False)))
    assert out.ravel().tolist() == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.0])


def test_equalisation_flattens_the_head_histogram():
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(30, 5, 20000), rng.normal(90, 3, 5000)]).astype(np.float32)
    image = sitk.GetImageFromArray(values.reshape(25, 40, 25))
    mask = sitk.GetImageFromArray(np.ones((25, 40, 25), dtype=np.uint8))
    out = sitk.GetArrayFromImage(normalize(image, mask, PreprocessConfig(equalize_over="scan"))).ravel()
    # A uniform distribution on [0, 1]: every decile holds about a tenth of the voxels.
    counts, _ = np.histogram(out, bins=10, range=(0.0, 1.0))
    assert counts.min() > 0.07 * out.size and counts.max() < 0.13 * out.size


def test_reference_curve_is_the_same_for_every_scan_and_the_brain_shift_is_applied_before_it():
    rng = np.random.default_rng(4)
    reference_values = np.concatenate([rng.normal(35, 5, 20000), rng.normal(95, 3, 5000)]).astype(np.float32)
    curve = EqualisationCurve.of(reference_values)
    # A scan with half the brain of the reference (a cut field of view) and 12 HU darker.
    scan = np.concatenate([rng.normal(23, 5, 10000), rng.normal(95, 3, 5000)]).astype(np.float32)
    image = sitk.GetImageFromArray(scan.reshape(15, 40, 25))
    mask = sitk.GetImageFromArray(np.ones((15, 40, 25), dtype=np.uint8))
    out = sitk.GetArrayFromImage(normalize(image, mask, CONFIG, curve, shift_hu=12.0)).ravel()
    # Its brain lands where the reference's brain lands under the same curve, not where its own
    # histogram would put it.
    assert np.median(out[:10000]) == pytest.approx(np.median(curve.apply(reference_values[:20000])), abs=0.03)
    own = sitk.GetArrayFromImage(normalize(image, mask, PreprocessConfig(size=80, spacing_mm=2.5, equalize_over="scan"))).ravel()
    assert abs(np.median(own[:10000]) - np.median(out[:10000])) > 0.05
    with pytest.raises(ValueError, match="curve"):
        normalize(image, mask, CONFIG)


def test_isotropic_resampling_keeps_the_box_and_physical_positions():
    image = synthetic_head(size=(90, 90, 30), spacing=(2.2, 2.2, 6.0),
                           direction=oblique_direction((5.0, 3.0, 30.0)))
    grid = isotropic_grid(image, 3.0)
    assert grid.spacing == (3.0, 3.0, 3.0) and grid.direction == Grid.of(image).direction
    assert grid.size == (66, 66, 60)
    resampled = resample_isotropic(image, 3.0, default_value=-1000.0)
    # The head's centroid stays where it was in physical space.
    centroids = []
    for im in (image, resampled):
        statistics = sitk.LabelShapeStatisticsImageFilter()
        statistics.Execute(head_mask(im, (-20.0, 100.0)))
        centroids.append(np.asarray(statistics.GetCentroid(1)))
    assert np.linalg.norm(centroids[0] - centroids[1]) < 1.0


def test_to_input_space_gives_the_input_grid_exactly(reference):
    scan = synthetic_head(size=(70, 60, 20), spacing=(2.7, 2.9, 7.0), origin=(-90, -80, -60),
                          direction=oblique_direction((-12.0, 8.0, 40.0)))
    transform = make_head_to_physical((3.0, -2.0, 7.0), (4.0, 1.0, -3.0))
    back = to_input_space(reference, transform, scan, default_value=-1024.0)
    assert Grid.of(back) == Grid.of(scan)
    # A voxel of the input maps to the model point the inverse transform says.
    index = (35, 30, 10)
    model_point = transform.GetInverse().TransformPoint(scan.TransformIndexToPhysicalPoint(index))
    expected = reference.EvaluateAtPhysicalPoint(model_point, sitk.sitkLinear)
    assert back[index] == pytest.approx(expected, abs=1e-3)


def test_dicom_series_folder_is_read_with_its_geometry(tmp_path):
    head = synthetic_head(size=(64, 64, 16), spacing=(3.0, 3.0, 6.0), origin=(-95.0, -100.0, -40.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.99"
    for k in range(head.GetDepth()):
        slice_image = head[:, :, k]
        position = head.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0020|000e": series_uid,
            "0020|000d": series_uid + ".1",
            "0008|0060": "CT",
            "0020|0032": "\\".join(f"{v:.4f}" for v in position),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": "6.0",
            "0020|0013": str(k + 1),
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(slice_image)
    image = read_image(tmp_path)
    assert image.GetSize() == (64, 64, 16)
    assert np.allclose(image.GetSpacing(), (3.0, 3.0, 6.0), atol=1e-3)
    assert np.allclose(image.GetOrigin(), head.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(head))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_file_formats_round_trip(suffix, tmp_path):
    head = synthetic_head(size=(40, 40, 12), spacing=(4.0, 4.0, 8.0), direction=oblique_direction())
    path = tmp_path / f"head{suffix}"
    write_image(head, path)
    image = read_image(path)
    assert Grid.of(image).size == Grid.of(head).size
    assert np.allclose(image.GetDirection(), head.GetDirection(), atol=1e-5)
    assert np.allclose(image.GetOrigin(), head.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(head))
