"""An installed extension is not the source tree: the demo neither looks for its sample nor writes into
the Slicer installation (lib/Slicer-X.Y), and the modules' help tells a Slicer user what a Slicer user
can run (Slicer's own command line), not ``python -m ...`` in an environment they do not have."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import PositionRegressionADLib.demo as demo


def test_in_the_source_tree_the_demo_uses_the_sample_and_writes_beside_it(repo_root: Path):
    assert demo.in_source_tree(repo_root) and demo.SAMPLE_SCAN.is_file()
    assert demo.default_output_dir(repo_root) == repo_root / "demo-output"


def test_installed_the_demo_writes_to_the_current_folder(tmp_path: Path, monkeypatch):
    installed = tmp_path / "lib" / "Slicer-5.12"
    (installed / "qt-scripted-modules" / "PositionRegressionADLib").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert not demo.in_source_tree(installed)
    assert demo.default_output_dir(installed) == work / "demo-output"


def test_installed_a_missing_sample_says_to_pass_a_scan(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "in_source_tree", lambda root=None: False)
    code = demo.main(["--input", str(tmp_path / "ctich_051.nii.gz"), "--output", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "ships with the source tree only" in err and "--input SCAN" in err
    assert not (tmp_path / "out").exists()


def help_text(module_file: Path) -> str:
    for node in ast.parse(module_file.read_text()).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["_HELP_TEXT"]:
            # _HELP_TEXT = _("""...""") : the literal inside Slicer's translation call
            value = node.value
            assert isinstance(value, ast.Call) and getattr(value.func, "id", "") == "_", "help text not translatable"
            return ast.literal_eval(value.args[0])
    raise AssertionError(f"no _HELP_TEXT in {module_file}")


@pytest.mark.parametrize(("module_file", "script"), [
    ("PositionRegressionAD/PositionRegressionAD.py", "Scripts/batch.py"),
    ("PPRTraining/PPRTraining.py", "Scripts/train.py"),
])
def test_the_help_gives_slicers_command_line_and_a_documentation_link(repo_root: Path, module_file, script):
    text = help_text(repo_root / module_file)
    assert "python -m" not in text
    assert f"Slicer --no-main-window --python-script &lt;this module's folder&gt;/{script} --" in text
    assert '<a href="https://' in text and "Documentation</a>" in text
    assert (repo_root / Path(module_file).parent / script).is_file()
