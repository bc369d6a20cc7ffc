"""Uploaded scans: a size limit, a type check by content, and a safe place on the server's disk.

A scan arrives from the page in pieces (``UploadBuffer``): the declared size is checked against
the limit before any byte is accepted, every piece is checked again as it arrives (the page is not
trusted to tell the truth), and pieces go straight to a file in the viewer's own folder under a
name the server chooses (never the uploaded file's name). When the last piece is in, the content
must be one of the single-file volume formats, recognised by its first bytes, not by its name:
NIfTI-1/2 (``n+1`` / ``n+2`` magic), NIfTI in gzip, NRRD (``NRRD000x`` magic, data in the same
file) or MetaImage (``.mha`` header with ``ElementDataFile = LOCAL``). The same check applies to
scans picked from the data folder (``check_volume_file``).

This module does not load volumes into a scene and does not decide which files may be read
(``paths``).
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from ppr.errors import PPRError

DEFAULT_MAX_UPLOAD_MB = 512
HEADER_BYTES = 64 * 1024
GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
NIFTI1_SINGLE_FILE_MAGIC = b"n+1\x00"
NIFTI2_SINGLE_FILE_MAGIC = b"n+2\x00\r\n\x1a\n"
NRRD_MAGIC = re.compile(rb"^NRRD000[1-5]\r?\n")
# Keys of a NRRD header that put the voxels in another file.
NRRD_HEADER_END = re.compile(rb"\r?\n\r?\n")
NRRD_DETACHED = re.compile(rb"^data ?file\s*:", re.IGNORECASE | re.MULTILINE)
MHA_OBJECT = re.compile(rb"^\s*ObjectType\s*=\s*Image\s*$", re.MULTILINE)
MHA_DATA_FILE = re.compile(rb"^\s*ElementDataFile\s*=\s*(\S+)", re.MULTILINE)
# What each recognised kind is stored as on the server: the suffix tells the volume reader the format.
SUFFIX_OF_KIND = {"nifti": ".nii", "nifti-gz": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha"}
ACCEPTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd) or MetaImage (.mha)"
SAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class UploadRefusedError(PPRError):
    """An upload is too large, incomplete, or not a volume the viewer can read."""


def human_size(size_bytes: int) -> str:
    """"850 kB", "2.5 MB", "512 MB": a size as the page prints it."""
    if size_bytes < 1e6:
        return f"{size_bytes / 1e3:.0f} kB"
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes < 10e6 else f"{size_bytes / 1e6:.0f} MB"


def safe_file_name(name: object) -> str:
    """The uploaded file's base name made safe to show (never used as a path on the server)."""
    base = str(name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = SAFE_NAME_CHARS.sub("_", base).strip("._")[:100]
    return base or "uploaded scan"


def display_name(name: object) -> str:
    """A scan's name without its volume suffix, safe to show and to name a volume node."""
    base = safe_file_name(name)
    for suffix in (".nii.gz", *SUFFIX_OF_KIND.values()):
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def _nifti_kind(head: bytes) -> bool:
    """Single-file NIfTI-1 or NIfTI-2 header, in either byte order."""
    if len(head) >= NIFTI1_HEADER_BYTES and head[344:348] == NIFTI1_SINGLE_FILE_MAGIC:
        return NIFTI1_HEADER_BYTES in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    if len(head) >= NIFTI2_HEADER_BYTES and head[4:12] == NIFTI2_SINGLE_FILE_MAGIC:
        return NIFTI2_HEADER_BYTES in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    return False


def _gunzip_head(head: bytes, size: int = NIFTI2_HEADER_BYTES) -> bytes:
    """The first ``size`` bytes of a gzip stream's content (less if the head is too short)."""
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, size)
    except zlib.error:
        return b""


def volume_kind(head: bytes) -> str | None:
    """"nifti", "nifti-gz", "nrrd" or "mha" from a file's first bytes; ``None`` for anything else."""
    if head.startswith(GZIP_MAGIC):
        return "nifti-gz" if _nifti_kind(_gunzip_head(head)) else None
    if _nifti_kind(head):
        return "nifti"
    if NRRD_MAGIC.match(head):
        return "nrrd"
    if MHA_OBJECT.search(head[:HEADER_BYTES]):
        return "mha"
    return None


def _detached_data_reason(kind: str, head: bytes) -> str | None:
    """Why a header's voxels would come from another file (refused: that file could be anywhere)."""
    if kind == "nrrd":
        header = NRRD_HEADER_END.split(head, 1)[0]
        if NRRD_DETACHED.search(header):
            return "its header names a separate data file"
    if kind == "mha":
        data_file = MHA_DATA_FILE.search(head)
        if data_file is None or data_file.group(1) != b"LOCAL":
            return "its voxels are not in the same file (ElementDataFile is not LOCAL)"
    return None


