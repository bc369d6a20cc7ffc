"""The ppr core never imports Slicer, VTK or Qt, so it runs in any Python (PythonSlicer, CPython, GPU box).

Checked twice: every ppr module imports in a fresh interpreter where those packages cannot be
imported at all, and no ppr source file names them in an import statement (which also catches
imports inside functions that the first check does not execute).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

FORBIDDEN = ("slicer", "vtk", "vtkmodules", "qt", "ctk", "PythonQt", "mrml", "MRMLCore")


def forbidden(module_name: str) -> bool:
    top = module_name.split(".")[0]
    # slicer-core and VTK also install top-level modules such as vtkSlicerVolumesModuleLogic.
    return top in FORBIDDEN or top.startswith(("vtk", "qSlicer", "vtkSlicer", "vtkMRML"))


def ppr_sources(repo_root: Path) -> list[Path]:
    return sorted((repo_root / "PositionRegressionAD" / "ppr").rglob("*.py"))


IMPORT_ALL_WITH_SLICER_BLOCKED = '''
import importlib, importlib.abc, json, pkgutil, sys
sys.path.insert(0, {ppr_parent!r})
FORBIDDEN = {forbidden!r}
class BlockSlicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in FORBIDDEN or top.startswith(("vtk", "qSlicer", "vtkSlicer", "vtkMRML")):
            raise ImportError(f"{{name}} is blocked: ppr must not import it")
        return None
sys.meta_path.insert(0, BlockSlicer())
for blocked in ("slicer", "vtk", "qt"):
    try:
        importlib.import_module(blocked)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker failed: {{blocked}} imported")
import ppr
names = sorted(m.name for m in pkgutil.walk_packages(ppr.__path__, "ppr."))
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
print(json.dumps({{"imported": names, "leaked": leaked}}))
'''


def test_every_ppr_module_imports_with_slicer_vtk_and_qt_unavailable(repo_root: Path) -> None:
    code = IMPORT_ALL_WITH_SLICER_BLOCKED.format(
        ppr_parent=str(repo_root / "PositionRegressionAD"), forbidden=FORBIDDEN
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"a ppr module needs Slicer, VTK or Qt:\n{result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == sorted(module_names(repo_root)), "every ppr module file must be imported"
    assert report["leaked"] == []


def module_names(repo_root: Path) -> list[str]:
    package = repo_root / "PositionRegressionAD" / "ppr"
    names = []
    for source in ppr_sources(repo_root):
        parts = list(source.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join(["ppr", *parts]))
    return names


def imported_names(source: Path) -> list[tuple[int, str]]:
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ) and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            names.append((node.lineno, node.args[0].value))
    return names


def test_no_ppr_source_file_imports_slicer_vtk_or_qt(repo_root: Path) -> None:
    sources = ppr_sources(repo_root)
    assert len(sources) >= 3
    offending = [
        f"{source.relative_to(repo_root)}:{line} imports {name}"
        for source in sources
        for line, name in imported_names(source)
        if forbidden(name)
    ]
    assert offending == [], "ppr must stay free of Slicer, VTK and Qt:\n" + "\n".join(offending)


@pytest.mark.parametrize(
    ("code", "caught"),
    [
        ("import slicer", True),
        ("from vtkmodules.vtkCommonCore import vtkObject", True),
        ("def f():\n    import qt", True),
        ("importlib.import_module('slicer.util')", True),
        ("from ctk import x", True),
        ("import numpy, SimpleITK", False),
        ("from .config import PreprocessConfig", False),
    ],
)
def test_the_static_check_catches_slicer_imports(tmp_path: Path, code: str, caught: bool) -> None:
    source = tmp_path / "module.py"
    source.write_text(code + "\n")
    assert any(forbidden(name) for _, name in imported_names(source)) is caught
