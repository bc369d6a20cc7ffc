"""The intensity atlas and the anomaly map (issue 15): the atlas finds a density change where it is,
``ppr calibrate --atlas-scans`` stores it in the bundle, detection then shows the anomaly map and
keeps the position z-map as its own map, recalibrating without enough scans removes it, and
``ppr evaluate`` puts the two maps side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
import SimpleITK as sitk
import torch

from ppr.__main__ import main
from ppr.config import PreprocessConfig
from ppr.errors import PPRError
from ppr.image.preprocess import prepare_reference
from ppr.networks.network import PPRNet
from ppr.statistics.intensity_atlas import anomaly_map, fit_intensity_atlas, intensity_z_map
from ppr.workflows.bundle import load_bundle, save_bundle, sha256_file

CONFIG = PreprocessConfig(size=64, spacing_mm=4.0, prewindowed=True)
CALIBRATION_SCANS = ("ctich_056", "ctich_057", "ctich_100")
ATLAS_SCAN = "ctich_101"


def _healthy_volumes(count: int, shape=(32, 32, 32), seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Smooth 'anatomy' (one pattern) with a little noise per scan, and a ball of head in each."""
    rng = np.random.default_rng(seed)
    anatomy = scipy.ndimage.gaussian_filter(rng.random(shape).astype(np.float32), 6.0)
    anatomy = (anatomy - anatomy.min()) / (anatomy.max() - anatomy.min())
    zz, yy, xx = np.indices(shape)
    head = (zz - 16) ** 2 + (yy - 16) ** 2 + (xx - 16) ** 2 < 14 ** 2
    volumes = [np.where(head, 0.2 + 0.6 * anatomy + rng.normal(0, 0.02, shape), 0).astype(np.float32)
               for _ in range(count)]
    return volumes, [head] * count


def test_the_intensity_z_map_points_at_a_density_change_and_not_elsewhere() -> None:
    volumes, heads = _healthy_volumes(6)
    atlas = fit_intensity_atlas(volumes[:5], heads[:5], [f"h{i}" for i in range(5)], heads[0])
    scan = volumes[5].copy()
    blob = np.zeros(scan.shape, bool)
    blob[14:19, 14:19, 14:19] = True
    scan[blob] += 0.4  # denser than any healthy scan there
    z = intensity_z_map(scan, heads[5], atlas)
    assert np.mean(z[blob] >= atlas.overlay_threshold_z) > 0.7
    assert np.mean(z[heads[5] & ~scipy.ndimage.binary_dilation(blob, iterations=3)] >= atlas.overlay_threshold_z) < 0.05
    assert np.all(z[~heads[5]] == 0)
    less = volumes[5].copy()
    less[blob] -= 0.4  # less dense counts too
    assert np.mean(intensity_z_map(less, heads[5], atlas)[blob] >= atlas.overlay_threshold_z) > 0.7


def test_the_anomaly_map_is_the_intensity_z_raised_where_the_position_error_is_unusual() -> None:
    intensity = np.array([2.0, 2.0, 2.0, 0.0], np.float32)
    position = np.array([-3.0, 0.0, 6.0, 12.0], np.float32)
    np.testing.assert_allclose(anomaly_map(intensity, position, 6.0), [2.0, 2.0, 4.0, 0.0])
    with pytest.raises(ValueError):
        anomaly_map(intensity, position, 0.0)


def test_an_atlas_needs_four_scans() -> None:
    volumes, heads = _healthy_volumes(3)
    with pytest.raises(PPRError, match="at least 4 healthy scans"):
        fit_intensity_atlas(volumes, heads, ["a", "b", "c"], heads[0])


def _small_copy(source: Path, target: Path) -> str:
    sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(source)), [4, 4, 1]), str(target))
    return str(target)