def check_volume_header(head: bytes, name: str) -> str:
    """The kind of volume ``head`` starts (see ``volume_kind``), or an ``UploadRefusedError`` saying why not."""
    kind = volume_kind(head)
    if kind is None:
        if head.startswith(GZIP_MAGIC):
            detail = "it is gzip-compressed but holds no NIfTI image"
        elif not head:
            detail = "it is empty"
        else:
            detail = "its first bytes are not those of a volume file"
        raise UploadRefusedError(f"{name} is not a {ACCEPTED} head CT: {detail}. "
                                 "Export the scan as .nii.gz, .nrrd or .mha and try again.")
    reason = _detached_data_reason(kind, head)
    if reason is not None:
        raise UploadRefusedError(f"{name} cannot be read on its own: {reason}. "
                                 "Save the scan as a single file (.nii.gz, .nrrd or .mha) and try again.")
    return kind


def check_volume_file(path: Path, name: str | None = None) -> str:
    """``check_volume_header`` on the first bytes of a file on the server."""
    with Path(path).open("rb") as handle:
        return check_volume_header(handle.read(HEADER_BYTES), name or Path(path).name)


class UploadBuffer:
    """One upload in progress: its pieces written in order to a server-chosen file, within a size limit.

    Usage::

        upload = UploadBuffer(folder, max_bytes=512_000_000)
        upload.begin("head.nii.gz", declared_size)     # refuses a declared size over the limit
        upload.add(offset, piece)                      # for each piece, in order
        path = upload.finish()                         # type-checked file, e.g. folder/upload-1.nii.gz
    """

    def __init__(self, folder: Path, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.name = ""
        self.declared_size = 0
        self.received = 0
        self._count = 0
        self._part: Path | None = None

    @property
    def active(self) -> bool:
        return self._part is not None

    def _limit_message(self, size: int) -> str:
        return (f"{self.name} is {human_size(size)}, larger than this viewer's upload limit of "
                f"{human_size(self.max_bytes)}: put the scan in the viewer's data folder, or restart the viewer "
                "with a larger --max-upload-mb.")

    def begin(self, name: object, declared_size: object) -> None:
        """Start a new upload (any unfinished one is dropped)."""
        self.discard()
        self.name = safe_file_name(name)
        if not isinstance(declared_size, int) or isinstance(declared_size, bool) or declared_size < 0:
            raise UploadRefusedError("The upload did not say how large it is: reload the page and try again.")
        if declared_size == 0:
            raise UploadRefusedError(f"{self.name} is empty: choose the scan file itself.")
        if declared_size > self.max_bytes:
            raise UploadRefusedError(self._limit_message(declared_size))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        self.declared_size = declared_size
        self.received = 0
        self._part = self.folder / f"upload-{self._count}.part"
        self._part.write_bytes(b"")

    def add(self, offset: object, piece: bytes) -> None:
        """Append the piece that starts at byte ``offset``; refuses (and drops the upload) when it breaks a rule."""
        if self._part is None:
            raise UploadRefusedError("No upload is in progress: choose the file again.")
        try:
            if offset != self.received:
                raise UploadRefusedError(f"The upload of {self.name} arrived out of order: choose the file again.")
            if self.received + len(piece) > min(self.declared_size, self.max_bytes):
                raise UploadRefusedError(self._limit_message(self.received + len(piece))
                                         if self.received + len(piece) > self.max_bytes else
                                         f"{self.name} sent more bytes than it announced: choose the file again.")
            with self._part.open("ab") as handle:
                handle.write(piece)
            self.received += len(piece)
        except BaseException:
            self.discard()
            raise

    def finish(self) -> Path:
        """The complete, type-checked upload under a server-chosen name; the buffer is then empty again."""
        if self._part is None:
            raise UploadRefusedError("No upload is in progress: choose the file again.")
        try:
            if self.received != self.declared_size:
                raise UploadRefusedError(f"The upload of {self.name} stopped after {human_size(self.received)} of "
                                         f"{human_size(self.declared_size)}: choose the file again.")
            kind = check_volume_file(self._part, self.name)
            final = self._part.with_name(f"upload-{self._count}{SUFFIX_OF_KIND[kind]}")
            self._part.replace(final)
            self._part = None
            return final
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Drop the upload in progress and its file."""
        if self._part is not None:
            self._part.unlink(missing_ok=True)
        self._part = None
        self.received = 0
        self.declared_size = 0
