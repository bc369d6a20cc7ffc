"""The oldest 3D Slicer the extension declares (CMake refuses older ones, the README names it) can run
it: the code that runs in Slicer's Python (module files, Libs, ppr, Scripts) needs no newer Python
than that Slicer's (vermin reads it), and inside the application a missing Slicer piece is reported
as the ImportError it is, not hidden as a module without classes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from PositionRegressionADLib.scene_io import SceneContext
from slicer_gui_stubs import install_slicer_gui_stubs, load_module_file

# Slicer_REQUIRED_PYTHON_VERSION in Slicer's CMakeLists.txt at each release tag.
SLICER_PYTHON = {"5.4": "3.9", "5.6": "3.9", "5.8": "3.9", "5.10": "3.12", "5.12": "3.12"}
# What runs in Slicer's Python: not the web viewer (its own environment) nor the tests.
SLICER_SIDE = ("PositionRegressionAD/PositionRegressionAD.py", "PositionRegressionAD/PositionRegressionADLib",
               "PositionRegressionAD/ppr", "PositionRegressionAD/Scripts", "PPRTraining")


def declared_minimum(repo_root: Path) -> str:
    match = re.search(r'if\(Slicer_VERSION VERSION_LESS "(\d+\.\d+)"\)', (repo_root / "CMakeLists.txt").read_text())
    assert match, "CMakeLists.txt must refuse Slicer versions older than the minimum"
    return match.group(1)


def test_the_minimum_is_declared_once_and_the_readme_names_it(repo_root: Path):
    minimum = declared_minimum(repo_root)
    assert minimum in SLICER_PYTHON
    assert f"3D Slicer {minimum} or newer" in (repo_root / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize(("version", "accepted"), [("5.2", False), ("5.4", True), ("5.12", True)])
def test_cmake_refuses_a_slicer_older_than_the_minimum(repo_root: Path, tmp_path: Path, version, accepted):
    from test_packaging_cmake_lists import run_cmake_against_fake_slicer

    result = run_cmake_against_fake_slicer(repo_root, tmp_path, f"-DSlicer_VERSION={version}")
    assert (result.returncode == 0) is accepted, result.stderr[-2000:]
    if not accepted:
        assert f"needs 3D Slicer {declared_minimum(repo_root)} or newer (this is {version})" in result.stderr


def test_the_slicer_side_code_runs_on_the_oldest_declared_slicers_python(repo_root: Path):
    vermin = shutil.which("vermin", path=str(Path(sys.executable).parent))
    if vermin is None:
        pytest.skip("vermin is not installed (requirements.txt has it)")
    python = SLICER_PYTHON[declared_minimum(repo_root)]
    result = subprocess.run([vermin, "--no-tips", "--eval-annotations", "--violations", f"-t={python}-",
                             *SLICER_SIDE], cwd=repo_root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"needs a Python newer than {python}:\n{result.stdout[-3000:]}"
    assert "Target versions not met" not in result.stdout


@pytest.mark.parametrize(("module_file", "missing"), [
    ("PositionRegressionAD/PositionRegressionAD.py", "slicer.parameterNodeWrapper"),
    ("PPRTraining/PPRTraining.py", "ctk"),
])
def test_inside_slicer_a_missing_piece_is_reported_not_hidden(repo_root, monkeypatch, tmp_path, module_file, missing):
    context = SceneContext.create(tmp_path / "cache")
    install_slicer_gui_stubs(monkeypatch, context.scene, repo_root / Path(module_file).parent, tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)  # as in a Slicer that lacks it
    with pytest.raises(ImportError, match=missing.split(".")[-1]):
        load_module_file(repo_root / module_file, f"{Path(module_file).stem}_old_slicer")


@pytest.mark.parametrize("module_file", ["PositionRegressionAD/PositionRegressionAD.py", "PPRTraining/PPRTraining.py"])
def test_outside_the_application_the_module_file_has_no_module_classes(repo_root, module_file):
    module = load_module_file(repo_root / module_file, f"{Path(module_file).stem}_plain")
    assert module.ScriptedLoadableModule is None
