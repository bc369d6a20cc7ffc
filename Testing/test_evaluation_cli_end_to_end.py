"""``python -m ppr evaluate`` on real dev scans with a tiny untrained, calibrated bundle: the summary,
the per-case scores, the voxel counts in input space, the MOOD files and the cache agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from ppr.__main__ import main
from ppr.workflows.bundle import save_bundle, write_checksums
from ppr.statistics.calibration import CalibrationConfig, fit_calibration, save_calibration
from ppr.config import PreprocessConfig
from ppr.networks.network import PPRNet
from ppr.image.preprocess import prepare_reference

CONFIG = PreprocessConfig(size=64, spacing_mm=4.0, prewindowed=True)
CASES = (("ctich_051", 1, True), ("ctich_101", 0, False), ("ctich_104", 0, False))


def _small_copy(source: Path, target: Path) -> Path:
    """The scan (or mask) at a quarter of its in-plane resolution: real anatomy, 16x fewer voxels."""
    sitk.WriteImage(sitk.Shrink(sitk.ReadImage(str(source)), [4, 4, 1]), str(target))
    return target


@pytest.fixture(scope="module")
def calibrated_bundle(dev_data_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate")
    reference = prepare_reference(sitk.ReadImage(str(dev_data_dir / "ctich_054.nii.gz")), CONFIG)
    torch.manual_seed(0)
    bundle = save_bundle(folder / "bundle", PPRNet(m=2, patch_size=29), CONFIG, reference, {"cases": ["ctich_054"]})
    # statistics of made-up healthy maps: this test is about the plumbing, not the numbers
    rng = np.random.default_rng(0)
    maps = [rng.gamma(4.0, 25.0, (64, 64, 64)).astype(np.float32) for _ in range(3)]
    save_calibration(fit_calibration(maps, ["a", "b", "c"], CalibrationConfig()), bundle / "calibration.npz")
    write_checksums(bundle)
    return bundle


@pytest.fixture(scope="module")
def cases_csv(dev_data_dir: Path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    lines = ["image,anomalous,mask,skull"]
    for name, anomalous, masked in CASES:
        _small_copy(dev_data_dir / f"{name}.nii.gz", folder / f"{name}.nii.gz")
        mask = ""
        if masked:
            mask = _small_copy(dev_data_dir / f"{name}_ich_mask.nii.gz", folder / f"{name}_mask.nii.gz").name
        lines.append(f"{name}.nii.gz,{anomalous},{mask},{anomalous}")
    (folder / "cases.csv").write_text("\n".join(lines) + "\n")
    return folder / "cases.csv"


def _evaluate(capsys, *args: str) -> tuple[int, dict, str]:
    code = main(["evaluate", *args])
    captured = capsys.readouterr()
    return code, json.loads(captured.out.strip().splitlines()[-1]), captured.err


def _rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "cases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_evaluate_command_outputs_agree_with_sklearn_and_the_masks(calibrated_bundle: Path, cases_csv: Path,
                                                                   tmp_path: Path, capsys) -> None:
    args = ["--model", str(calibrated_bundle), "--cases", str(cases_csv), "--out", str(tmp_path / "eval"),
            "--json", "--device", "cpu", "--bootstrap", "100", "--seed", "1", "--mood", str(tmp_path / "mood")]
    code, summary, err = _evaluate(capsys, *args)
    assert code == 0, err
    assert summary["score"]["map"] == "z"  # the bundle is calibrated, so auto takes z
    assert summary["n_cases"] == 3 and summary["n_anomalous"] == 1
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["auroc"] == summary["auroc"]
    rows = _rows(tmp_path / "eval")
    assert [r["case"] for r in rows] == [name for name, _, _ in CASES]
    labels = [int(r["anomalous"]) for r in rows]
    head_scores = [float(r["score_head"]) for r in rows]
    assert summary["auroc"]["any"] == pytest.approx(roc_auc_score(labels, head_scores), abs=1e-9)
    assert summary["auroc"]["skull"] == pytest.approx(
        roc_auc_score(labels, [float(r["score_skull"]) for r in rows]), abs=1e-9)
    assert summary["auroc"]["left"] is None  # no such column in the CSV
    assert (tmp_path / "eval" / "roc_any.png").stat().st_size > 1000

    # voxel level: every voxel of the masked case, on the input's own grid
    folder = cases_csv.parent
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "ctich_051_mask.nii.gz"))) > 0
    assert summary["voxel"]["n_voxels"] == mask.size and summary["voxel"]["n_positive"] == int(mask.sum())
    pixel = sitk.ReadImage(str(tmp_path / "mood" / "ctich_051.nii.gz"))
    image = sitk.ReadImage(str(folder / "ctich_051.nii.gz"))
    assert pixel.GetSize() == image.GetSize() and pixel.GetSpacing() == pytest.approx(image.GetSpacing())
    mood_scores = sitk.GetArrayFromImage(pixel)
    assert 0.0 <= mood_scores.min() and mood_scores.max() <= 1.0
    # the MOOD map is a monotone function of the evaluated map, so its AP is the voxel AP
    assert summary["voxel_ap"] == pytest.approx(average_precision_score(mask.ravel(), mood_scores.ravel()), abs=2e-3)
    samples = [float((tmp_path / "mood" / f"{name}.nii.gz.txt").read_text()) for name, _, _ in CASES]
    assert all(0.0 < s < 1.0 for s in samples)
    assert np.argsort(samples).tolist() == np.argsort(head_scores).tolist()

    # a second run reads every case from the cache and reports the same numbers
    code, again, _ = _evaluate(capsys, *args)
    assert code == 0 and {r["from_cache"] for r in _rows(tmp_path / "eval")} == {"1"}
    for key in ("auroc", "auroc_ci95", "average_precision", "voxel_ap", "best_dice"):
        assert again[key] == summary[key]


def test_a_bad_cases_file_is_a_user_error(calibrated_bundle: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "cases.csv").write_text("image,label\nx.nii.gz,1\n")
    code = main(["evaluate", "--model", str(calibrated_bundle), "--cases", str(tmp_path / "cases.csv"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "lacks the column(s) ['anomalous']" in err
