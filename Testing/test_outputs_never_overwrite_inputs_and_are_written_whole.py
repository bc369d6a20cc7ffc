"""Results never overwrite an input or each other, are checked before any work, and are written whole
or not at all (issue 13): ``ppr.image.imageio.check_outputs`` / ``write_image`` and the CLIs that use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ppr.errors import OutputFileError
from ppr.image.imageio import read_image, write_image


@pytest.fixture()
def scan(tmp_path) -> Path:
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(8 * 9 * 10, dtype=np.int16).reshape(8, 9, 10)), str(path))
    return path


def _ppr(repo_root: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ppr", *map(str, args)], capture_output=True, text=True,
                          cwd=repo_root, timeout=120)


def _refused(completed: subprocess.CompletedProcess, message: str) -> None:
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("error: ") and message in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_detect_refuses_to_write_its_error_map_over_the_input(scan, tmp_path, repo_root, link):
    before = scan.read_bytes()
    out = scan
    if link == "symlink":
        out = tmp_path / "link.nii.gz"
        out.symlink_to(scan)
    elif link == "hardlink":
        out = tmp_path / "hard.nii.gz"
        os.link(scan, out)
    # The model does not exist: the refusal comes before anything is read.
    _refused(_ppr(repo_root, "detect", scan, "--model", tmp_path / "none", "--out", out), "is the input")
    assert scan.read_bytes() == before


def test_detect_refuses_a_z_map_that_is_the_error_map(scan, tmp_path, repo_root):
    out = tmp_path / "errors.nii.gz"
    _refused(_ppr(repo_root, "detect", scan, "--model", tmp_path / "none", "--out", out, "--z-out", out),
             "Two outputs are the same file")
    assert not out.exists()


def test_preprocess_refuses_in_in(scan, tmp_path, repo_root):
    before = scan.read_bytes()
    _refused(_ppr(repo_root, "preprocess", scan, scan, "--reference", scan), "is the input")
    assert scan.read_bytes() == before


@pytest.mark.parametrize("name, message", [("x.png", "unknown extension"), ("a" * 300 + ".nii.gz", "more than this file system allows")])
def test_detect_checks_the_output_place_before_computing(scan, tmp_path, repo_root, name, message):
    _refused(_ppr(repo_root, "detect", scan, "--model", tmp_path / "none", "--out", tmp_path / name), message)


def test_a_failed_write_leaves_the_previous_result_and_no_partial_file(scan, tmp_path, monkeypatch):
    """ITK's NIfTI writer stops silently on a full disk: a half-written file must never take the name."""
    out = tmp_path / "errors.nii.gz"
    write_image(read_image(scan), out)
    previous = out.read_bytes()
    real_write = sitk.WriteImage

    def half_write(image, name, useCompression=False):
        real_write(image, name, useCompression)
        data = Path(name).read_bytes()
        Path(name).write_bytes(data[: len(data) // 2])  # as on a full disk, and no error

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with pytest.raises(OutputFileError, match="was not written"):
        write_image(read_image(scan), out)
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["errors.nii.gz", "scan.nii.gz"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (as in CI)")
def test_a_full_disk_says_no_space_left_and_leaves_no_file(tmp_path, repo_root):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        image = sitk.GetImageFromArray(np.random.default_rng(0).random((40, 100, 100), dtype=np.float32))
        for name in ("big.nii.gz", "big.nii", "big.nrrd", "big.mha"):
            with pytest.raises(OutputFileError, match="no space left on device"):
                write_image(image, disk / name)
            assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
