"""Batch on Ray (issue 16): ``--engine ray`` runs one Ray task per scan on a local Ray of 2 workers and
gives the serial batch's results (same map files byte for byte, same scores); every row says which
engine and worker ran it; a scan that fails for itself gets its "failed" row once (no retry), a
worker that dies is retried (Ray's max_retries) and a scan whose workers keep dying gets a "failed"
row; the driver alone writes rows, under the folder's lock, and a re-run keeps what finished.
Without Ray, ``--engine ray`` says how to install it; nothing the serial batch or Slicer imports
imports Ray."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import SimpleITK as sitk

from PositionRegressionADLib import batch
from PositionRegressionADLib.batch import KEPT, BatchEngineError, BatchLockedError, BatchSettings, OutputLock, run_batch
from PositionRegressionADLib.detection_logic import DetectionOptions
from synthetic_heads import synthetic_head

ray = pytest.importorskip("ray")
from PositionRegressionADLib.batch_ray import ScanJob, plan, run_batch_ray, scan_task  # noqa: E402  (needs ray)

FAKE_CHILD = (sys.executable, "-m", "PositionRegressionADLib.testing")
DEV_SCANS = ("ctich_104", "ctich_114")  # the two smallest dev scans (31 and 32 slices)
# What differs between two runs of the same scan: times, and who ran it.
RUN_COLUMNS = {"Seconds", "Total seconds", "Engine", "Worker"}
# Workers unpickle the test's task wrappers by value: they cannot import this test module.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 workers for the module (started before any batch, so each batch uses it)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def synthetic_scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for name, lesion in (("head_a", (25.0, 0.0, 20.0)), ("head_b", (-25.0, -10.0, 10.0))):
        image = synthetic_head(size=(56, 56, 28), spacing=(3.4, 3.6, 5.0), window_hu=(-20.0, 100.0),
                               lesion_center_mm=lesion)
        sitk.WriteImage(image, str(folder / f"{name}.nii.gz"))
    return folder


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / batch.SCORES_FILE_NAME).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _fake_settings(output: Path, tmp_path: Path) -> BatchSettings:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    return BatchSettings(output_dir=output, options=DetectionOptions(model_path=model), python_command=FAKE_CHILD)


def _same_results(a: dict[str, str], b: dict[str, str], output_a: Path, output_b: Path) -> None:
    """Two rows of one scan agree on everything but times and who ran them; their files are the same bytes."""
    for column in set(a) | set(b):
        if column in RUN_COLUMNS:
            continue
        if column in ("Error map", "z-map", "Skull surface") and a.get(column):
            left, right = Path(a[column]), Path(b[column])
            assert left.relative_to(output_a) == right.relative_to(output_b)
            assert left.read_bytes() == right.read_bytes(), column
        else:
            assert a.get(column) == b.get(column), column


# -- the plan: what each task asks Ray for ------------------------------------------------------------

def test_the_plan_gives_each_scan_a_gpu_where_the_cluster_has_gpus():
    gpu = plan(cluster_cpus=64, cluster_gpus=8, largest_node_cpus=16, workers=None, device="auto")
    assert (gpu.workers, gpu.cpus_per_scan, gpu.gpus_per_scan, gpu.device) == (8, 8, 1, "cuda")
    # More workers than GPUs share them: 4 scans per GPU, 2 CPUs each.
    shared = plan(64, 8, 16, workers=32, device="auto")
    assert (shared.gpus_per_scan, shared.cpus_per_scan, shared.device) == (0.25, 2, "cuda")
    assert "1/4 of a GPU per scan" in shared.describe() and "1 GPU per scan" in gpu.describe()
    assert plan(64, 8, 16, workers=12, device="auto").gpus_per_scan == 0.5  # 12 scans on 8 GPUs: 2 per GPU
    assert plan(64, 8, 16, workers=None, device="cpu").gpus_per_scan == 0  # --device cpu keeps off GPUs


def test_the_plan_shares_the_cpus_among_the_scans_that_run_at_once():
    assert (plan(2, 0, 2, workers=1, device="auto").cpus_per_scan, plan(2, 0, 2, 2, "auto").cpus_per_scan) == (2, 1)
    default = plan(48, 0, 16, workers=None, device="auto")
    assert (default.workers, default.cpus_per_scan, default.device) == (48, 1, "cpu")
    assert plan(48, 0, 16, workers=2, device="auto").cpus_per_scan == 16  # never more than one node has
    assert plan(2, 0, 2, workers=8, device="auto").cpus_per_scan == 1


def test_device_cuda_on_a_cluster_without_a_gpu_is_refused():
    with pytest.raises(BatchEngineError, match="no GPU"):
        plan(8, 0, 8, workers=None, device="cuda")


GPU_RUN = """
import io, json, os, sys
from pathlib import Path
import ray
from PositionRegressionADLib.batch import BatchSettings
from PositionRegressionADLib.batch_ray import run_batch_ray, scan_task
from PositionRegressionADLib.detection_logic import DetectionOptions

