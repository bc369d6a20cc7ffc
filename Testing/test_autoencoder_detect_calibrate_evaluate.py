"""An autoencoder bundle through the product: detection gives its residual map on the input's grid in
intensity (never called mm), calibration and z-maps work unchanged, and ``evaluate`` with two
models writes each model's results and one comparison (JSON ``methods`` and ``comparison.md``)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ppr.__main__ import main
from ppr.networks.autoencoder import AutoEncoder3D
from ppr.workflows.bundle import load_bundle, save_bundle, write_checksums
from ppr.statistics.calibration import CalibrationConfig, fit_calibration, save_calibration
from ppr.workflows.calibrate import calibrate_bundle
from ppr.config import PreprocessConfig
from ppr.workflows.detection import DetectOptions, detect
from ppr.networks.network import PPRNet
from ppr.image.preprocess import prepare_reference
from synthetic_heads import make_head_to_physical, synthetic_head

# 5 mm: at 7.5 mm the synthetic skull, clipped to the window before smoothing, blurs below the
# bone threshold and the reference has no intracranial space to split.
CONFIG = PreprocessConfig(size=48, spacing_mm=5.0)
LESION = dict(lesion_center_mm=(25.0, 10.0, 20.0), lesion_radius_mm=14.0)


def _scan(shift_mm: float, rotation_deg: float, lesion: bool) -> sitk.Image:
    pose = make_head_to_physical((0.0, 0.0, rotation_deg), (shift_mm, -shift_mm / 2, 0.0))
    return synthetic_head(size=(64, 72, 28), spacing=(3.0, 2.8, 5.5), head_to_physical=pose,
                          **(LESION if lesion else {}))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bundles")
    reference = prepare_reference(synthetic_head(size=(80, 80, 36), spacing=(2.6, 2.6, 5.0)), CONFIG)
    torch.manual_seed(0)
    ae = save_bundle(folder / "ae_baseline", AutoEncoder3D(m=2), CONFIG, reference,
                     {"cases": ["synthetic"], "method": "ae"})
    ppr = save_bundle(folder / "ppr_model", PPRNet(m=2, patch_size=29), CONFIG, reference, {"cases": ["synthetic"]})
    return {"ae": ae, "ppr": ppr}


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("scans")
    written = {}
    for name, shift, rotation, lesion in (("healthy_1", 4.0, 3.0, False), ("healthy_2", -5.0, -4.0, False),
                                          ("healthy_3", 2.0, 6.0, False), ("lesion_1", -3.0, 2.0, True),
                                          ("lesion_2", 5.0, -3.0, True)):
        image = _scan(shift, rotation, lesion)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
        written[name] = folder / f"{name}.nii.gz"
        if lesion:  # the lesion's voxels: where the scan differs from the same head without it
            healthy = sitk.GetArrayFromImage(_scan(shift, rotation, False))
            mask = sitk.GetImageFromArray((sitk.GetArrayFromImage(image) != healthy).astype(np.uint8))
            mask.CopyInformation(image)
            sitk.WriteImage(mask, str(folder / f"{name}_mask.nii.gz"))
    return written


def test_detect_with_an_autoencoder_bundle_gives_its_residual_on_the_input_grid(bundles, scans) -> None:
    scan = sitk.ReadImage(str(scans["lesion_1"]))
    bundle = load_bundle(bundles["ae"])
    result = detect(scan, bundle, DetectOptions(device="cpu"))
    residual = result.error_map_input
    assert residual.GetSize() == scan.GetSize() and residual.GetOrigin() == scan.GetOrigin()
    assert residual.GetSpacing() == scan.GetSpacing() and residual.GetDirection() == scan.GetDirection()
    assert (result.unit, result.score_map) == ("intensity", "intensity")
    model = sitk.GetArrayViewFromImage(result.error_map_model)
    head = sitk.GetArrayViewFromImage(result.head_mask_model) > 0
    assert model.shape == (48, 48, 48)
    assert np.all(model[~head] == 0.0) and model[head].max() > 0.0
    assert result.error_mm["max"] == pytest.approx(float(model.max()))
    assert 0.0 < result.error_mm["max"] <= 1.0  # a residual of intensities in [0, 1]
    unfiltered = detect(scan, bundle, DetectOptions(device="cpu", post_filter="none"))
    # erosion never raises a voxel: the filtered map lies below the raw residual everywhere
    raw = sitk.GetArrayViewFromImage(unfiltered.error_map_model)
    assert np.all(model <= raw + 1e-6) and raw.max() > model.max()


def test_detect_cli_names_the_unit_and_the_post_filter(bundles, scans, tmp_path: Path, capsys) -> None:
    out = tmp_path / "residual.nii.gz"
    code = main(["detect", str(scans["healthy_1"]), "--model", str(bundles["ae"]), "--out", str(out),
                 "--device", "cpu", "--post-filter", "median", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["error_unit"] == "intensity" and report["score_map"] == "intensity"
    assert report["post_filter"] == "median"
    assert "error_mm" not in report and set(report["error"]) == {"max", "p99", "mean"}
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    # the map on the input grid is a linear resampling of the model-space map the summary describes
    assert 0.0 < written.max() <= report["error"]["max"] + 1e-6
    code = main(["detect", str(scans["healthy_1"]), "--model", str(bundles["ae"]), "--out", str(out),
                 "--device", "cpu"])
    line = capsys.readouterr().out
    assert code == 0 and " mm" not in line and "(intensity)" in line


@pytest.mark.slow
def test_calibration_and_z_maps_work_unchanged_for_an_autoencoder_bundle(bundles, scans, tmp_path: Path) -> None:
    bundle_path = shutil.copytree(bundles["ae"], tmp_path / "ae_calibrated")
    healthy = [scans["healthy_1"], scans["healthy_2"], scans["healthy_3"]]
    calibration, _ = calibrate_bundle(bundle_path, healthy, device="cpu")
    assert calibration.grid_shape == (48, 48, 48) and calibration.n_scans == 3
    bundle = load_bundle(bundle_path)
    result = detect(sitk.ReadImage(str(scans["lesion_1"])), bundle, DetectOptions(device="cpu"))
    assert result.score_map == "z" and result.unit == "intensity"
    z = sitk.GetArrayViewFromImage(result.z_map_model)
    assert z.shape == (48, 48, 48) and np.isfinite(z).all() and z.max() > 0
    assert result.z_map_input.GetSize() == result.error_map_input.GetSize()


@pytest.mark.slow
def test_evaluate_two_models_writes_each_model_and_one_comparison(bundles, scans, tmp_path: Path, capsys) -> None:
    folder = scans["healthy_1"].parent
    rows = ["image,anomalous,mask"] + [f"{name}.nii.gz,0," for name in ("healthy_1", "healthy_2")]
    rows += [f"{name}.nii.gz,1,{name}_mask.nii.gz" for name in ("lesion_1", "lesion_2")]
    (folder / "cases.csv").write_text("\n".join(rows) + "\n")
    # a calibrated AE (statistics of made-up healthy residuals: the plumbing is tested, not the numbers)
    ae = shutil.copytree(bundles["ae"], tmp_path / "ae_baseline")
    rng = np.random.default_rng(0)
    maps = [rng.gamma(4.0, 0.01, (48, 48, 48)).astype(np.float32) for _ in range(3)]
    save_calibration(fit_calibration(maps, ["a", "b", "c"], CalibrationConfig()), ae / "calibration.npz")
    write_checksums(ae)
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", str(bundles["ppr"]), "--model", str(ae), "--cases",
                 str(folder / "cases.csv"), "--out", str(out), "--stride", "4", "--device", "cpu",
                 "--bootstrap", "20", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    written = json.loads((out / "comparison.json").read_text())
    assert printed == written
    rows = written["methods"]
    assert [(r["model"], r["method"], r["score_map"]) for r in rows] == [
        ("ppr_model", "ppr", "mm"), ("ae_baseline", "ae", "intensity"), ("ae_baseline", "ae", "z")]
    for row in rows:
        summary = json.loads((out / row["model"] / row["score_map"] / "summary.json").read_text())
        assert summary["n_cases"] == 4 and summary["score"]["map"] == row["score_map"]
        assert row["auroc_any"] == summary["auroc"]["any"] and row["voxel_ap"] == summary["voxel_ap"]
        assert row["best_dice"] == summary["best_dice"] and 0.0 <= row["auroc_any"] <= 1.0
        assert 0.0 < row["voxel_ap"] <= 1.0
    with open(out / "ae_baseline" / "intensity" / "cases.csv", newline="") as handle:
        columns = csv.DictReader(handle).fieldnames
    assert "max_error_intensity" in columns and "max_error_mm" not in columns
    table = (out / "comparison.md").read_text().splitlines()
    assert table[2].startswith("| model | method | score map | patient AUROC (any)")
    assert table[4].startswith("| ppr_model | PPR | raw error (mm) | ")
    assert table[5].startswith("| ae_baseline | AE | raw error (intensity) | ")
    assert table[6].startswith("| ae_baseline | AE | calibrated z | ")
    assert f"{rows[1]['auroc_any']:.3f}" in table[5] and f"{rows[2]['auroc_any']:.3f}" in table[6]
    # the z row scored the maps the raw row detected: one detection per case and model
    assert len(list((out / "ae_baseline" / "cache").glob("*_error_mm.mha"))) == 4
    with open(out / "ae_baseline" / "z" / "cases.csv", newline="") as handle:
        assert all(row["from_cache"] == "1" for row in csv.DictReader(handle))
