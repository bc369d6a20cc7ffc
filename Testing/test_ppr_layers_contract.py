"""The ppr core keeps its layers: import-linter's contracts in .importlinter hold, and they bite.

The contracts (``.importlinter`` at the repository root):
- ``layers``: ppr.cli -> ppr.workflows -> ppr.statistics -> ppr.networks -> ppr.image ->
  ppr.config | ppr.errors; a layer imports only the layers below it, and every ppr subpackage or
  module (but ``__main__``) is in a layer.
- ``forbidden``: ppr imports neither Slicer, VTK, Qt, CTK nor the module's Lib, web viewer or
  training Lib.

``lint-imports`` runs in PositionRegressionAD/ (where ``ppr`` is importable) without a cache. The
same contracts are then run on a copy of ppr with one violation of each put in, and must fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")


def lint_imports(repo_root: Path, cwd: Path) -> subprocess.CompletedProcess:
    script = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert script, "lint-imports is not installed: run scripts/setup-env (requirements.txt pins import-linter)"
    return subprocess.run([script, "--config", str(repo_root / ".importlinter"), "--no-cache", "--no-logo"],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def test_ppr_keeps_its_layers_and_never_imports_slicer(repo_root: Path) -> None:
    result = lint_imports(repo_root, repo_root / "PositionRegressionAD")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_contracts_catch_an_upward_import_and_a_slicer_import(repo_root: Path, tmp_path: Path) -> None:
    shutil.copytree(repo_root / "PositionRegressionAD" / "ppr", tmp_path / "ppr",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "ppr" / "networks" / "network.py", "a", encoding="utf-8") as source:
        source.write("\nfrom ppr.workflows import bundle  # a network that knows bundles\n")
    with open(tmp_path / "ppr" / "image" / "masks.py", "a", encoding="utf-8") as source:
        source.write("\n\ndef f():\n    import slicer  # inside a function, still caught\n")
    result = lint_imports(repo_root, tmp_path)
    assert result.returncode == 1, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Contracts: 0 kept, 2 broken." in result.stdout
    assert "ppr.networks.network -> ppr.workflows.bundle" in result.stdout
    assert "ppr.image.masks -> slicer" in result.stdout
