"""Detection with a calibrated bundle: the z-map has the input's grid, regions are aggregates of the
z-map inside the masks, the most anomalous point is the highest z inside brain and skull, the CLI
writes the z-map and reports it; ``--no-calibration`` and uncalibrated bundles keep the mm path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ppr.__main__ import main
from ppr.workflows.bundle import CALIBRATION, load_bundle, save_bundle, write_checksums
from ppr.statistics.calibration import CalibrationConfig, aggregate, fit_calibration, save_calibration, z_map
from ppr.cli.detect import z_map_path
from ppr.config import PreprocessConfig
from ppr.workflows.detection import DetectOptions, detect
from ppr.image.geometry import to_input_space
from ppr.networks.network import PPRNet
from ppr.image.preprocess import prepare_reference
from synthetic_heads import make_head_to_physical, oblique_direction, synthetic_head

CONFIG = PreprocessConfig(size=40, spacing_mm=6.0)
HEALTHY_MEDIAN_MM, HEALTHY_SPREAD_MM = 20.0, 3.0


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    """The same tiny untrained network twice: without and with a calibration of fake healthy maps."""
    torch.manual_seed(0)
    reference = prepare_reference(synthetic_head(size=(80, 80, 36), spacing=(2.6, 2.6, 5.0)), CONFIG)
    folder = tmp_path_factory.mktemp("bundles")
    plain = save_bundle(folder / "plain", PPRNet(m=2), CONFIG, reference, {"cases": ["synthetic"], "steps": 0})
    calibrated = Path(shutil.copytree(plain, folder / "calibrated"))
    rng = np.random.default_rng(0)
    # The healthy error grows along z, so z-scores differ from a plain rescaling of the error.
    ramp = np.linspace(0.0, 10.0, CONFIG.size, dtype=np.float32)[:, None, None]
    maps = [rng.normal(HEALTHY_MEDIAN_MM, HEALTHY_SPREAD_MM, (CONFIG.size,) * 3).astype(np.float32) + ramp
            for _ in range(3)]
    calibration = fit_calibration(maps, ["a", "b", "c"], CalibrationConfig(factor=4, samples_per_axis=2))
    save_calibration(calibration, calibrated / CALIBRATION)
    write_checksums(calibrated)
    return plain, calibrated


@pytest.fixture(scope="module")
def scan() -> sitk.Image:
    """Oblique, anisotropic, off-centre, with a lesion."""
    return synthetic_head(size=(70, 84, 30), spacing=(2.9, 2.5, 5.5), direction=oblique_direction((4.0, -3.0, 12.0)),
                          head_to_physical=make_head_to_physical((3.0, 0.0, 8.0), (15.0, -240.0, 300.0)),
                          lesion_center_mm=(25.0, 10.0, 20.0), lesion_radius_mm=12.0)


@pytest.fixture(scope="module")
def calibrated_result(bundles, scan):
    bundle = load_bundle(bundles[1])
    return bundle, detect(scan, bundle, DetectOptions(stride=2, device="cpu", tile=16))


def _same_grid(image: sitk.Image, scan: sitk.Image) -> None:
    assert image.GetSize() == scan.GetSize()
    assert image.GetOrigin() == scan.GetOrigin()
    assert image.GetSpacing() == scan.GetSpacing()
    assert image.GetDirection() == scan.GetDirection()


@pytest.mark.slow  # builds the module's detection (~15 s on 2 shared cores)
def test_the_z_map_is_the_calibrated_error_inside_the_head_on_the_input_grid(calibrated_result, scan):
    bundle, result = calibrated_result
    assert result.score_map == "z"
    errors = sitk.GetArrayFromImage(result.error_map_model)
    # z is computed on the measured head only (the head less places whose patch meets a cut of the
    # scan's box: ppr.image.field_of_view); it is 0 elsewhere.
    head = sitk.GetArrayFromImage(result.measured_mask_model) > 0
    expected = np.where(head, z_map(errors, bundle.calibration), 0.0)
    np.testing.assert_allclose(sitk.GetArrayFromImage(result.z_map_model), expected, atol=1e-5)
    # The healthy median is ~20-30 mm here, so an untrained network's error gives z far from 0.
    assert np.abs(expected[head]).mean() > 1.0

    z_input = result.z_map_input
    _same_grid(z_input, scan)
    assert z_input.GetPixelID() == sitk.sitkFloat32
    # The z-map goes to the input grid exactly as the error map does: linear, through the registration.
    reference = to_input_space(result.z_map_model, result.registration.transform, scan, 0.0)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(z_input), sitk.GetArrayViewFromImage(reference), atol=1e-5)
    # 0 in the air around the head, like the error map.
    air = sitk.GetArrayViewFromImage(result.error_map_input) == 0
    assert air.mean() > 0.2 and np.all(sitk.GetArrayViewFromImage(z_input)[air] == 0)


def test_regions_are_aggregates_of_the_z_map_inside_the_masks(calibrated_result):
    bundle, result = calibrated_result
    z = sitk.GetArrayFromImage(result.z_map_model)
    head = sitk.GetArrayFromImage(result.measured_mask_model) > 0
    assert set(result.regions) == set(bundle.region_masks)
    for name, region in bundle.region_masks.items():
        assert result.regions[name] == pytest.approx(aggregate(z[region & head], "percentile", p=99.0)), name
    assert result.z == pytest.approx({"max": float(z[head].max()), "p99": float(np.percentile(z[head], 99.0)),
                                      "mean": float(z[head].mean())})
    assert result.overlay_threshold_z == pytest.approx(bundle.calibration.overlay_threshold_z)
    errors = sitk.GetArrayFromImage(result.error_map_model)
    whole_head = sitk.GetArrayFromImage(result.head_mask_model) > 0  # the error map and its summary: whole head
    assert result.error_mm["max"] == pytest.approx(float(errors[whole_head].max()))
    assert "z_map" in result.seconds


def test_input_space_maps_never_exceed_their_head_summaries(calibrated_result):
    # Linear resampling only mixes model voxels, and outside the head both maps are 0.
    _, result = calibrated_result
    assert sitk.GetArrayViewFromImage(result.error_map_input).max() <= result.error_mm["max"] * (1 + 1e-6)
    assert sitk.GetArrayViewFromImage(result.z_map_input).max() <= max(result.z["max"], 0.0) + 1e-5


def test_the_most_anomalous_point_is_the_highest_z_inside_brain_and_skull(calibrated_result, scan):
    bundle, result = calibrated_result
    head = sitk.GetArrayFromImage(result.measured_mask_model) > 0
    focus = (bundle.region_masks["left_hemisphere"] | bundle.region_masks["right_hemisphere"]
             | bundle.region_masks["skull"]) & head
    assert focus.any()
    model_point = result.registration.transform.GetInverse().TransformPoint(result.max_error_lps)
    index = result.z_map_model.TransformPhysicalPointToIndex(model_point)
    assert focus[index[2], index[1], index[0]], "the point is not in brain or skull"

    focus_image = sitk.GetImageFromArray(focus.astype(np.uint8))
    focus_image.CopyInformation(result.z_map_model)
    focus_input = sitk.GetArrayViewFromImage(to_input_space(focus_image, result.registration.transform, scan, 0,
                                                            sitk.sitkNearestNeighbor)) > 0
    z_input = result.z_map_input
    i, j, k = z_input.TransformPhysicalPointToIndex(result.max_error_lps)
    z_values = sitk.GetArrayViewFromImage(z_input)
    assert z_values[k, j, i] == pytest.approx(z_values[focus_input].max())
    assert np.allclose(z_input.TransformIndexToPhysicalPoint((i, j, k)), result.max_error_lps)


@pytest.mark.slow
def test_cli_writes_the_z_map_beside_the_error_map_and_reports_it(bundles, scan, tmp_path, capsys):
    source = tmp_path / "scan.nii.gz"
    sitk.WriteImage(scan, str(source))
    out = tmp_path / "errors.nii.gz"
    code = main(["detect", str(source), "--model", str(bundles[1]), "--out", str(out), "--stride", "4",
                 "--device", "cpu", "--tile", "16", "--aggregate", "max", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    calibration = load_bundle(bundles[1]).calibration
    assert report["score_map"] == "z" and report["aggregate"] == "max"
    assert report["overlay_threshold"] == pytest.approx(calibration.overlay_threshold_z)
    assert report["z_map"] == str((tmp_path / "errors_z.nii.gz").resolve())
    written = sitk.ReadImage(report["z_map"])
    assert written.GetSize() == scan.GetSize()
    assert np.allclose(written.GetOrigin(), scan.GetOrigin(), atol=1e-3)
    assert np.allclose(written.GetDirection(), scan.GetDirection(), atol=1e-5)
    z = sitk.GetArrayViewFromImage(written)
    assert set(report["z"]) == {"max", "p99", "mean"}
    assert z.max() <= max(report["z"]["max"], 0.0) + 1e-4
    # max aggregate: the whole head's score is the z summary's max.
    assert report["regions"]["head"] == pytest.approx(report["z"]["max"])
    assert set(report["error_mm"]) == {"max", "p99", "mean"}
    assert sitk.ReadImage(str(out)).GetSize() == scan.GetSize()


@pytest.mark.slow
def test_cli_without_calibration_keeps_the_mm_path(bundles, scan, tmp_path, capsys):
    source = tmp_path / "scan.nii.gz"
    sitk.WriteImage(scan, str(source))
    reports = {}
    for name, extra in (("plain", [str(bundles[0])]), ("forced", [str(bundles[1]), "--no-calibration"])):
        out = tmp_path / name / "errors.nii.gz"
        code = main(["detect", str(source), "--model", *extra, "--out", str(out), "--stride", "4",
                     "--device", "cpu", "--tile", "16", "--json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        reports[name] = json.loads(captured.out.strip().splitlines()[-1])
        assert sorted(p.name for p in out.parent.iterdir()) == ["errors.nii.gz"]
    for report in reports.values():
        assert report["score_map"] == "mm"
        assert report["z_map"] is None and report["z"] is None and report["overlay_threshold"] is None
        # mm scores: the whole head's p99 lies within the error's range over the head.
        assert 0 < report["regions"]["head"] <= report["error_mm"]["max"]
    # The same network and scan: ignoring the calibration gives the uncalibrated bundle's numbers.
    assert reports["forced"]["regions"] == pytest.approx(reports["plain"]["regions"], rel=1e-4)


def test_z_map_path_is_beside_the_error_map_unless_given():
    assert z_map_path(Path("/a/errors.nii.gz")) == Path("/a/errors_z.nii.gz")
    assert z_map_path(Path("/a/errors.nii")) == Path("/a/errors_z.nii.gz")
    assert z_map_path(Path("/a/map.nrrd")) == Path("/a/map_z.nii.gz")
    assert z_map_path(Path("/a/errors.nii.gz"), Path("/b/z.nrrd")) == Path("/b/z.nrrd")
