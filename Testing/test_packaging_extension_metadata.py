"""The extension's metadata is complete and consistent: CMake, the ExtensionsIndex entry, icons, licence."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

REQUIRED_METADATA = ("HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS")
# Properties of slicer-extension-catalog-entry-schema-v1.0.2.json (additionalProperties: false).
CATALOG_PROPERTIES = {
    "$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
    "dicom_support_rule", "build_subdirectory", "enabled", "tier",
}
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}


def cmake_sets(text: str) -> dict[str, str]:
    """Values of set(NAME "value") / set(NAME value) at the top level of a CMakeLists."""
    text = re.sub(r"#[^\n]*", "", text)
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3)
            for m in re.finditer(r'set\(\s*(\w+)\s+(?:"([^"]*)"|([^\s)"]+))\s*\)', text)}


@pytest.fixture(scope="module")
def top_cmake(repo_root: Path) -> str:
    return (repo_root / "CMakeLists.txt").read_text()


@pytest.fixture(scope="module")
def metadata(top_cmake: str) -> dict[str, str]:
    return cmake_sets(top_cmake)


def test_top_level_cmake_sets_every_extension_field(metadata: dict[str, str]) -> None:
    missing = [name for name in REQUIRED_METADATA if not metadata.get(f"EXTENSION_{name}", "").strip()]
    assert missing == []
    assert metadata["EXTENSION_DEPENDS"] == "PyTorch"
    assert metadata["EXTENSION_HOMEPAGE"].startswith("https://")


def test_top_level_cmake_follows_the_slicer_extension_template(top_cmake: str) -> None:
    lines = [line.strip() for line in top_cmake.splitlines() if line.strip() and not line.startswith("#")]
    order = [
        next(i for i, line in enumerate(lines) if line.startswith(prefix))
        for prefix in (
            "cmake_minimum_required(", "project(PositionRegressionAD)", "set(EXTENSION_HOMEPAGE",
            "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
            "add_subdirectory(PositionRegressionAD)", "add_subdirectory(PPRTraining)",
            "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})",
        )
    ]
    assert order == sorted(order)


def raw_repo_path(url: str, homepage: str) -> str:
    """The repository path a raw.githubusercontent.com URL of this repository points to."""
    owner_repo = homepage.removeprefix("https://github.com/").removesuffix(".git")
    prefix = f"https://raw.githubusercontent.com/{owner_repo}/main/"
    assert url.startswith(prefix), f"{url} is not a file of {homepage} (branch main)"
    return url.removeprefix(prefix)


def test_extension_icon_is_a_128px_png_in_the_repository(metadata: dict[str, str], repo_root: Path) -> None:
    icon = repo_root / raw_repo_path(metadata["EXTENSION_ICONURL"], metadata["EXTENSION_HOMEPAGE"])
    with Image.open(icon) as image:
        assert image.format == "PNG" and image.size == (128, 128)


def test_screenshots_point_into_the_repository_resources(metadata: dict[str, str], repo_root: Path) -> None:
    paths = [raw_repo_path(url, metadata["EXTENSION_HOMEPAGE"]) for url in metadata["EXTENSION_SCREENSHOTURLS"].split()]
    assert paths and all(path.startswith("Resources/Screenshots/") for path in paths)
    screenshots = repo_root / "Resources" / "Screenshots"
    if screenshots.is_dir():  # the figures land with the README's Figures section
        assert [p for p in paths if not (repo_root / p).is_file()] == []


def test_catalog_entry_matches_the_schema_and_the_cmake_metadata(metadata: dict[str, str], repo_root: Path) -> None:
    entry = json.loads((repo_root / "PositionRegressionAD.json").read_text())
    assert set(entry) <= CATALOG_PROPERTIES and CATALOG_REQUIRED <= set(entry)
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == metadata["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == metadata["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"].removesuffix(".git") == metadata["EXTENSION_HOMEPAGE"]
    assert isinstance(entry.get("tier", 1), int) and 1 <= entry.get("tier", 1) <= 5


def test_pprtraining_module_icon_exists(repo_root: Path) -> None:
    with Image.open(repo_root / "PPRTraining" / "Resources" / "Icons" / "PPRTraining.png") as image:
        assert image.format == "PNG" and image.size == (128, 128)


def test_licence_is_apache_2(repo_root: Path) -> None:
    text = (repo_root / "LICENSE.txt").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
