"""A Windows checkout (core.autocrlf=true) must give every model-bundle file byte for byte as committed:
the bundle's checksums.json would otherwise refuse the bundled model. .gitattributes marks bundle
files and data files binary (no end-of-line conversion); these tests read it through git itself."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

DATA_SUFFIXES = (".pt", ".pth", ".npz", ".npy", ".nii", ".nii.gz", ".nrrd", ".mha", ".dcm", ".mrb", ".zip", ".png")


@pytest.fixture(scope="module")
def git(repo_root: Path):
    if shutil.which("git") is None or not (repo_root / ".git").exists():
        pytest.skip("not a git checkout")

    def run(*args: str, binary: bool = False):
        result = subprocess.run(["git", *args], cwd=repo_root, capture_output=True, check=True, timeout=60)
        return result.stdout if binary else result.stdout.decode()

    return run


def attributes(git, paths: list[str]) -> dict[str, dict[str, str]]:
    """{path: {"text": ..., "diff": ...}} as git sees them ("unset" means binary for that attribute)."""
    found: dict[str, dict[str, str]] = {}
    for line in git("check-attr", "text", "diff", "--", *paths).splitlines():
        path, attribute, value = line.rsplit(": ", 2)
        found.setdefault(path, {})[attribute] = value
    return found


def bundles(repo_root: Path) -> list[Path]:
    return sorted(path.parent for path in repo_root.glob("*/Resources/Models/*/checksums.json"))


def test_the_file_marks_bundles_and_data_binary(repo_root: Path):
    text = (repo_root / ".gitattributes").read_text()
    assert "**/Resources/Models/*/** binary" in text
    for suffix in DATA_SUFFIXES:
        assert f"*{suffix} binary" in text, suffix


def test_every_bundle_file_and_data_file_is_binary(repo_root: Path, git):
    assert bundles(repo_root), "the bundled model is missing"
    paths = []
    for bundle in bundles(repo_root):
        listed = json.loads((bundle / "checksums.json").read_text())["files"]
        paths += [str((bundle / name).relative_to(repo_root)) for name in [*listed, "checksums.json"]]
    paths += [path for path in git("ls-files").splitlines() if path.endswith(DATA_SUFFIXES)]
    # Files that do not exist yet follow the same rules (a new bundle, a new scan).
    paths += ["PositionRegressionAD/Resources/Models/my-scanner/config.json", "Testing/data/new_scan.nii.gz"]
    for path, values in attributes(git, paths).items():
        assert values == {"text": "unset", "diff": "unset"}, f"{path} is not binary: {values}"


def test_prose_stays_text(git):
    for path, values in attributes(git, ["PositionRegressionAD/Resources/Models/MODEL_CARD.md", "README.md",
                                         "PositionRegressionAD/PositionRegressionAD.py"]).items():
        assert values["text"] != "unset", path


def test_a_crlf_checkout_gives_the_bundles_checksummed_bytes(repo_root: Path, git):
    # What a Windows checkout with core.autocrlf=true writes for each indexed file of each bundle.
    for bundle in bundles(repo_root):
        listed = json.loads((bundle / "checksums.json").read_text())["files"]
        for name, digest in listed.items():
            path = (bundle / name).relative_to(repo_root).as_posix()
            if not git("ls-files", "--", path).strip():
                continue  # not committed (yet): nothing a checkout could change
            data = git("-c", "core.autocrlf=true", "cat-file", "--filters", f":{path}", binary=True)
            assert hashlib.sha256(data).hexdigest() == digest, f"{path} changes in a CRLF checkout"
