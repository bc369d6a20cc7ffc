"""Text and table results (evaluate's summary.json / cases.csv / ROC plots / comparison, calibrate's
calibration.npz and checksums.json, the MOOD sample files, batch's scores.csv) are written whole or not
at all, and a full disk says "no space left on device" (issue 13): ``ppr.image.imageio.write_text`` /
``write_atomically`` behind each of them."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from PositionRegressionADLib import batch
from ppr.errors import OutputFileError
from ppr.statistics.calibration import CalibrationConfig, fit_calibration, load_calibration, save_calibration
from ppr.workflows.evaluation import EvaluationConfig, evaluate, read_cases
from test_evaluation_run import SHAPE, FakeDetector, _region_masks, _write_cases


@pytest.fixture()
def small_disk(tmp_path):
    """A 2 MB tmpfs (root only, as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (as in CI)")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(descriptor)


def _half_then_full(monkeypatch) -> None:
    """Path.write_text writes half its text and then fails as a full disk does."""
    def write_text(self, data, encoding=None, errors=None, newline=None):
        with open(self, "w", encoding=encoding) as handle:
            handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_text", write_text)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _evaluate_twice(cases_folder: Path, out: Path, between) -> None:
    """Evaluate, call ``between`` (the disk fills up), evaluate again: refused, the first results kept whole."""
    cases = read_cases(_write_cases(cases_folder))
    config = EvaluationConfig(score_map="mm", n_bootstrap=0)
    evaluate(cases, FakeDetector(), _region_masks(), out, config)
    before = _files(out)
    assert {"summary.json", "cases.csv", "roc_any.png"} <= set(before)
    between()
    with pytest.raises(OutputFileError, match="no space left on device"):
        evaluate(cases, FakeDetector(), _region_masks(), out, config)
    assert _files(out) == before  # nothing cut short, no temporary file left


def test_evaluate_on_a_full_disk_says_so_and_keeps_the_previous_results(small_disk, tmp_path):
    # the cached maps are read back; every result file must be written again
    _evaluate_twice(tmp_path, small_disk / "eval", lambda: _fill(small_disk))


def test_evaluate_summary_cut_short_by_the_disk_never_takes_its_name(tmp_path, monkeypatch):
    _evaluate_twice(tmp_path, tmp_path / "eval", lambda: _half_then_full(monkeypatch))


def test_a_calibration_on_a_full_disk_is_refused_whole(small_disk):
    rng = np.random.default_rng(5)
    healthy = [10.0 + 4.0 * np.abs(rng.normal(0.0, 0.5, (64, 64, 64))) for _ in range(5)]
    calibration = fit_calibration(healthy, list("abcde"), CalibrationConfig(factor=2))
    path = small_disk / "calibration.npz"
    save_calibration(calibration, path)
    before = path.read_bytes()
    _fill(small_disk)
    with pytest.raises(OutputFileError, match="no space left on device"):
        save_calibration(calibration, path)
    assert path.read_bytes() == before and load_calibration(path).n_scans == 5
    assert sorted(p.name for p in small_disk.iterdir()) == ["calibration.npz", "filler"]


def _broken_scan(tmp_path: Path) -> Path:
    scan = tmp_path / "scans" / "head.nii.gz"
    scan.parent.mkdir()
    scan.write_bytes(b"not a NIfTI file" * 10)  # fails at once: a "failed" row, no detection needed
    return scan


def _batch(model: Path, scan: Path, output: Path, capsys) -> tuple[int, str]:
    code = batch.main(["--input", str(scan), "--output", str(output), "--model", str(model)])
    return code, capsys.readouterr().err


def test_batch_scores_on_a_full_disk_say_no_space_left_and_exit_non_zero(small_disk, tmp_path, capsys, tiny_bundle):
    scan = _broken_scan(tmp_path)
    output = small_disk / "out"
    output.mkdir()
    _fill(small_disk)
    code, err = _batch(tiny_bundle, scan, output, capsys)
    assert code != 0
    assert "error: " in err and "scores.csv was not written: no space left on device" in err, err
    assert "Traceback" not in err
    assert list(output.iterdir()) == []  # no scores.csv, whole or partial


def test_batch_scores_cut_short_never_take_the_name(tmp_path, capsys, monkeypatch, tiny_bundle):
    scan = _broken_scan(tmp_path)
    output = tmp_path / "out"
    code, _ = _batch(tiny_bundle, scan, output, capsys)
    assert code == 1
    before = (output / "scores.csv").read_bytes()
    _half_then_full(monkeypatch)
    code, err = _batch(tiny_bundle, scan, output, capsys)
    assert code == 1 and "no space left on device" in err and "Traceback" not in err, err
    assert (output / "scores.csv").read_bytes() == before
    assert sorted(p.name for p in output.iterdir()) == ["scores.csv"]
