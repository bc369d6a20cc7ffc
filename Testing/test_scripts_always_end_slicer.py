"""``Slicer --no-main-window --python-script Scripts/batch.py`` (or PPRTraining's Scripts/train.py) must
end with an exit code whatever happens in the script: Slicer keeps running after a script that
raised, and without a main window nobody can close it. The scripts run here as Slicer runs them
(``__main__``, ``slicer`` already imported, with an application), ``slicer.util.exit`` recorded."""

from __future__ import annotations

import runpy
import sys
import types
from pathlib import Path

import pytest

import PositionRegressionADLib.batch as batch
from PositionRegressionADLib.script_exit import run_and_exit
from PPRTrainingLib.logic import PPRTrainingLogic


@pytest.fixture
def slicer_app(monkeypatch) -> list[int]:
    """A ``slicer`` module as inside the application: ``slicer.util.exit`` codes land in the list."""
    exits: list[int] = []
    fake = types.ModuleType("slicer")
    fake.app = object()
    fake.util = types.SimpleNamespace(exit=exits.append)
    monkeypatch.setitem(sys.modules, "slicer", fake)
    return exits


def boom(argv):
    raise RuntimeError("an unexpected failure")


@pytest.mark.parametrize(("main", "code"), [
    (lambda argv: 0, 0), (lambda argv: None, 0), (lambda argv: 3, 3), (boom, 1),
    (lambda argv: sys.exit(2), 2), (lambda argv: sys.exit("bad"), 1), (lambda argv: sys.exit(), 0),
])
def test_inside_slicer_every_ending_becomes_the_applications_exit_code(slicer_app, main, code):
    run_and_exit(main, [])
    assert slicer_app == [code]


def test_ctrl_c_ends_with_130(slicer_app):
    def interrupted(argv):
        raise KeyboardInterrupt

    run_and_exit(interrupted, [])
    assert slicer_app == [130]


def test_an_unexpected_error_is_printed_with_its_traceback(slicer_app, capsys):
    run_and_exit(boom, [])
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: an unexpected failure" in err


def test_outside_slicer_it_is_sys_exit(monkeypatch):
    monkeypatch.setitem(sys.modules, "slicer", types.ModuleType("slicer"))  # slicer-core: no application
    with pytest.raises(SystemExit) as stop:
        run_and_exit(boom, ["x"])
    assert stop.value.code == 1


def run_as_slicer_does(script: Path, argv: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(script), *argv])
    runpy.run_path(str(script), run_name="__main__")


def test_batch_script_ends_slicer_after_an_unexpected_error(slicer_app, monkeypatch, repo_root):
    monkeypatch.setattr(batch, "main", boom)
    run_as_slicer_does(repo_root / "PositionRegressionAD" / "Scripts" / "batch.py", ["--", "--input", "x"], monkeypatch)
    assert slicer_app == [1]


def test_batch_script_passes_its_arguments_and_code(slicer_app, monkeypatch, repo_root):
    seen = []
    monkeypatch.setattr(batch, "main", lambda argv: seen.append(argv) or 4)
    run_as_slicer_does(repo_root / "PositionRegressionAD" / "Scripts" / "batch.py", ["--", "--input", "x"], monkeypatch)
    assert seen == [["--input", "x"]] and slicer_app == [4]


def test_train_script_ends_slicer_after_an_unexpected_error(slicer_app, monkeypatch, repo_root, tmp_path):
    def broken(self, *args, **kwargs):
        raise OSError("the disk went away")

    monkeypatch.setattr(PPRTrainingLogic, "request_from_folders", broken)
    run_as_slicer_does(repo_root / "PPRTraining" / "Scripts" / "train.py",
                       ["--", "--data", str(tmp_path), "--out", str(tmp_path / "model")], monkeypatch)
    assert slicer_app == [1]


def test_train_script_usage_error_ends_slicer_with_2(slicer_app, monkeypatch, repo_root):
    run_as_slicer_does(repo_root / "PPRTraining" / "Scripts" / "train.py", ["--"], monkeypatch)
    assert slicer_app == [2]
