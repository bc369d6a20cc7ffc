"""A registration that had to correct the scan (read upside down) says so in the scores table's
Warning column, the column the module's warning label, the batch's scores.csv and the web viewer read."""

from __future__ import annotations

from PositionRegressionADLib.report import WARNING_COLUMN, DetectionReport, build_scores_table, reliability_warning

NOTE = "The scan matched the reference head only with its voxels mirrored along array axis z."
REPORT = {"seconds": 1.0, "device": "cpu", "stride": 4, "method": "dense", "aggregate": "p99",
          "regions": {"head": 1.5}, "max_error_lps": [0.0, 0.0, 0.0], "registration_metric": 0.6,
          "error": {"max": 9.0}}
RELIABILITY = {"reliable": False, "message": "Scores are not reliable for this scan.", "brain_median_z": 4.6,
               "healthy_brain_median_z": [-0.4, 0.4], "fraction_above_threshold": 0.44,
               "healthy_fraction_above_threshold": [0.0, 0.09]}


def test_the_note_alone_fills_the_warning_of_an_uncalibrated_report():
    report = DetectionReport.from_json_dict({**REPORT, "registration_note": NOTE}, "model")
    assert reliability_warning(build_scores_table(report, "scores")) == NOTE


def test_the_note_follows_the_out_of_depth_warning():
    data = {**REPORT, "registration_note": NOTE, "reliability": RELIABILITY}
    table = build_scores_table(DetectionReport.from_json_dict(data, "model"), "scores")
    assert reliability_warning(table) == f"{RELIABILITY['message']} {NOTE}"


def test_no_note_and_no_calibration_add_no_warning_column():
    table = build_scores_table(DetectionReport.from_json_dict(REPORT, "model"), "scores")
    assert table.GetTable().GetColumnByName(WARNING_COLUMN) is None
