"""Slicer installs only the files a module's CMakeLists.txt lists: every module file must be listed.

The checks use scripts/sync-cmake-lists (the same code that rewrites the lists), and one test runs
CMake itself on the extension against a stand-in Slicer that records what each module would
install, so ${MODULE_NAME} expansion and the macro call are checked as CMake reads them.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType

import pytest

FIX = "run scripts/sync-cmake-lists to rewrite the lists from the files on disk"


def load_sync_script(repo_root: Path) -> ModuleType:
    loader = SourceFileLoader("sync_cmake_lists", str(repo_root / "scripts" / "sync-cmake-lists"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up while the file runs
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sync(repo_root: Path) -> ModuleType:
    return load_sync_script(repo_root)


def test_the_extension_has_both_modules(sync: ModuleType, repo_root: Path) -> None:
    assert [m.name for m in sync.module_dirs(repo_root)] == ["PositionRegressionAD", "PPRTraining"]


@pytest.mark.parametrize("module", ["PositionRegressionAD", "PPRTraining"])
def test_module_cmake_lists_name_every_file_of_the_module(sync: ModuleType, repo_root: Path, module: str) -> None:
    problems = sync.check_module(repo_root / module)
    assert not problems, "\n".join(str(p) for p in problems) + f"\n-> {FIX}"


def make_module(root: Path, files: list[str], scripts: list[str], resources: list[str]) -> Path:
    module = root / "Demo"
    for name in files:
        (module / name).parent.mkdir(parents=True, exist_ok=True)
        (module / name).write_bytes(b"x")
    listing = "\n".join(
        ["set(MODULE_NAME Demo)", "# set(MODULE_PYTHON_SCRIPTS commented.py)", "set(MODULE_PYTHON_SCRIPTS"]
        + [f"  {s}" for s in scripts] + ["  )", "", "set(MODULE_PYTHON_RESOURCES"]
        + [f"  {r}" for r in resources] + ["  )", "", "slicerMacroBuildScriptedModule(NAME ${MODULE_NAME})", ""]
    )
    (module / "CMakeLists.txt").write_text(listing)
    return module


def test_checker_names_unlisted_missing_and_misplaced_files(sync: ModuleType, tmp_path: Path) -> None:
    module = make_module(
        tmp_path,
        files=["Demo.py", "DemoLib/__init__.py", "DemoLib/new.py", "Resources/Icons/Demo.png",
               "Resources/Models/m/weights.pt", "DemoLib/__pycache__/new.cpython-311.pyc", ".hidden"],
        scripts=["${MODULE_NAME}.py", "DemoLib/__init__.py", "DemoLib/gone.py"],
        resources=["Resources/Icons/${MODULE_NAME}.png", "Resources/Models/m/weights.pt", "DemoLib/__init__.py"],
    )
    problems = {(p.list_name, p.entry, p.kind) for p in sync.check_module(module)}
    assert problems == {
        ("MODULE_PYTHON_SCRIPTS", "DemoLib/new.py", "not listed"),
        ("MODULE_PYTHON_SCRIPTS", "DemoLib/gone.py", "missing"),
        ("MODULE_PYTHON_RESOURCES", "DemoLib/__init__.py", "misplaced"),
    }
    messages = [str(p) for p in sync.check_module(module)]
    assert any("DemoLib/new.py exists but is not in MODULE_PYTHON_SCRIPTS" in m for m in messages)


def test_sync_rewrites_both_lists_from_the_files_on_disk(sync: ModuleType, tmp_path: Path) -> None:
    module = make_module(
        tmp_path,
        files=["Demo.py", "DemoLib/b.py", "DemoLib/a.py", "Resources/UI/Demo.ui", "Resources/notes.md"],
        scripts=["Demo.py", "Old.py"], resources=[],
    )
    assert sync.sync_module(module) is True
    assert sync.check_module(module) == []
    listed = sync.listed_files((module / "CMakeLists.txt").read_text())
    assert listed == {
        "MODULE_PYTHON_SCRIPTS": ["Demo.py", "DemoLib/a.py", "DemoLib/b.py"],
        "MODULE_PYTHON_RESOURCES": ["Resources/UI/Demo.ui", "Resources/notes.md"],
    }
    text = (module / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(NAME ${MODULE_NAME})" in text and "set(MODULE_NAME Demo)" in text
    assert sync.sync_module(module) is False  # a second run changes nothing


FAKE_SLICER_CONFIG = r'''
set(Slicer_FOUND TRUE)
if(NOT DEFINED Slicer_VERSION)
  set(Slicer_VERSION "5.12")  # a real find_package(Slicer) sets it from SlicerConfigVersion.cmake
endif()
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/GenerateConfig.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/CPack.cmake")
set(PPR_RECORD "${CMAKE_BINARY_DIR}/recorded.txt")
file(WRITE "${PPR_RECORD}" "")
'''

FAKE_USE_SLICER = r'''
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_UNPARSED_ARGUMENTS)
    message(SEND_ERROR "unknown arguments: ${MY_UNPARSED_ARGUMENTS}")
  endif()
  file(APPEND "${PPR_RECORD}" "MODULE ${MY_NAME} ${CMAKE_CURRENT_SOURCE_DIR} ${MY_WITH_GENERIC_TESTS}\n")
  foreach(kind SCRIPTS RESOURCES)
    foreach(entry ${MY_${kind}})
      file(APPEND "${PPR_RECORD}" "${kind} ${entry}\n")
    endforeach()
  endforeach()
endfunction()
function(slicer_add_python_unittest)
endfunction()
'''

FAKE_GENERATE_CONFIG = r'''
foreach(name HOMEPAGE CATEGORY CONTRIBUTORS DESCRIPTION ICONURL SCREENSHOTURLS DEPENDS)
  if("${EXTENSION_${name}}" STREQUAL "")
    message(FATAL_ERROR "EXTENSION_${name} is not set")
  endif()
  file(APPEND "${PPR_RECORD}" "EXTENSION_${name} ${EXTENSION_${name}}\n")
endforeach()
'''


def configure_against_fake_slicer(repo_root: Path, tmp_path: Path) -> list[str]:
    result = run_cmake_against_fake_slicer(repo_root, tmp_path)
    assert result.returncode == 0, f"CMake failed on the extension:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return (tmp_path / "build" / "recorded.txt").read_text().splitlines()


def run_cmake_against_fake_slicer(repo_root: Path, tmp_path: Path, *cmake_args: str) -> subprocess.CompletedProcess:
    """Configure the extension in ``tmp_path/build`` against a stand-in Slicer (``-DSlicer_VERSION=...``)."""
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake is not installed: scripts/setup-env installs it (apt package cmake)")
    fake = tmp_path / "FakeSlicer"
    fake.mkdir()
    (fake / "SlicerConfig.cmake").write_text(FAKE_SLICER_CONFIG)
    (fake / "UseSlicer.cmake").write_text(FAKE_USE_SLICER)
    (fake / "GenerateConfig.cmake").write_text(FAKE_GENERATE_CONFIG)
    (fake / "CPack.cmake").write_text('file(APPEND "${PPR_RECORD}" "CPACK\\n")\n')
    build = tmp_path / "build"
    return subprocess.run(
        [cmake, "-S", str(repo_root), "-B", str(build), f"-DSlicer_DIR={fake}", *cmake_args],
        capture_output=True, text=True, timeout=180,
    )


def test_cmake_configures_the_extension_and_installs_exactly_the_module_files(
    sync: ModuleType, repo_root: Path, tmp_path: Path
) -> None:
    records = configure_against_fake_slicer(repo_root, tmp_path)
    modules: dict[str, dict[str, list[str]]] = {}
    current = None
    for record in records:
        kind, _, value = record.partition(" ")
        if kind == "MODULE":
            name, source_dir, generic_tests = value.split(" ")
            assert Path(source_dir) == repo_root / name and generic_tests == "TRUE"
            current = modules.setdefault(name, {"MODULE_PYTHON_SCRIPTS": [], "MODULE_PYTHON_RESOURCES": []})
        elif kind in ("SCRIPTS", "RESOURCES"):
            current[f"MODULE_PYTHON_{kind}"].append(value)
    assert list(modules) == ["PositionRegressionAD", "PPRTraining"]
    for name, lists in modules.items():
        on_disk = sync.module_files(repo_root / name)
        for list_name in lists:
            assert sorted(lists[list_name]) == sorted(on_disk[list_name]), f"{name} {list_name}: {FIX}"
    assert "EXTENSION_DEPENDS PyTorch" in records
    assert records[-1] == "CPACK"
