"""The evaluation run on synthetic cases with a fake detector: scores, metrics, cache, outputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from sklearn.metrics import average_precision_score, roc_auc_score

from ppr.statistics.calibration import CalibrationConfig, fit_calibration, z_map
from ppr.errors import PPRError
from ppr.workflows.evaluation import CaseMaps, EvaluationConfig, evaluate, read_cases

SHAPE = (16, 20, 24)  # z, y, x


class FakeDetector:
    """Error = noise + 25 mm where the image is bright (the 'lesion'); model grid = input grid."""

    def __init__(self, cache_key: str = "fake-model|stride=1") -> None:
        self.cache_key = cache_key
        self.calls = 0

    def __call__(self, image: sitk.Image) -> CaseMaps:
        self.calls += 1
        values = sitk.GetArrayFromImage(image).astype(np.float32)
        error = 10.0 + 4.0 * np.abs(values) + 25.0 * (values > 2.0)
        error_image = sitk.GetImageFromArray(error.astype(np.float32))
        error_image.CopyInformation(image)
        head = sitk.GetImageFromArray(np.ones(SHAPE, np.uint8))
        head.CopyInformation(image)
        return CaseMaps(error_image, head, sitk.Euler3DTransform())


def _region_masks() -> dict[str, np.ndarray]:
    x = np.arange(SHAPE[2])[None, None, :] * np.ones(SHAPE)
    skull = np.ones(SHAPE, bool)
    skull[2:-2, 2:-2, 2:-2] = False
    return {"head": np.ones(SHAPE, bool), "left_hemisphere": x >= 12, "right_hemisphere": x < 12, "skull": skull}


def _write_cases(folder: Path, n_healthy: int = 6, n_lesion: int = 4, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_healthy + n_lesion):
        values = rng.normal(0.0, 0.5, SHAPE).astype(np.float32)
        mask = np.zeros(SHAPE, np.uint8)
        lesion = i >= n_healthy
        side = "left" if i % 2 else "right"
        if lesion:
            x0 = 14 if side == "left" else 4
            size = 2 + i % 3
            mask[6 : 6 + size, 8 : 8 + size, x0 : x0 + size] = 1
            values[mask > 0] = 3.0 + rng.uniform(0, 1)
            values[(mask > 0) & (rng.random(SHAPE) < 0.3)] = 0.0  # lesions are not uniformly bright
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(image, str(folder / f"case{i:02d}.nii.gz"))
        row = {"image": f"case{i:02d}.nii.gz", "anomalous": int(lesion), "mask": "",
               "left": int(lesion and side == "left"), "right": int(lesion and side == "right"), "skull": ""}
        if lesion:
            mask_image = sitk.GetImageFromArray(mask)
            mask_image.CopyInformation(image)
            sitk.WriteImage(mask_image, str(folder / f"case{i:02d}_mask.nii.gz"))
            row["mask"] = f"case{i:02d}_mask.nii.gz"
        rows.append(row)
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "cases.csv"


def _case_rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "cases.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_patient_metrics_equal_sklearn_on_the_written_scores(tmp_path) -> None:
    cases = read_cases(_write_cases(tmp_path))
    config = EvaluationConfig(score_map="mm", n_bootstrap=200, seed=3)
    summary = evaluate(cases, FakeDetector(), _region_masks(), tmp_path / "out", config)
    rows = _case_rows(tmp_path / "out")
    assert summary["n_cases"] == 10 and summary["n_anomalous"] == 4 and len(rows) == 10
    for structure, region in (("any", "head"), ("left", "left_hemisphere"), ("right", "right_hemisphere")):
        labels = [int(r[structure if structure != "any" else "anomalous"]) for r in rows]
        scores = [float(r[f"score_{region}"]) for r in rows]
        # the CSV holds 6 significant digits; the metrics are computed on full precision
        assert summary["auroc"][structure] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
        assert summary["average_precision"][structure] == pytest.approx(
            average_precision_score(labels, scores), abs=1e-9)
        low, high = summary["auroc_ci95"][structure]
        assert low <= summary["auroc"][structure] <= high
    assert summary["auroc"]["any"] == 1.0  # bright lesions always raise the head score
    assert summary["auroc"]["skull"] is None and summary["auroc_ci95"]["skull"] == [None, None]
    assert summary["n_positive"] == {"any": 4, "left": 2, "right": 2, "skull": 0}
    assert set(summary["roc_curves"]) == {"any", "left", "right"}
    assert (tmp_path / "out" / "roc_any.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk["auroc"] == summary["auroc"] and on_disk["voxel_ap"] == summary["voxel_ap"]


def test_voxel_metrics_equal_sklearn_over_masked_cases(tmp_path) -> None:
    cases = read_cases(_write_cases(tmp_path))
    detector = FakeDetector()
    summary = evaluate(cases, detector, _region_masks(), tmp_path / "out", EvaluationConfig(score_map="mm", n_bootstrap=0))
    masked = [c for c in cases if c.mask_path is not None]
    scores, labels = [], []
    for case in masked:
        scores.append(sitk.GetArrayFromImage(detector(sitk.ReadImage(str(case.image_path))).error_map_mm).ravel())
        labels.append(sitk.GetArrayFromImage(sitk.ReadImage(str(case.mask_path))).ravel() > 0)
    expected = average_precision_score(np.concatenate(labels), np.concatenate(scores))
    assert summary["voxel"]["n_cases"] == 4 and summary["voxel"]["n_voxels"] == 4 * np.prod(SHAPE)
    assert summary["voxel"]["n_positive"] == int(np.concatenate(labels).sum())
    assert summary["voxel_ap"] == pytest.approx(expected, abs=1e-3)
    assert 0.5 < summary["best_dice"] <= 1.0
    with_healthy = evaluate(cases, detector, _region_masks(), tmp_path / "out2",
                            EvaluationConfig(score_map="mm", n_bootstrap=0, voxel_cases="all"))
    assert with_healthy["voxel"]["n_voxels"] == 10 * np.prod(SHAPE)
    assert with_healthy["voxel_ap"] <= summary["voxel_ap"]  # more negatives can only lower precision


def test_second_run_reads_the_cache_and_a_new_model_does_not(tmp_path) -> None:
    cases = read_cases(_write_cases(tmp_path))
    config = EvaluationConfig(score_map="mm", n_bootstrap=50)
    first_detector, second_detector = FakeDetector(), FakeDetector()
    first = evaluate(cases, first_detector, _region_masks(), tmp_path / "out", config)
    second = evaluate(cases, second_detector, _region_masks(), tmp_path / "out", config)
    assert first_detector.calls == 10 and second_detector.calls == 0
    assert {r["from_cache"] for r in _case_rows(tmp_path / "out")} == {"1"}
    for key in ("auroc", "auroc_ci95", "average_precision", "voxel_ap", "best_dice"):
        assert first[key] == second[key]
    other_model = FakeDetector(cache_key="other-model|stride=1")
    evaluate(cases, other_model, _region_masks(), tmp_path / "out", config)
    assert other_model.calls == 10


def test_z_scores_need_a_calibration_and_use_it(tmp_path) -> None:
    cases = read_cases(_write_cases(tmp_path))
    with pytest.raises(PPRError, match="no calibration"):
        evaluate(cases, FakeDetector(), _region_masks(), tmp_path / "out", EvaluationConfig(score_map="z"))
    rng = np.random.default_rng(5)
    healthy = [10.0 + 4.0 * np.abs(rng.normal(0.0, 0.5, SHAPE)) for _ in range(5)]
    calibration = fit_calibration(healthy, list("abcde"), CalibrationConfig(factor=2))
    summary = evaluate(cases, FakeDetector(), _region_masks(), tmp_path / "out",
                       EvaluationConfig(score_map="z", n_bootstrap=0), calibration)
    assert summary["score"]["map"] == "z" and summary["auroc"]["any"] == 1.0
    rows = _case_rows(tmp_path / "out")
    healthy_scores = [float(r["score_head"]) for r in rows if r["anomalous"] == "0"]
    assert max(healthy_scores) < 6.0  # z of healthy voxels: a few at most, not tens of mm
    # The healthy cases' share of brain and skull over the overlay threshold, as the z-maps give it.
    flagged = summary["healthy_flagged_fraction"]
    assert set(flagged["cases"]) == {f"case{i:02d}" for i in range(6)}
    focus = _region_masks()["left_hemisphere"] | _region_masks()["right_hemisphere"] | _region_masks()["skull"]
    expected = []
    for i in range(6):
        image = sitk.ReadImage(str(tmp_path / f"case{i:02d}.nii.gz"))
        error = FakeDetector()(image).error_map_mm
        z = z_map(sitk.GetArrayFromImage(error), calibration)
        expected.append(float(np.mean(z[focus] >= calibration.overlay_threshold_z)))
    assert [flagged["cases"][f"case{i:02d}"] for i in range(6)] == pytest.approx(expected)
    assert flagged["mean"] == pytest.approx(np.mean(expected))


def test_cases_csv_problems_are_reported_plainly(tmp_path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "no_label.csv").write_text("image\na.nii.gz\n")
    with pytest.raises(PPRError, match="anomalous"):
        read_cases(tmp_path / "no_label.csv")
    (tmp_path / "bad.csv").write_text("image,anomalous\na.nii.gz,yes\n")
    with pytest.raises(PPRError, match="row 2: column 'anomalous' must be 0 or 1"):
        read_cases(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("image,anomalous\nb.nii.gz,1\n")
    with pytest.raises(PPRError, match="b.nii.gz does not exist"):
        read_cases(tmp_path / "missing.csv")
    (tmp_path / "twice.csv").write_text("image,anomalous\na.nii.gz,1\na.nii.gz,0\n")
    with pytest.raises(PPRError, match="twice"):
        read_cases(tmp_path / "twice.csv")
    (tmp_path / "ok.csv").write_text("image,anomalous,skull\na.nii.gz,1,\n")
    case = read_cases(tmp_path / "ok.csv")[0]
    assert case.name == "a" and case.labels == {"any": 1, "left": None, "right": None, "skull": None}


def test_mood_files_for_every_case_keep_the_case_ranking(tmp_path) -> None:
    cases = read_cases(_write_cases(tmp_path))
    evaluate(cases, FakeDetector(), _region_masks(), tmp_path / "out",
             EvaluationConfig(score_map="mm", n_bootstrap=0), mood_dir=tmp_path / "mood")
    rows = _case_rows(tmp_path / "out")
    head_scores = np.array([float(r["score_head"]) for r in rows])
    samples = np.array([float((tmp_path / "mood" / f"{Path(r['image']).name}.txt").read_text()) for r in rows])
    assert np.all((samples > 0) & (samples < 1))
    np.testing.assert_array_equal(np.argsort(samples, kind="stable"), np.argsort(head_scores, kind="stable"))
    pixel = sitk.ReadImage(str(tmp_path / "mood" / "case07.nii.gz"))
    assert pixel.GetSize() == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert 0.0 < sitk.GetArrayViewFromImage(pixel).min() and sitk.GetArrayViewFromImage(pixel).max() < 1.0
