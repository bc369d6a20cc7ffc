"""The Lib's scores table and candidates name an autoencoder's residual in intensity, never in mm,
and read PPR reports (and reports from before the unit existed) as mm, as before."""

from __future__ import annotations

import pytest

pytest.importorskip("slicer")

from PositionRegressionADLib.candidates import _peak  # noqa: E402
from PositionRegressionADLib.report import DetectionReport, ResultImportError, build_scores_table, error_unit_of  # noqa: E402


def _report(**changes) -> dict:
    data = {"seconds": 1.5, "device": "cpu", "stride": 1, "method": "dense", "aggregate": "p99",
            "regions": {"head": 0.12, "skull": 0.2}, "max_error_lps": [0.0, 0.0, 0.0],
            "registration_metric": 0.5, "score_map": "intensity", "error_unit": "intensity",
            "error": {"max": 0.4, "p99": 0.2, "mean": 0.03}, "overlay_threshold": None, "z_map": None, "z": None}
    data.update(changes)
    return data


def _columns(table) -> dict[str, tuple[str, str]]:
    vtk_table = table.GetTable()
    names = [vtk_table.GetColumnName(i) for i in range(vtk_table.GetNumberOfColumns())]
    return {name: (table.GetColumnUnitLabel(name), table.GetColumnDescription(name)) for name in names}


def test_an_autoencoder_report_is_labelled_in_intensity_and_never_in_mm() -> None:
    report = DetectionReport.from_json_dict(_report(), "ae_bundle")
    assert report.error_unit == "intensity" and report.error_mm == {"max": 0.4, "p99": 0.2, "mean": 0.03}
    table = build_scores_table(report, "scores", overlay_threshold=0.1, overlay_map="intensity")
    columns = _columns(table)
    assert "Error max (intensity)" in columns and columns["Error max (intensity)"][0] == "intensity"
    assert columns["Whole head"][0] == "intensity" and "autoencoder residual" in columns["Whole head"][1]
    assert columns["Overlay threshold"][0] == "intensity"
    assert not any("mm" in unit or " mm" in name or "mm)" in name for name, (unit, _) in columns.items())
    assert error_unit_of(table) == "intensity"
    assert _peak(0.123, "intensity") == "0.123 (intensity)"


def test_ppr_reports_stay_in_mm_and_a_mismatched_unit_is_refused() -> None:
    old = _report(score_map="mm", error_mm={"max": 30.0}, error=None, error_unit=None)
    del old["error"], old["error_unit"]
    report = DetectionReport.from_json_dict(old, "ppr_bundle")
    assert report.error_unit == "mm" and report.error_mm == {"max": 30.0}
    table = build_scores_table(report, "scores")
    assert _columns(table)["Error max (mm)"][0] == "mm" and error_unit_of(table) == "mm"
    assert _peak(12.34, "mm") == "12.3 mm"
    with pytest.raises(ResultImportError):
        DetectionReport.from_json_dict(_report(score_map="mm"), "ae_bundle")  # an AE residual called mm
