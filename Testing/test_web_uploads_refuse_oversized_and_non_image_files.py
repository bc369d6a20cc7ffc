"""Uploads to the web viewer: a size limit enforced piece by piece, and a type check by content."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from PositionRegressionADWeb.uploads import (
    UploadBuffer,
    UploadRefusedError,
    check_volume_file,
    check_volume_header,
    display_name,
    safe_file_name,
    volume_kind,
)


def _volume(path: Path) -> Path:
    image = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    image.SetSpacing((0.5, 0.5, 5.0))
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("suffix, kind", [(".nii.gz", "nifti-gz"), (".nii", "nifti"), (".nrrd", "nrrd"),
                                          (".mha", "mha")])
def test_volumes_written_by_simpleitk_are_recognised_by_content(tmp_path, suffix, kind):
    path = _volume(tmp_path / f"head{suffix}")
    assert check_volume_file(path) == kind
    # The name plays no part: the same bytes under a misleading name are the same kind.
    renamed = path.rename(tmp_path / "scan.txt")
    assert check_volume_file(renamed) == kind


def test_big_endian_nifti_is_recognised():
    header = bytearray(348)
    header[:4] = struct.pack(">i", 348)
    header[344:348] = b"n+1\x00"
    assert volume_kind(bytes(header)) == "nifti"
    header[:4] = struct.pack(">i", 349)
    assert volume_kind(bytes(header)) is None


@pytest.mark.parametrize("content, reason", [
    (b"", "it is empty"),
    (b"just some text\n" * 100, "first bytes are not those of a volume file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(400), "first bytes are not those of a volume file"),
    (gzip.compress(b"plain text inside gzip" * 50), "gzip-compressed but holds no NIfTI image"),
    (b"\x1f\x8b" + bytes(400), "gzip-compressed but holds no NIfTI image"),
])
def test_files_that_are_not_volumes_are_refused_with_a_reason(content, reason):
    with pytest.raises(UploadRefusedError) as refused:
        check_volume_header(content, "notes.txt")
    message = str(refused.value)
    assert message.startswith("notes.txt is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MetaImage (.mha) head CT")
    assert reason in message


def test_headers_whose_voxels_live_in_another_file_are_refused(tmp_path):
    nrrd = b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\ndata file: /etc/shadow\n\n"
    with pytest.raises(UploadRefusedError, match="separate data file"):
        check_volume_header(nrrd, "detached.nrrd")
    mha = b"ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\nElementDataFile = /etc/shadow\n"
    with pytest.raises(UploadRefusedError, match="not LOCAL"):
        check_volume_header(mha, "detached.mha")
    assert check_volume_header(mha.replace(b"/etc/shadow", b"LOCAL"), "local.mha") == "mha"


def test_the_uploaded_name_is_never_a_path(tmp_path):
    assert safe_file_name("../../etc/passwd") == "passwd"
    assert safe_file_name("C:\\Users\\me\\head scan.nii.gz") == "head_scan.nii.gz"
    assert display_name("dir/ctich_051.nii.gz") == "ctich_051"
    assert display_name("..") == "uploaded scan"
    assert display_name(".nii.gz") == "nii.gz"


def _upload(buffer: UploadBuffer, content: bytes, piece_bytes: int, name: str = "head.nii.gz") -> Path:
    buffer.begin(name, len(content))
    for offset in range(0, len(content), piece_bytes):
        buffer.add(offset, content[offset:offset + piece_bytes])
    return buffer.finish()


def test_an_upload_in_pieces_arrives_whole_under_a_server_chosen_name(tmp_path):
    content = _volume(tmp_path / "head.nii.gz").read_bytes()
    buffer = UploadBuffer(tmp_path / "uploads", max_bytes=len(content))
    path = _upload(buffer, content, piece_bytes=100, name="../../evil name.nii.gz")
    assert path == tmp_path / "uploads" / "upload-1.nii.gz"
    assert path.read_bytes() == content
    assert not buffer.active
    assert sorted(p.name for p in (tmp_path / "uploads").iterdir()) == ["upload-1.nii.gz"]


def test_a_declared_size_over_the_limit_is_refused_before_any_byte(tmp_path):
    buffer = UploadBuffer(tmp_path / "uploads", max_bytes=1_000_000)
    with pytest.raises(UploadRefusedError) as refused:
        buffer.begin("big.nii.gz", 2_500_000)
    assert str(refused.value).startswith("big.nii.gz is 2.5 MB, larger than this viewer's upload limit of 1.0 MB")
    assert "--max-upload-mb" in str(refused.value)
    assert not buffer.active
    assert not (tmp_path / "uploads").exists() or list((tmp_path / "uploads").iterdir()) == []


def test_pieces_beyond_the_limit_or_the_declared_size_are_refused_whatever_the_page_declared(tmp_path):
    buffer = UploadBuffer(tmp_path / "uploads", max_bytes=1000)
    buffer.begin("liar.nii.gz", 500)
    buffer.add(0, bytes(400))
    with pytest.raises(UploadRefusedError, match="sent more bytes than it announced"):
        buffer.add(400, bytes(200))
    assert not buffer.active and buffer.received == 0
    buffer.begin("liar.nii.gz", 1000)
    buffer.add(0, bytes(600))
    with pytest.raises(UploadRefusedError, match="liar.nii.gz is 1 kB, larger than this viewer's upload limit of 1 kB"):
        buffer.add(600, bytes(600))
    assert not buffer.active
    assert list((tmp_path / "uploads").iterdir()) == []


def test_out_of_order_short_and_non_image_uploads_are_refused_and_removed(tmp_path):
    buffer = UploadBuffer(tmp_path / "uploads", max_bytes=10_000)
    buffer.begin("a.nii.gz", 100)
    with pytest.raises(UploadRefusedError, match="out of order"):
        buffer.add(50, bytes(50))
    buffer.begin("b.nii.gz", 100)
    buffer.add(0, bytes(40))
    with pytest.raises(UploadRefusedError, match="stopped after"):
        buffer.finish()
    with pytest.raises(UploadRefusedError, match="is not a NIfTI"):
        _upload(buffer, b"hello world\n" * 10, piece_bytes=7, name="notes.txt")
    with pytest.raises(UploadRefusedError, match="is empty"):
        buffer.begin("empty.nii", 0)
    with pytest.raises(UploadRefusedError, match="did not say how large"):
        buffer.begin("what.nii", "12")
    with pytest.raises(UploadRefusedError, match="No upload is in progress"):
        buffer.add(0, b"x")
    assert list((tmp_path / "uploads").iterdir()) == []
