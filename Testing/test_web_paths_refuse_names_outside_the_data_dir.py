"""The web viewer opens only files inside --data-dir: names from the page are checked, lists hold only those."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

from PositionRegressionADWeb.paths import (
    PathRefusedError,
    data_folder,
    list_bundles,
    list_scans,
    resolve_bundle,
    resolve_scan,
    resolve_under,
)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A data folder with scans, a bundle folder, a bundle .zip, a hidden file and links out of it."""
    root = tmp_path / "data"
    (root / "cases" / "deep").mkdir(parents=True)
    (root / "head.nii.gz").write_bytes(b"x")
    (root / "cases" / "a.nrrd").write_bytes(b"x")
    (root / "cases" / "deep" / "b.mha").write_bytes(b"x")
    (root / "cases" / "notes.txt").write_text("not a scan")
    (root / "cases" / "detached.nhdr").write_text("NRRD0004\n")
    (root / ".hidden.nii.gz").write_bytes(b"x")
    bundle = root / "models" / "mine"
    bundle.mkdir(parents=True)
    (bundle / "config.json").write_text("{}")
    (bundle / "reference.nii.gz").write_bytes(b"x")
    with zipfile.ZipFile(root / "models" / "zipped.zip", "w") as archive:
        archive.writestr("zipped/config.json", "{}")
    with zipfile.ZipFile(root / "models" / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "not a bundle")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.nii.gz").write_bytes(b"x")
    (outside / "config.json").write_text("{}")
    os.symlink(outside / "secret.nii.gz", root / "link.nii.gz")
    os.symlink(outside, root / "linked_folder")
    return root


@pytest.mark.parametrize("name", [
    "../outside/secret.nii.gz",
    "cases/../../outside/secret.nii.gz",
    "..",
    "./head.nii.gz",
    "cases//a.nrrd",
    ".hidden.nii.gz",
    "cases\\a.nrrd",
    "head.nii.gz\x00.png",
    "",
    "   ",
    None,
    42,
    ["head.nii.gz"],
])
def test_names_that_leave_hide_or_are_not_text_are_refused(data_dir, name):
    with pytest.raises(PathRefusedError) as refused:
        resolve_under(data_dir, name)
    assert "pick" in str(refused.value)


def test_an_absolute_path_is_refused_even_inside_the_data_dir(data_dir):
    for name in ("/etc/passwd", str(data_dir / "head.nii.gz")):
        with pytest.raises(PathRefusedError, match="absolute path"):
            resolve_under(data_dir, name)


def test_a_link_inside_the_data_dir_that_points_outside_is_refused(data_dir):
    for name in ("link.nii.gz", "linked_folder/secret.nii.gz", "linked_folder"):
        with pytest.raises(PathRefusedError, match="outside the data folder"):
            resolve_under(data_dir, name)


def test_files_inside_resolve_to_themselves(data_dir):
    assert resolve_scan(data_dir, "head.nii.gz") == data_dir / "head.nii.gz"
    assert resolve_scan(data_dir, "cases/deep/b.mha") == data_dir / "cases" / "deep" / "b.mha"
    assert resolve_bundle(data_dir, "models/mine") == data_dir / "models" / "mine"
    assert resolve_bundle(data_dir, "models/zipped.zip") == data_dir / "models" / "zipped.zip"


def test_what_is_not_a_scan_or_a_bundle_is_refused(data_dir):
    for name in ("cases/notes.txt", "cases/detached.nhdr", "cases", "missing.nii.gz"):
        with pytest.raises(PathRefusedError):
            resolve_scan(data_dir, name)
    for name in ("models/other.zip", "cases", "head.nii.gz"):
        with pytest.raises(PathRefusedError, match="not a model bundle"):
            resolve_bundle(data_dir, name)


def test_the_lists_offer_exactly_the_scans_and_bundles_that_can_be_opened(data_dir):
    assert list_scans(data_dir) == ["head.nii.gz", "cases/a.nrrd", "cases/deep/b.mha"]
    assert list_bundles(data_dir) == ["models/mine", "models/zipped.zip"]
    for name in list_scans(data_dir):
        resolve_scan(data_dir, name)
    for name in list_bundles(data_dir):
        resolve_bundle(data_dir, name)


def test_lists_stop_at_their_limit(data_dir):
    assert list_scans(data_dir, limit=2) == ["head.nii.gz", "cases/a.nrrd"]


def test_a_missing_data_dir_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(PathRefusedError, match="--data-dir"):
        data_folder(tmp_path / "nowhere")
    assert data_folder(tmp_path) == tmp_path.resolve()
