"""With a model that ships an intensity atlas (the default one), the detector's z-map is the anomaly map
and the position error keeps its own z-map: the Lib adds it as its own volume node, "<input> PPR
position error", on the input's grid with its own threshold and colour window, never the overlay by
default (the overlay stays the anomaly map, "<input> anomaly map"); a re-run replaces it, an
uncalibrated run removes it, a failed or cancelled run adds neither, a saved scene keeps it; the
batch writes it as ``position_z_map.nii.gz`` in the row's "Position z-map"; the web viewer downloads it.

Most tests use the fake anomaly-map detector of ``fake_calibrated_detector``; the slow test runs the
real ``python -m ppr detect`` with the bundled default model (stride 4) on the bundled sample and
compares the node with the CLI's own ``--position-z-out`` file.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer

from PositionRegressionADLib.batch import BatchSettings, run_batch
from PositionRegressionADLib.detection_logic import (
    DetectionCancelled,
    DetectionFailedError,
    DetectionLogic,
    DetectionOptions,
    child_environment,
    default_model_path,
    result_volume_ids,
)
from PositionRegressionADLib.process import ChildProcess
from PositionRegressionADLib.report import DetectionReport, ResultImportError
from PositionRegressionADLib.results import (
    ROLE_ATTRIBUTE,
    ResultDisplayOptions,
    color_range_z,
    find_results,
)
from PositionRegressionADLib.scene_io import SceneContext, load_scene_mrb, load_volume, save_scene_mrb
from PositionRegressionADLib.testing import (
    InProcessFakeDetection,
    RecordingLauncher,
    scene_node_ids,
    volume_fingerprint,
)
from fake_calibrated_detector import (
    CALIBRATED_THRESHOLD_Z,
    POSITION_THRESHOLD_Z,
    AnomalyMapFakeDetection,
    CalibratedFakeDetection,
    MissingPositionZMapDetection,
)
from lesion_head_scene import (  # noqa: F401 (fixtures, used by name)
    context, fake_peak_at_the_lesion, head_file, ijk_to_ras_array, model_dir, slice_composite,
)


POSITION_NODE_SUFFIX = " PPR position error"


def _nodes_named(scene, suffix: str) -> list:
    return [node for node in (scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes()))
            if (node.GetName() or "").endswith(suffix)]


def _detect(context, volume, model_dir, launcher=AnomalyMapFakeDetection, work_dir=None, **display):
    return DetectionLogic(context.scene, launcher=launcher, work_dir=work_dir).detect(
        volume, DetectionOptions(model_path=model_dir, display=ResultDisplayOptions(**display)))


# ------------------------------------------------------------------------------------------------
# The report


def _report_data(**extra) -> dict:
    return {"seconds": 1.0, "device": "cpu", "stride": 4, "method": "dense", "regions": {"head": 1.0},
            "max_error_lps": [0.0, 0.0, 0.0], "registration_metric": 0.5, "score_map": "z",
            "overlay_threshold": 3.7, "z_map": "/work/x_z.nii.gz", **extra}


def test_the_report_reads_the_position_map_and_older_reports_still_parse():
    report = DetectionReport.from_json_dict(
        _report_data(shown_map="anomaly", position_z_map="/work/x_position_z.nii.gz", position_overlay_threshold=6.45),
        "m")
    assert (report.shown_map, report.position_z_map, report.position_overlay_threshold) == (
        "anomaly", "/work/x_position_z.nii.gz", 6.45)
    assert report.shows_anomaly_map
    # A detector from before the anomaly map: its z-map is the position z-map, no separate map.
    older = DetectionReport.from_json_dict(_report_data(), "m")
    assert (older.shown_map, older.position_z_map, older.position_overlay_threshold) == ("position z", None, None)
    uncalibrated = DetectionReport.from_json_dict(
        _report_data(score_map="mm", overlay_threshold=None, z_map=None, shown_map="none", position_z_map=None,
                     position_overlay_threshold=None), "m")
    assert uncalibrated.shown_map == "none" and not uncalibrated.shows_anomaly_map
    for wrong in ({"shown_map": "anomaly"},  # an anomaly map without the position map
                  {"shown_map": "position z", "position_z_map": "/work/p.nii.gz", "position_overlay_threshold": 6.0},
                  {"shown_map": "anomaly", "position_z_map": "/work/p.nii.gz"},  # no threshold
                  {"shown_map": "something else"}):
        with pytest.raises(ResultImportError, match="do not belong together"):
            DetectionReport.from_json_dict(_report_data(**wrong), "m")


# ------------------------------------------------------------------------------------------------
# The Lib, with the fake anomaly-map detector


def test_the_position_error_is_its_own_node_and_the_overlay_stays_the_anomaly_map(context, head_file, model_dir,
                                                                                   tmp_path):
    volume = load_volume(context, head_file)
    composite = slice_composite(context.scene)
    fingerprint = volume_fingerprint(volume)
    launcher = RecordingLauncher(AnomalyMapFakeDetection)
    results = DetectionLogic(context.scene, launcher=launcher, work_dir=tmp_path).detect(
        volume, DetectionOptions(model_path=model_dir))
    report = launcher.report()
    # The child was not told where: both maps land in the run's folder, beside the error map.
    assert "--z-out" not in launcher.commands[0] and "--position-z-out" not in launcher.commands[0]
    out = Path(launcher.commands[0][launcher.commands[0].index("--out") + 1])
    assert Path(report["position_z_map"]).parent == Path(report["z_map"]).parent == out.parent

    assert find_results(context.scene, volume) == results
    position = results.position_z_map
    assert position is not None and position.GetName() == volume.GetName() + POSITION_NODE_SUFFIX
    assert position.GetAttribute(ROLE_ATTRIBUTE) == "PositionZMap"
    assert context.scene.GetNodeByID(position.GetID()) is position
    assert position.GetID() in result_volume_ids(context.scene)  # never offered as an input
    assert position.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras_array(position), ijk_to_ras_array(volume))
    values = slicer.util.arrayFromVolume(position)
    errors = slicer.util.arrayFromVolume(results.error_map)
    assert np.unravel_index(int(np.argmax(values)), values.shape) == np.unravel_index(int(np.argmax(errors)),
                                                                                      errors.shape)

    # The shown map is the anomaly map, under its own name, and it is the overlay.
    assert results.shown_map == "anomaly" and results.z_map.GetName() == f"{volume.GetName()} anomaly map"
    assert results.displayed_map is results.z_map
    assert composite.GetForegroundVolumeID() == results.z_map.GetID() != position.GetID()
    assert results.threshold_z == pytest.approx(CALIBRATED_THRESHOLD_Z)

    # Its own threshold and colour window, the same colours as the other maps.
    assert results.position_threshold_z == pytest.approx(POSITION_THRESHOLD_Z)
    display = position.GetDisplayNode()
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(POSITION_THRESHOLD_Z)
    low, high = color_range_z(values, POSITION_THRESHOLD_Z)
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((low, high), abs=1e-4)
    assert display.GetColorNodeID() == results.z_map.GetDisplayNode().GetColorNodeID()
    assert position.GetStorageNode() is not None  # saved with the scene
    assert results.nodes()[-1] is position
    assert volume_fingerprint(volume) == fingerprint
    assert list(tmp_path.glob("ppr-detect-*")) == []


def test_a_users_z_threshold_is_for_the_shown_map_only(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    results = _detect(context, volume, model_dir, overlay_threshold_z=12.0)
    assert results.threshold_z == pytest.approx(12.0)
    assert results.position_threshold_z == pytest.approx(POSITION_THRESHOLD_Z)


def test_without_an_atlas_there_is_no_position_node_and_the_z_map_keeps_its_name(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    results = _detect(context, volume, model_dir, launcher=CalibratedFakeDetection)
    assert results.position_z_map is None and results.position_threshold_z is None
    assert results.shown_map == "position z" and results.z_map.GetName() == f"{volume.GetName()} anomaly z-map"
    assert _nodes_named(context.scene, POSITION_NODE_SUFFIX) == []


def test_a_rerun_replaces_the_position_node_and_an_uncalibrated_run_removes_it(context, head_file, model_dir):
    volume = load_volume(context, head_file)
    first = _detect(context, volume, model_dir)
    count = context.scene.GetNumberOfNodes()
    second = _detect(context, volume, model_dir)
    assert context.scene.GetNumberOfNodes() == count
    assert context.scene.GetNodeByID(first.position_z_map.GetID()) is None
    assert _nodes_named(context.scene, POSITION_NODE_SUFFIX) == [second.position_z_map]
    third = _detect(context, volume, model_dir, launcher=InProcessFakeDetection)
    assert third.position_z_map is None and third.z_map is None
    assert _nodes_named(context.scene, POSITION_NODE_SUFFIX) == []
    assert context.scene.GetNodeByID(second.position_z_map.GetID()) is None


def test_a_missing_position_map_fails_and_adds_nothing(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    before = scene_node_ids(context.scene)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(ResultImportError, match="did not write its position z-map"):
        _detect(context, volume, model_dir, launcher=MissingPositionZMapDetection, work_dir=work)
    assert scene_node_ids(context.scene) == before
    assert _nodes_named(context.scene, POSITION_NODE_SUFFIX) == [] and _nodes_named(context.scene, "anomaly map") == []
    assert list(work.iterdir()) == []


def test_a_position_map_outside_the_run_folder_is_refused(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    outside = tmp_path / "elsewhere_position_z.nii.gz"

    class OutsideDetection(AnomalyMapFakeDetection):
        def _run(self):
            super()._run()
            report = json.loads(self._outcome.stdout.splitlines()[-1])
            Path(report["position_z_map"]).replace(outside)
            report["position_z_map"] = str(outside)
            self._outcome = type(self._outcome)(0, json.dumps(report) + "\n", "", cancelled=False)

    before = scene_node_ids(context.scene)
    with pytest.raises(DetectionFailedError, match="position z-map outside its work folder"):
        _detect(context, volume, model_dir, launcher=OutsideDetection)
    assert scene_node_ids(context.scene) == before


def test_the_position_node_survives_an_mrb_round_trip(context, head_file, model_dir, tmp_path):
    volume = load_volume(context, head_file)
    results = _detect(context, volume, model_dir)
    mrb = save_scene_mrb(context.scene, tmp_path / "out" / "scene.mrb")
    loaded = SceneContext.create(tmp_path / "cache2")
    load_scene_mrb(loaded, mrb)
    volumes = [loaded.scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
               for i in range(loaded.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    [volume2] = [node for node in volumes if node.GetName() == volume.GetName()]
    results2 = DetectionLogic(loaded.scene).results(volume2)
    assert results2 is not None and results2.position_z_map is not None
    assert results2.shown_map == "anomaly" and results2.displayed_map is results2.z_map
    assert results2.position_threshold_z == pytest.approx(POSITION_THRESHOLD_Z)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(results2.position_z_map),
                                  slicer.util.arrayFromVolume(results.position_z_map))


# ------------------------------------------------------------------------------------------------
# Batch and web viewer


def test_the_batch_writes_the_position_map_and_a_rerun_checks_it(head_file, model_dir, tmp_path):
    out = tmp_path / "out"
    settings = BatchSettings(output_dir=out, options=DetectionOptions(model_path=model_dir),
                             launcher=AnomalyMapFakeDetection)

    def run() -> list[dict[str, str]]:
        rows = run_batch([head_file], settings, stream=io.StringIO())
        assert [row["Status"] for row in rows] == ["ok"], [row["Reason"] for row in rows]
        with (out / "scores.csv").open(newline="") as handle:
            return list(csv.DictReader(handle))

    [row] = run()
    name = row["Scan"]
    assert Path(row["Position z-map"]) == out / name / "position_z_map.nii.gz"
    assert Path(row["z-map"]) == out / name / "z_map.nii.gz"
    position = sitk.ReadImage(row["Position z-map"])
    source = sitk.ReadImage(str(head_file))
    assert position.GetSize() == source.GetSize()
    assert position.GetOrigin() == pytest.approx(source.GetOrigin(), abs=1e-3)
    values = sitk.GetArrayFromImage(position)
    assert not np.array_equal(values, sitk.GetArrayFromImage(sitk.ReadImage(row["z-map"])))

    [kept] = run()
    assert kept["Reason"].startswith("kept from an earlier run")
    Path(row["Position z-map"]).unlink()
    [redone] = run()
    assert not redone["Reason"].startswith("kept") and Path(redone["Position z-map"]).is_file()

    # A model without an atlas into the same folder: no position map, none left from before.
    uncalibrated = BatchSettings(output_dir=out, options=DetectionOptions(model_path=model_dir, stride=2),
                                 launcher=CalibratedFakeDetection)
    [row] = run_batch([head_file], uncalibrated, stream=io.StringIO())
    assert not row.get("Position z-map") and not (out / name / "position_z_map.nii.gz").exists()


def test_mood_pixels_show_the_anomaly_map_and_the_sample_score_keeps_the_position_scale(head_file, model_dir,
                                                                                         tmp_path):
    out = tmp_path / "out"
    settings = BatchSettings(output_dir=out, options=DetectionOptions(model_path=model_dir),
                             launcher=AnomalyMapFakeDetection, output_format="mood")
    [row] = run_batch([head_file], settings, stream=io.StringIO())
    assert row["Status"] == "ok", row["Reason"]
    name = head_file.name

    def logistic(value, centre):
        return 1.0 / (1.0 + np.exp(-(np.asarray(value, dtype=np.float64) - centre) / 2.0))

    anomaly = sitk.GetArrayFromImage(sitk.ReadImage(row["z-map"]))
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "mood" / name)))
    np.testing.assert_allclose(pixels, logistic(anomaly, CALIBRATED_THRESHOLD_Z), atol=1e-6)
    # The whole head's score is the position z's (the detector's region score): centred on its own threshold.
    # Read back through the logistic (width 2): the centre it was mapped around.
    sample = float((out / "mood" / f"{name}.txt").read_text())
    centre = row["Whole head"] - 2.0 * np.log(sample / (1.0 - sample))
    assert centre == pytest.approx(POSITION_THRESHOLD_Z, abs=0.05)
    assert POSITION_THRESHOLD_Z != CALIBRATED_THRESHOLD_Z


def test_the_web_viewer_downloads_the_position_map(head_file, model_dir, tmp_path):
    from PositionRegressionADWeb.session import ViewerSession

    context = SceneContext.create(tmp_path / "cache")
    session = ViewerSession(context, DetectionLogic(context.scene, launcher=AnomalyMapFakeDetection))
    session.load_scan(head_file, "head")
    session.start_detection(session.detection_options(model_dir, device="cpu", stride=4))
    while not session.detection_finished():
        time.sleep(0.05)
    results = session.finish_detection()
    written = session.write_position_z_map(tmp_path / "down" / "position_z_map.nii.gz")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(written))),
                                  slicer.util.arrayFromVolume(results.position_z_map))


# ------------------------------------------------------------------------------------------------
# The real detector with the bundled default model on the bundled sample


def _same_map(lib: np.ndarray, cli: np.ndarray) -> None:
    assert lib.shape == cli.shape
    assert np.corrcoef(lib.ravel(), cli.ravel())[0, 1] > 0.999
    assert np.mean(np.abs(lib - cli) > 1e-3) < 1e-3


@pytest.mark.slow
def test_real_default_model_puts_the_clis_position_map_in_the_scene_and_a_cancel_leaves_none(repo_root, tmp_path):
    sample = repo_root / "Resources" / "Sample" / "ctich_051.nii.gz"
    model = default_model_path()
    # The CLI on its own, told where to write the position map.
    cli = tmp_path / "cli"
    command = [sys.executable, "-m", "ppr", "detect", str(sample), "--model", str(model),
               "--out", str(cli / "errors.nii.gz"), "--position-z-out", str(cli / "position.nii.gz"),
               "--device", "cpu", "--stride", "4", "--json"]
    cli.mkdir()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=child_environment())
    assert done.returncode == 0, done.stderr
    cli_report = json.loads(done.stdout.splitlines()[-1])
    assert cli_report["shown_map"] == "anomaly"
    assert Path(cli_report["position_z_map"]) == (cli / "position.nii.gz").resolve()

    context = SceneContext.create(tmp_path / "cache")
    volume = load_volume(context, sample)
    composite = slice_composite(context.scene)
    fingerprint = volume_fingerprint(volume)
    work = tmp_path / "work"
    work.mkdir()
    options = DetectionOptions(model_path=model, device="cpu", stride=4)

    # A cancelled run first: it adds neither map.
    before = scene_node_ids(context.scene)
    logic = DetectionLogic(context.scene, launcher=ChildProcess, work_dir=work, python_command=[sys.executable])
    with pytest.raises(DetectionCancelled):
        logic.detect(volume, options, should_cancel=lambda: True)
    assert scene_node_ids(context.scene) == before and list(work.iterdir()) == []

    launcher = RecordingLauncher(ChildProcess)
    results = DetectionLogic(context.scene, launcher=launcher, work_dir=work,
                             python_command=[sys.executable]).detect(volume, options)
    report = launcher.report()
    assert report["shown_map"] == "anomaly" and results.shown_map == "anomaly"
    position = results.position_z_map
    assert position is not None and position.GetName() == "ctich_051 PPR position error"
    assert position.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    np.testing.assert_array_equal(ijk_to_ras_array(position), ijk_to_ras_array(volume))
    cli_position = sitk.GetArrayFromImage(sitk.ReadImage(str(cli / "position.nii.gz")))
    # The same map: the Lib's child reads the input as Slicer exported it (its geometry rounded to
    # float32 in the NIfTI header), the CLI the sample file itself (usually 1e-7 relative apart); and
    # SimpleITK's multi-threaded registration is not bit-for-bit repeatable, so now and then the two
    # registrations differ in the last digits and the maps at sharp edges.
    _same_map(slicer.util.arrayFromVolume(position), cli_position)
    assert results.position_threshold_z == pytest.approx(cli_report["position_overlay_threshold"])

    # The overlay is the anomaly map: the CLI's z-map, at the atlas's threshold.
    assert results.z_map.GetName() == "ctich_051 anomaly map"
    assert composite.GetForegroundVolumeID() == results.z_map.GetID() == results.displayed_map.GetID()
    cli_anomaly = sitk.GetArrayFromImage(sitk.ReadImage(cli_report["z_map"]))
    _same_map(slicer.util.arrayFromVolume(results.z_map), cli_anomaly)
    assert results.threshold_z == pytest.approx(cli_report["overlay_threshold"])
    assert results.threshold_z != pytest.approx(results.position_threshold_z)
    # The skull surface shows the position error (the anomaly map is 0 on bone): over the bleed's
    # scalp swelling it is above the position threshold, which the anomaly map never reaches there.
    from vtk.util.numpy_support import vtk_to_numpy
    surface = results.skull_surface.GetPolyData()
    display = results.skull_surface.GetDisplayNode()
    on_surface = vtk_to_numpy(surface.GetPointData().GetArray(display.GetActiveScalarName()))
    assert on_surface.max() >= results.position_threshold_z
    assert volume_fingerprint(volume) == fingerprint and list(work.iterdir()) == []
