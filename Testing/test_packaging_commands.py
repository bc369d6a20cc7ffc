"""The two top-level commands and CI: ./run-tests, ./run-demo and .ci/run behave as the README says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPTS = ["run-tests", "run-demo", ".ci/run", "scripts/setup-env", "scripts/sync-cmake-lists"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable(repo_root: Path, script: str) -> None:
    path = repo_root / script
    assert path.is_file() and os.access(path, os.X_OK), f"{script} must be executable"


@pytest.mark.parametrize("script", ["run-tests", "run-demo", ".ci/run", "scripts/setup-env"])
def test_shell_scripts_parse_and_stop_on_errors(repo_root: Path, script: str) -> None:
    path = repo_root / script
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    assert "set -euo pipefail" in path.read_text()


def ci_with_fake_tests(tmp_path: Path, repo_root: Path, exit_code: int) -> subprocess.CompletedProcess:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(repo_root / ".ci" / "run", tmp_path / ".ci" / "run")
    fake = tmp_path / "run-tests"
    fake.write_text(f"#!/usr/bin/env bash\necho fake run-tests \"$@\"\nexit {exit_code}\n")
    fake.chmod(0o755)
    return subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("tests_exit", "ci_exit"), [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_ci_passes_only_when_tests_ran_and_passed(tmp_path: Path, repo_root: Path, tests_exit: int, ci_exit: int) -> None:
    result = ci_with_fake_tests(tmp_path, repo_root, tests_exit)
    assert result.returncode == ci_exit
    assert result.stdout.strip() == "fake run-tests"  # run verbatim, no extra arguments
    if tests_exit == 5:
        assert "collected no tests" in result.stderr


def test_ci_runs_the_readme_test_command(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    ci = (repo_root / ".ci" / "run").read_text()
    commands = re.findall(r"^\./run-\w+", readme, flags=re.MULTILINE)
    assert "./run-tests" in commands and "./run-demo" in commands
    assert re.search(r"^\./run-tests \|\| status=\$\?$", ci, flags=re.MULTILINE)


@pytest.mark.slow  # collects the whole suite
def test_run_tests_runs_every_test_and_passes_arguments_to_pytest(repo_root: Path) -> None:
    result = subprocess.run(
        [str(repo_root / "run-tests"), "--collect-only", "-k", "test_ci_runs_the_readme_test_command"],
        capture_output=True, text=True, timeout=300, cwd="/",
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected == ["Testing/test_packaging_commands.py::test_ci_runs_the_readme_test_command"]