@pytest.fixture(scope="module")
def bundle_and_scans(dev_data_dir: Path, tmp_path_factory) -> tuple[Path, list[str], str, Path]:
    folder = tmp_path_factory.mktemp("atlas")
    reference = prepare_reference(sitk.ReadImage(str(dev_data_dir / "ctich_054.nii.gz")), CONFIG)
    torch.manual_seed(0)
    bundle = save_bundle(folder / "bundle", PPRNet(m=2, patch_size=29), CONFIG, reference, {"cases": ["ctich_054"]})
    calibration = [_small_copy(dev_data_dir / f"{name}.nii.gz", folder / f"{name}.nii.gz") for name in CALIBRATION_SCANS]
    atlas = _small_copy(dev_data_dir / f"{ATLAS_SCAN}.nii.gz", folder / f"{ATLAS_SCAN}.nii.gz")
    return bundle, calibration, atlas, folder


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.slow
def test_calibrate_with_atlas_scans_makes_detection_show_the_anomaly_map(bundle_and_scans, dev_data_dir: Path,
                                                                         tmp_path: Path, capsys) -> None:
    bundle, calibration, atlas_scan, folder = bundle_and_scans
    code, out, err = _run(capsys, "calibrate", str(bundle), *calibration, "--atlas-scans", atlas_scan,
                          "--device", "cpu", "--stride", "4", "--json")
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["intensity_atlas"]["n_scans"] == 4 and report["intensity_atlas"]["overlay_threshold"] > 0
    checksums = json.loads((bundle / "checksums.json").read_text())["files"]
    assert checksums["intensity_atlas.npz"] == sha256_file(bundle / "intensity_atlas.npz")
    loaded = load_bundle(bundle)
    assert loaded.intensity_atlas.n_scans == 4
    assert loaded.intensity_atlas.case_names == (*CALIBRATION_SCANS, ATLAS_SCAN)

    scan = _small_copy(dev_data_dir / "ctich_051.nii.gz", tmp_path / "ctich_051.nii.gz")
    out_path = tmp_path / "errors.nii.gz"
    code, out, err = _run(capsys, "detect", scan, "--model", str(bundle), "--out", str(out_path),
                          "--stride", "4", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["shown_map"] == "anomaly"
    assert result["overlay_threshold"] == pytest.approx(loaded.intensity_atlas.overlay_threshold_z)
    assert result["position_overlay_threshold"] == pytest.approx(loaded.calibration.overlay_threshold_z)
    assert Path(result["position_z_map"]) == (tmp_path / "errors_position_z.nii.gz").resolve()
    shown, position, source = (sitk.ReadImage(p) for p in (result["z_map"], result["position_z_map"], scan))
    for image in (shown, position):  # both on the input's own grid
        assert image.GetSize() == source.GetSize() and image.GetOrigin() == source.GetOrigin()
        assert image.GetDirection() == source.GetDirection()
    assert not np.array_equal(sitk.GetArrayViewFromImage(shown), sitk.GetArrayViewFromImage(position))
    assert sitk.GetArrayViewFromImage(shown).min() >= 0  # |z| raised, never below 0

    # Recalibrated with too few scans for an atlas: the old atlas goes, the position z-map is shown.
    code, out, err = _run(capsys, "calibrate", str(bundle), *calibration, "--device", "cpu", "--stride", "4")
    assert code == 0, err
    assert "no intensity atlas" in out
    assert not (bundle / "intensity_atlas.npz").exists()
    assert "intensity_atlas.npz" not in json.loads((bundle / "checksums.json").read_text())["files"]
    code, out, err = _run(capsys, "detect", scan, "--model", str(bundle), "--out", str(tmp_path / "again.nii.gz"),
                          "--stride", "4", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["shown_map"] == "position z" and result["position_z_map"] is None
    assert not (tmp_path / "again_position_z.nii.gz").exists()


@pytest.mark.slow
def test_evaluate_puts_the_position_z_map_and_the_anomaly_map_side_by_side(bundle_and_scans, dev_data_dir: Path,
                                                                            tmp_path: Path, capsys) -> None:
    bundle, calibration, atlas_scan, folder = bundle_and_scans
    code, out, err = _run(capsys, "calibrate", str(bundle), *calibration, "--atlas-scans", atlas_scan,
                          "--device", "cpu", "--stride", "4")
    assert code == 0, err
    cases = tmp_path / "cases.csv"
    lesion = dev_data_dir / "ctich_051.nii.gz"
    cases.write_text("image,anomalous,mask\n"
                     f"{lesion},1,{dev_data_dir / 'ctich_051_ich_mask.nii.gz'}\n"
                     f"{dev_data_dir / 'ctich_111.nii.gz'},0,\n")
    code, out, err = _run(capsys, "evaluate", "--model", str(bundle), "--cases", str(cases), "--out",
                          str(tmp_path / "eval"), "--stride", "4", "--device", "cpu", "--bootstrap", "10", "--json",
                          "--mood", str(tmp_path / "mood"))
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    localisation = summary["localisation"]
    assert localisation["n_cases"] == 1 and set(localisation["maps"]) == {"position z", "anomaly"}
    for figures in localisation["maps"].values():
        for region in ("head", "brain and skull"):
            assert 0.0 <= figures[region]["voxel_ap"] <= 1.0 and 0.0 <= figures[region]["best_dice"] <= 1.0
            assert figures[region]["top1_touches"] in (0, 1)
        assert set(figures["healthy_flagged"]) == {"ctich_111"}
        assert figures["patient_auroc_p99_brain_and_skull"] in (0.0, 0.5, 1.0)  # one case against one
    assert "localisation on 1 lesion cases" in out and "anomaly" in out
    # MOOD files show the anomaly map (0 outside brain and skull, so 1/(1+e^(threshold/width)) there)
    # and score the case on the position z-map's scale.
    loaded = load_bundle(bundle)
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mood" / "ctich_051.nii.gz")))
    from ppr.workflows.mood import MoodNormalisation
    at_zero = float(MoodNormalisation(kind="z", centre=loaded.intensity_atlas.overlay_threshold_z)(np.array([0.0]))[0])
    assert np.isclose(pixels.min(), at_zero, atol=1e-6) and pixels.max() <= 1.0
    head_score = float(next(line for line in (tmp_path / "eval" / "cases.csv").read_text().splitlines()
                            if line.startswith("ctich_051")).split(",")[7])
    sample = float((tmp_path / "mood" / "ctich_051.nii.gz.txt").read_text())
    expected = MoodNormalisation.for_z(loaded.calibration)(np.array([head_score]))[0]
    assert sample == pytest.approx(expected, abs=1e-6)
