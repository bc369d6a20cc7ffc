"""Model bundles from elsewhere (issue 13): odd zip member names, a damaged deflate stream, a zip bomb
and a weights file that is not plain tensors are each refused with a message (``BundleError``),
without unpacking the bomb and without passing on PyTorch's advice to load with weights_only=False."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch

from ppr.errors import BundleError
from ppr.networks.network import PPRNet
from ppr.workflows.bundle import MAX_MEMBER_BYTES, WEIGHTS, load_bundle, save_bundle, write_checksums
from test_bundle_round_trip_and_damaged_bundles import CONFIG_SMALL, model_space_reference


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_bundle(tmp_path / "model", PPRNet(m=2), CONFIG_SMALL, model_space_reference(), {})


def _zip(folder: Path, path: Path, extra: dict[str, bytes] | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, file.name)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


@pytest.mark.parametrize("member", ["sub/..", "sub/.", "model/ "])
def test_a_member_with_no_plain_file_name_is_refused(bundle_dir, tmp_path, member):
    path = _zip(bundle_dir, tmp_path / "odd.zip", {member: b"x"})
    with pytest.raises(BundleError, match="no plain file name"):
        load_bundle(path)


def test_a_damaged_deflate_stream_is_refused(bundle_dir, tmp_path):
    path = _zip(bundle_dir, tmp_path / "damaged.zip")
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(WEIGHTS)
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 16
    data[start:start + 256] = bytes(range(256))  # inside the compressed weights, headers intact
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="not a readable zip file.*damaged"):
        load_bundle(path)


def test_a_zip_bomb_is_refused_before_it_is_unpacked(bundle_dir, tmp_path):
    path = _zip(bundle_dir, tmp_path / "bomb.zip")
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("notes.bin", "w", force_zip64=True) as member:
            zeros = bytes(1 << 24)
            for _ in range(MAX_MEMBER_BYTES // len(zeros) + 1):
                member.write(zeros)
    assert path.stat().st_size < 20 << 20
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="notes.bin of 1.0 GiB, more than a bundle file may be"):
            load_bundle(path)
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run when loaded",))


def test_weights_that_are_not_plain_tensors_are_refused_without_the_unsafe_advice(bundle_dir):
    torch.save({"layer.weight": _RunsCode()}, bundle_dir / WEIGHTS)
    write_checksums(bundle_dir)  # a crafted bundle: its checksums match
    with pytest.raises(BundleError, match="holds more than plain tensors") as refused:
        load_bundle(bundle_dir)
    assert "weights_only" not in str(refused.value) and "\x1b" not in str(refused.value)