def task(job):
    row, used = scan_task(job)
    row.update({"Visible GPUs": os.environ.get("CUDA_VISIBLE_DEVICES"), "Threads": os.environ["OMP_NUM_THREADS"]})
    return row, used

scans, output, model = (Path(arg) for arg in sys.argv[1:4])
ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
settings = BatchSettings(output_dir=output, options=DetectionOptions(model_path=model),
                         python_command=(sys.executable, "-m", "PositionRegressionADLib.testing"))
log = io.StringIO()
rows = run_batch_ray(sorted(scans.glob("*.nii.gz")), settings, stream=log, workers=2, task=task)
ray.shutdown()
print(json.dumps({"rows": rows, "log": log.getvalue()}, default=str))
"""


def test_on_a_cluster_with_a_gpu_each_scan_gets_a_share_of_it_and_device_cuda(synthetic_scans, tmp_path, repo_root):
    """A local Ray that declares 1 GPU (a resource only: nothing runs on a GPU here, the fake detector
    reports the device it was given): 2 workers share it, each task sees it and asks for cuda."""
    model = tmp_path / "model"
    model.mkdir()
    result = subprocess.run([sys.executable, "-c", GPU_RUN, str(synthetic_scans), str(tmp_path / "out"), str(model)],
                            cwd=repo_root / "PositionRegressionAD", capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert "2 scan(s) at once, 1 CPU thread(s) per scan, 1/2 of a GPU per scan (device cuda)" in report["log"]
    assert [(row["Status"], row["Device"], row["Visible GPUs"], row["Threads"]) for row in report["rows"]] == [
        ("ok", "cuda", "0", "1")] * 2


# -- Ray is optional -----------------------------------------------------------------------------------

def test_without_ray_the_ray_engine_says_how_to_install_it(tmp_path, synthetic_scans, repo_root):
    # A Python without Ray: "import ray" raises ImportError, as when it is not installed.
    code = ("import sys\nsys.modules['ray'] = None\nfrom PositionRegressionADLib.batch import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    result = subprocess.run([sys.executable, "-c", code, "--input", str(synthetic_scans), "--output",
                             str(tmp_path / "out"), "--engine", "ray"], cwd=repo_root / "PositionRegressionAD",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--engine ray needs Ray" in result.stderr and "pip install ray==2.60.0" in result.stderr
    assert not (tmp_path / "out").exists()


def test_workers_and_address_belong_to_the_ray_engine(tmp_path, capsys, synthetic_scans):
    assert batch.main(["--input", str(synthetic_scans), "--output", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert "--engine ray" in capsys.readouterr().err


def test_the_serial_batch_and_the_slicer_module_never_import_ray(repo_root):
    code = ("import sys\n"
            "import PositionRegressionAD, PositionRegressionADLib.batch, PositionRegressionADLib.demo, ppr.cli.detect\n"
            "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=repo_root / "PositionRegressionAD", capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]


# -- the batch on a local Ray of 2 workers --------------------------------------------------------------

@pytest.mark.slow
def test_ray_gives_the_serial_batchs_results_on_real_scans(local_ray, dev_data_dir, tiny_bundle, tmp_path, monkeypatch,
                                                           capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in DEV_SCANS:
        shutil.copy(dev_data_dir / f"{name}.nii.gz", scans)
    (scans / "broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
    found, skipped = batch.find_inputs([scans])
    options = DetectionOptions(model_path=tiny_bundle, device="cpu", stride=4)
    # SimpleITK's registration is repeatable to the last bit with one thread only (also in the serial
    # batch); each Ray task here has one CPU, so its detector runs one thread: give the serial one the same.
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    serial_out, ray_out = tmp_path / "serial", tmp_path / "ray"
    run_batch(found, BatchSettings(output_dir=serial_out, options=options), stream=io.StringIO(), skipped=skipped)
    capsys.readouterr()
    # The command line, on the module's local Ray (already started: the batch uses it and leaves it running).
    code = batch.main(["--input", str(scans), "--output", str(ray_out), "--model", str(tiny_bundle), "--device", "cpu",
                       "--stride", "4", "--engine", "ray", "--workers", "2"])
    assert code == 1  # the broken scan failed

    serial, parallel = _rows(serial_out), _rows(ray_out)
    assert [row["Scan"] for row in parallel] == [row["Scan"] for row in serial] == ["broken", *DEV_SCANS]
    assert [row["Status"] for row in parallel] == ["failed", "ok", "ok"]
    assert list(parallel[0]) == list(serial[0])  # the same columns in the same order
    for left, right in zip(serial, parallel):
        _same_results(left, right, serial_out, ray_out)
    for name in DEV_SCANS:
        folder = ray_out / name
        assert sorted(path.name for path in folder.iterdir()) == ["error_map.nii.gz", "skull_surface.vtk"]
    assert "could not be read as an image" in parallel[0]["Reason"]

    host = socket.gethostname()
    assert {row["Engine"] for row in serial} == {"serial"}
    assert {row["Worker"] for row in serial} == {f"{host}:{os.getpid()}"}
    assert {row["Engine"] for row in parallel} == {"ray"}
    workers = [row["Worker"] for row in parallel]
    assert all(worker.startswith(f"{host}:") and int(worker.split(":")[1]) != os.getpid() for worker in workers)
    assert len(set(workers)) >= 2  # 3 tasks, 2 at once: at least 2 worker processes
    text = capsys.readouterr().err
    assert "ray: 2 scan(s) at once, 1 CPU thread(s) per scan, device cpu" in text
    assert "[3/3] " in text and "broken: failed: " in text and "2 of 3 scans done" in text


def count_then_scan(job: ScanJob):
    """A task that records each try of each scan (one line per try) before running it."""
    with open(job.settings.output_dir.parent / f"tries-{job.name}.txt", "a", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    return scan_task(job)


def die_on_first_try(job: ScanJob):
    """A worker killed mid-task: on its first try of a scan the worker process ends at once (no
    exception, no row: what a kill -9 or an out-of-memory kill looks like to Ray)."""
    marker = job.settings.output_dir.parent / f"died-{job.name}"
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return count_then_scan(job)


def always_die(job: ScanJob):
    os._exit(1)


def test_a_worker_that_dies_has_its_scan_retried(local_ray, synthetic_scans, tmp_path):
    output = tmp_path / "out"
    scans = sorted(synthetic_scans.glob("*.nii.gz"))
    log = io.StringIO()
    usage = {}

    rows = run_batch_ray(scans, _fake_settings(output, tmp_path), stream=log, task=die_on_first_try, max_retries=2,
                         on_usage=lambda name, used: usage.setdefault(name, used))

    assert [(row["Scan"], row["Status"]) for row in rows] == [("head_a", "ok"), ("head_b", "ok")]
    for row in _rows(output):
        died = int((tmp_path / f"died-{row['Scan']}").read_text())
        tries = (tmp_path / f"tries-{row['Scan']}.txt").read_text().split()
        assert len(tries) == 1 and int(row["Worker"].split(":")[1]) == int(tries[0]) != died
        assert (output / row["Scan"] / "error_map.nii.gz").is_file()
    assert "[2/2]" in log.getvalue()
    assert sorted(usage) == ["head_a", "head_b"]  # what each scan used, from the try that finished
    assert all(used["cpu_seconds"] > 0 and used["detector_peak_mb"] > 10 for used in usage.values())


def test_a_scan_that_fails_for_itself_is_not_retried(local_ray, synthetic_scans, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(synthetic_scans / "head_a.nii.gz", scans)
    (scans / "head_broken.nii.gz").write_bytes(b"this is not a NIfTI file" * 10)
    output = tmp_path / "out"

    run_batch_ray(batch.find_scans([scans]), _fake_settings(output, tmp_path), stream=io.StringIO(),
                  task=count_then_scan)

    rows = {row["Scan"]: row for row in _rows(output)}
    assert rows["head_a"]["Status"] == "ok"
    assert rows["head_broken"]["Status"] == "failed"
    assert "head_broken.nii.gz could not be read as an image" in rows["head_broken"]["Reason"]
    assert rows["head_broken"]["Engine"] == "ray" and rows["head_broken"]["Worker"]
    assert len((tmp_path / "tries-head_broken.txt").read_text().split()) == 1  # once: no retry
    assert not (output / "head_broken").exists()


def test_a_scan_whose_workers_keep_dying_gets_a_failed_row(local_ray, synthetic_scans, tmp_path):
    output = tmp_path / "out"
    stale = output / "head_a"
    stale.mkdir(parents=True)
    (stale / "error_map.nii.gz").write_bytes(b"from an earlier run")

    rows = run_batch_ray([synthetic_scans / "head_a.nii.gz"], _fake_settings(output, tmp_path), stream=io.StringIO(),
                         task=always_die, max_retries=1)

    [row] = _rows(output)
    assert row["Status"] == "failed" == rows[0]["Status"]
    assert "the Ray worker running this scan died 2 time(s)" in row["Reason"]
    assert "results of an earlier run of this scan were removed" in row["Reason"]
    assert row["Engine"] == "ray" and not stale.exists()


def test_a_ray_rerun_keeps_finished_scans_and_a_locked_folder_is_refused(local_ray, synthetic_scans, tmp_path):
    output = tmp_path / "out"
    scans = sorted(synthetic_scans.glob("*.nii.gz"))
    settings = _fake_settings(output, tmp_path)
    first = run_batch_ray(scans, settings, stream=io.StringIO())
    assert [row["Reason"] for row in first] == ["", ""]

    again = run_batch_ray(scans, settings, stream=io.StringIO(), task=count_then_scan)
    assert [row["Reason"] for row in again] == [KEPT, KEPT]
    assert not list(tmp_path.glob("tries-*"))  # no task ran
    for before, after in zip(_rows(output), first):
        assert before["Worker"] == after["Worker"]  # a kept row says who computed its files

    with OutputLock(output):
        with pytest.raises(BatchLockedError):
            run_batch_ray(scans, settings, stream=io.StringIO())
