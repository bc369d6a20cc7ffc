"""The detector's out-of-depth check reaches every place that shows scores: the scores table (and so
the module's results area and a saved scene), the batch's scores.csv and progress output, the demo's
scores.json and summary, and the web viewer's session. A reliable scan carries the figures and no
warning. The detector is the fake calibrated one (figures of a real scan from another site)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from PositionRegressionADLib.batch import BatchSettings, run_batch
from PositionRegressionADLib.demo import summary_lines, write_scores_json
from PositionRegressionADLib.detection_logic import DetectionLogic, DetectionOptions
from PositionRegressionADLib.report import DetectionReport, build_scores_table, reliability_warning, table_row
from PositionRegressionADLib.scene_io import SceneContext, load_volume
from PositionRegressionADWeb.session import ViewerSession
from fake_calibrated_detector import OUT_OF_DEPTH_MESSAGE, CalibratedFakeDetection, OutOfDepthDetection
from synthetic_heads import write_lesion_head


@pytest.fixture(scope="module")
def head_file(tmp_path_factory) -> Path:
    return write_lesion_head(tmp_path_factory.mktemp("heads"))


@pytest.fixture()
def model(tmp_path) -> Path:
    (tmp_path / "model").mkdir()
    return tmp_path / "model"


def test_the_scores_table_holds_the_figures_and_the_warning(head_file, model, tmp_path) -> None:
    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, head_file, "head")
    results = DetectionLogic(context.scene, launcher=OutOfDepthDetection).detect(
        volume, DetectionOptions(model_path=model))
    row = table_row(results.scores)
    assert row["Scores reliable"] == "no" and row["Warning"] == OUT_OF_DEPTH_MESSAGE
    assert row["Brain median z"] == pytest.approx(4.6)
    assert row["Healthy brain median z"] == "-0.40 to 0.40"
    assert row["Brain and skull above threshold"] == pytest.approx(44.2)
    assert results.scores.GetColumnUnitLabel("Brain median z") == "z"
    assert reliability_warning(results.scores) == OUT_OF_DEPTH_MESSAGE

    calm = DetectionLogic(context.scene, launcher=CalibratedFakeDetection).detect(
        volume, DetectionOptions(model_path=model))
    assert table_row(calm.scores)["Scores reliable"] == "yes" and reliability_warning(calm.scores) == ""


def test_reports_without_a_check_give_no_reliability_columns() -> None:
    """Uncalibrated models (and detectors from before the check) report no reliability."""
    report = DetectionReport.from_json_dict(
        {"seconds": 1.0, "device": "cpu", "stride": 4, "method": "dense", "regions": {"head": 3.0},
         "max_error_lps": [0, 0, 0], "registration_metric": 0.5}, model="m")
    assert report.reliability is None
    row = table_row(build_scores_table(report, "scores"))
    assert "Warning" not in row and "Scores reliable" not in row
    assert reliability_warning(build_scores_table(report, "scores")) == ""
    assert reliability_warning(None) == ""


def test_batch_rows_demo_json_and_progress_carry_the_warning(head_file, model, tmp_path) -> None:
    stream = io.StringIO()
    settings = BatchSettings(output_dir=tmp_path / "out", options=DetectionOptions(model_path=model),
                             launcher=OutOfDepthDetection)
    [row] = run_batch([head_file], settings, stream=stream)
    assert row["Status"] == "ok"
    assert f"ok. {OUT_OF_DEPTH_MESSAGE}" in stream.getvalue()
    with (tmp_path / "out" / "scores.csv").open(newline="") as handle:
        [written] = list(csv.DictReader(handle))
    assert written["Scores reliable"] == "no" and written["Warning"] == OUT_OF_DEPTH_MESSAGE
    assert float(written["Brain median z"]) == pytest.approx(4.6)

    scores_json = json.loads(write_scores_json(row, tmp_path / "out" / "scores.json").read_text())
    assert scores_json["Warning"] == OUT_OF_DEPTH_MESSAGE and scores_json["Scores reliable"] == "no"
    lines = summary_lines(row, tmp_path / "out" / row["Scan"], tmp_path / "out")
    assert f"WARNING: {OUT_OF_DEPTH_MESSAGE}" in lines


def test_the_web_session_shows_the_warning_apart_from_the_score_rows(head_file, model, tmp_path) -> None:
    context = SceneContext.create(tmp_path / "cache")
    session = ViewerSession(context, DetectionLogic(context.scene, launcher=OutOfDepthDetection))
    session.load_scan(head_file, "head")
    session.start_detection(session.detection_options(model, "cpu", 4))
    while not session.detection_finished():
        session.take_progress()
    session.finish_detection()
    assert session.reliability_warning() == OUT_OF_DEPTH_MESSAGE
    labels = [row.label for row in session.score_rows()]
    assert "Warning" not in labels and "Brain median z" in labels and "Scores reliable" in labels
