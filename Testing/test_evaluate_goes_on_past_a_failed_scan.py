"""``ppr evaluate`` goes on past a scan it cannot process (issue 13): the scan's row says why, the
figures are over the other scans, and the summary counts and names the failures."""

from __future__ import annotations

import csv
import json

import pytest
import SimpleITK as sitk

from ppr.cli.evaluate import print_summary
from ppr.errors import PPRError, RegistrationError
from ppr.workflows.evaluation import EvaluationConfig, comparison_markdown, evaluate, read_cases
from test_evaluation_run import FakeDetector, _region_masks, _write_cases

CONFIG = EvaluationConfig(score_map="mm", n_bootstrap=50)


class RefusingDetector(FakeDetector):
    """The fake detector, but registration refuses the scans with a spacing of 1.5 mm on x."""

    def __call__(self, image: sitk.Image):
        if image.GetSpacing()[0] == 1.5:
            raise RegistrationError("This scan could not be aligned with the reference head.")
        return super().__call__(image)


def _rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _mark(path) -> None:
    image = sitk.ReadImage(str(path))
    image.SetSpacing((1.5, 1.0, 1.0))
    sitk.WriteImage(image, str(path))


def test_a_failed_scan_is_recorded_and_the_others_are_scored(tmp_path, capsys):
    cases_csv = _write_cases(tmp_path)
    (tmp_path / "case01.nii.gz").write_bytes(b"not a NIfTI file" * 10)  # unreadable, healthy
    _mark(tmp_path / "case07.nii.gz")  # refused by registration, anomalous
    cases = read_cases(cases_csv)

    summary = evaluate(cases, RefusingDetector(), _region_masks(), tmp_path / "out", CONFIG)

    assert summary["n_failed"] == 2 and summary["n_cases"] == 8 and summary["n_anomalous"] == 3
    assert set(summary["failed_cases"]) == {"case01", "case07"}
    assert "could not be read as an image" in summary["failed_cases"]["case01"]
    assert "could not be aligned" in summary["failed_cases"]["case07"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["failed_cases"] == summary["failed_cases"]
    rows = {row["case"]: row for row in _rows(tmp_path / "out" / "cases.csv")}
    assert len(rows) == 10
    assert rows["case07"]["status"] == "failed" and "could not be aligned" in rows["case07"]["reason"]
    assert rows["case07"]["score_head"] == "" and rows["case07"]["max_error_mm"] == ""
    assert rows["case02"]["status"] == "ok" and rows["case02"]["reason"] == "" and float(rows["case02"]["score_head"]) > 0

    # The figures are those of an evaluation of the other eight cases alone.
    others = [case for case in cases if case.name not in ("case01", "case07")]
    alone = evaluate(others, FakeDetector(), _region_masks(), tmp_path / "alone", CONFIG)
    for key in ("auroc", "auroc_ci95", "average_precision", "n_positive", "n_negative", "voxel_ap", "best_dice"):
        assert summary[key] == alone[key], key
    assert alone["n_failed"] == 0 and alone["failed_cases"] == {}

    print_summary(summary)
    shown = capsys.readouterr().out
    assert "2 case(s) failed" in shown and "case07: This scan could not be aligned" in shown


def test_an_evaluation_where_every_scan_fails_says_so(tmp_path):
    cases = read_cases(_write_cases(tmp_path, n_healthy=2, n_lesion=0))
    for case in cases:
        case.image_path.write_bytes(b"broken")
    with pytest.raises(PPRError, match="No case could be scored.*case00: .*could not be read"):
        evaluate(cases, FakeDetector(), _region_masks(), tmp_path / "out", CONFIG)
    assert [row["status"] for row in _rows(tmp_path / "out" / "cases.csv")] == ["failed", "failed"]


def test_the_comparison_names_the_failed_cases_of_each_row():
    row = {"model": "ppr", "method": "ppr", "score_map": "mm", "score_map_label": "raw error (mm)",
           "auroc_any": 0.9, "auroc_any_ci95": [None, None], "ap_any": 0.8, "ap_any_ci95": [None, None],
           "voxel_ap": None, "best_dice": None, "n_failed": 1, "failed_cases": {"case07": "refused"}}
    text = comparison_markdown({"methods": [row], "n_cases": 10, "score": {"aggregate": "p99"},
                                "bootstrap": {"n_resamples": 0, "seed": 0}})
    assert "Failed cases, left out of that row's figures: ppr (mm): case07." in text
