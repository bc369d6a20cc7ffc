"""PPRTraining.py gives its logic outside Slicer, and its Lib never needs Qt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

BLOCKER = '''
import importlib.abc, sys
class BlockGui(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"qt", "ctk", "slicer", "PythonQt", "vtk", "vtkmodules"}:
            raise ImportError(f"{name} is blocked: this code must run without Slicer")
        return None
sys.meta_path.insert(0, BlockGui())
'''


def run_python(code: str, repo_root: Path) -> subprocess.CompletedProcess:
    paths = [str(repo_root / "PPRTraining"), str(repo_root / "PositionRegressionAD")]
    prelude = f"import sys; sys.path[:0] = {paths!r}\n"
    return subprocess.run([sys.executable, "-c", prelude + BLOCKER + code], capture_output=True, text=True, timeout=120)


def test_module_file_gives_the_logic_and_no_widget_without_slicer(repo_root: Path) -> None:
    result = run_python(
        "import PPRTraining as m\n"
        "print(m.PPRTrainingLogic.__module__, hasattr(m, 'PPRTrainingWidget'), hasattr(m, 'PPRTraining'))\n",
        repo_root,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PPRTrainingLib.logic", "False", "False"]


def test_every_pprtraining_lib_module_imports_without_qt_or_slicer(repo_root: Path) -> None:
    lib = repo_root / "PPRTraining" / "PPRTrainingLib"
    names = sorted(p.stem for p in lib.glob("*.py") if p.stem != "__init__")
    assert {"logic", "training_process", "report", "data_folders", "loss_plot"} <= set(names)
    code = "import importlib\n" + "".join(f"importlib.import_module('PPRTrainingLib.{n}')\n" for n in names)
    code += "try:\n    import qt\nexcept ImportError:\n    print('blocked')\n"
    result = run_python(code, repo_root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "blocked"


def test_widget_classes_are_defined_only_under_the_slicer_guard(repo_root: Path) -> None:
    tree = ast.parse((repo_root / "PPRTraining" / "PPRTraining.py").read_text())
    top_level_classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    guarded = [
        node for node in tree.body
        if isinstance(node, ast.If) and "ScriptedLoadableModule" in ast.unparse(node.test)
    ]
    assert top_level_classes == []
    assert len(guarded) == 1
    guarded_classes = {n.name for n in guarded[0].body if isinstance(n, ast.ClassDef)}
    assert guarded_classes == {"PPRTraining", "PPRTrainingWidget", "PPRTrainingTest"}
