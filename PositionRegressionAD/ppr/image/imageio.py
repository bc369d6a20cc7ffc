"""Reading and writing images at the edges of the pipeline.

Reads anything SimpleITK reads from a file (NIfTI, NRRD, MHA, a single DICOM file, ...) and DICOM
series from a folder, placed where each slice's header says it is (gantry tilt, uneven slice
positions). Before any voxel is used it refuses a file whose header declares more than
``MAX_VOXELS`` voxels, and a NIfTI file that holds fewer data bytes than its header declares or whose
gzip stream does not end properly (SimpleITK would read the missing slices as zeros). NIfTI floats
that are NaN or infinite stay so (SimpleITK's NIfTI reader turns them into 0), so that
``ppr.image.validation`` sees them. It does not check whether the image is a usable head CT (see
``ppr.image.validation``) and never changes the file it reads.
"""

from __future__ import annotations

import errno
import functools
import gzip
import hashlib
import os
import secrets
import shutil
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from scipy import ndimage

from ppr.errors import InputImageError, OutputFileError
from ppr.image.validation import check_finite

PathLike = str | os.PathLike

# The largest image read: 1024^3 voxels, 4 GiB as float32 (a head CT of 512 x 512 x 1000 thin slices
# is a quarter of it). The pipeline holds a few float copies of the input, so more would not fit.
MAX_VOXELS = 1024 ** 3
_CHUNK_BYTES = 1 << 20  # a multiple of every voxel size


# Image files a scan may come as; a folder holding a DICOM series is a scan too.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
# Names of label maps that sit beside scans in a folder (masks, labels, segmentations): the folder
# scans of training and batch skip them (glob patterns on the lower-case file name).
LABEL_MAP_PATTERNS: tuple[str, ...] = ("*mask*", "*label*", "*seg*")


def holds_dicom_series(folder: PathLike) -> bool:
    """True for a folder in which GDCM finds a DICOM series (file names need no .dcm suffix)."""
    folder = Path(folder)
    return folder.is_dir() and bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def is_scan(path: PathLike) -> bool:
    """An image file with a volume suffix, or a folder holding a DICOM series."""
    path = Path(path)
    if path.is_file():
        return path.name.lower().endswith(VOLUME_SUFFIXES)
    return holds_dicom_series(path)


def scans_in(item: PathLike) -> list[Path]:
    """The scans an input names: a file or a DICOM series folder is one scan; any other folder
    gives its image files and its sub-folders that hold a DICOM series, sorted by name (not deeper)."""
    item = Path(item)
    if item.is_file() or holds_dicom_series(item):
        return [item]
    if not item.is_dir():
        return []
    return [path for path in sorted(item.iterdir()) if not path.name.startswith(".") and is_scan(path)]


def read_image(path: PathLike) -> sitk.Image:
    """Read an image file, or the largest DICOM series in a folder, keeping its geometry.

    Refuses (``InputImageError``) a declared size above ``MAX_VOXELS`` before reading any voxel, and a
    truncated or corrupt NIfTI file; keeps a NIfTI's NaN and infinite values for ``ppr.image.validation``."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path} does not exist: check the path of the input image.")
    if path.is_dir():
        return _read_dicom_folder(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        _check_declared_size(path, reader.GetSize(), reader.GetNumberOfComponents())
        layout = _nifti_layout(path)
        non_finite = 0 if layout is None else _check_nifti_data(path, layout)
        image = reader.Execute()
    except RuntimeError as error:
        raise InputImageError(
            f"{path} could not be read as an image ({_first_line(error)}). "
            "Use a NIfTI, NRRD, MHA file or a folder holding one DICOM series."
        ) from None
    return _with_non_finite(image, path, layout) if non_finite else image


def _check_declared_size(path: Path, size: tuple[int, ...], components: int = 1) -> None:
    voxels = int(np.prod(size, dtype=np.float64)) * max(components, 1)
    if voxels > MAX_VOXELS:
        shown = " x ".join(str(n) for n in size)
        raise InputImageError(
            f"{path.name} declares {shown} voxels ({voxels:,}, {voxels * 4 / 1e9:.1f} GB as float32), more than "
            f"the limit of {MAX_VOXELS:,} voxels ({MAX_VOXELS * 4 / 1e9:.1f} GB): it is not one head CT or its "
            "header is damaged. Crop or resample the scan, or export it again.")


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a single-file NIfTI-1/2 keeps its voxels: from byte ``offset`` (of the uncompressed
    stream), ``nbytes`` bytes of ``dtype`` (None when not floating point)."""

    compressed: bool
    offset: int
    nbytes: int
    dtype: np.dtype | None


# NIfTI datatype codes of floating-point voxels (16: float32, 64: float64).
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def _nifti_layout(path: Path) -> _NiftiLayout | None:
    """The data layout from a NIfTI-1 or NIfTI-2 header, or None if ``path`` is no single-file NIfTI."""
    with open(path, "rb") as handle:
        compressed = handle.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            header = handle.read(540)
    except (OSError, EOFError, zlib.error):
        return None  # not ours to judge: SimpleITK says what it can read
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348 and header[344:348] == b"n+1\0":
            dims = struct.unpack(order + "8h", header[40:56])
            code, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = max(int(struct.unpack(order + "f", header[108:112])[0]), 352)
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540 and header[4:8] == b"n+2\0":
            code, bitpix = struct.unpack(order + "2h", header[12:16])
            dims = struct.unpack(order + "8q", header[16:80])
            offset = max(int(struct.unpack(order + "q", header[168:176])[0]), 544)
            break
    else:
        return None
    voxels = int(np.prod([max(int(n), 1) for n in dims[1:min(max(int(dims[0]), 1), 7) + 1]], dtype=np.float64))
    dtype = np.dtype(order + _NIFTI_FLOATS[code]) if code in _NIFTI_FLOATS else None
    return _NiftiLayout(compressed=compressed, offset=offset, nbytes=voxels * max(int(bitpix), 8) // 8, dtype=dtype)


def _check_nifti_data(path: Path, layout: _NiftiLayout) -> int:
    """Raise if the file holds fewer data bytes than declared (or its gzip stream is broken); return
    how many voxels are NaN or infinite."""
    need = layout.offset + layout.nbytes
    if not layout.compressed and layout.dtype is None:  # nothing to decode: the file's length says it
        got, why = min(path.stat().st_size, need), "the file ends early"
    else:
        got, why, bad = 0, "the file ends early", 0
        try:
            with (gzip.open if layout.compressed else open)(path, "rb") as handle:
                got = len(handle.read(layout.offset))
                while got < need:
                    block = handle.read(min(_CHUNK_BYTES, need - got))
                    if not block:
                        break
                    if layout.dtype is not None and got >= layout.offset:
                        usable = len(block) - len(block) % layout.dtype.itemsize
                        bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(block[:usable], layout.dtype))))
                    got += len(block)
                while layout.compressed and handle.read(_CHUNK_BYTES):
                    pass  # to the end of the stream: gzip checks its end marker and checksum there
        except EOFError:
            why = "the compressed stream ends before its end marker"
        except (OSError, zlib.error) as error:
            why = f"the compressed data is damaged: {error}"
        else:
            if got >= need:
                return bad
    raise InputImageError(
        f"{path.name} is truncated or corrupt: {got:,} of {need:,} bytes could be read ({why}). "
        "Copy or export the scan again (a complete .nii.gz passes `gzip -t`).")


def _with_non_finite(image: sitk.Image, path: Path, layout: _NiftiLayout) -> sitk.Image:
    """The image with the file's NaN and infinite voxels back (SimpleITK's NIfTI reader makes them 0)."""
    with (gzip.open if layout.compressed else open)(path, "rb") as handle:
        handle.read(layout.offset)
        raw = np.frombuffer(handle.read(layout.nbytes), layout.dtype)
    values = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() != 1 or values.size != raw.size or values.dtype.kind != "f":
        check_finite(raw)  # validation's message, from the file's own values
    flat = values.reshape(-1)  # ITK keeps the file's voxel order (x fastest), as numpy's C order here
    lost = ~np.isfinite(raw)
    flat[lost] = raw[lost]
    restored = sitk.GetImageFromArray(values, isVector=False)
    restored.CopyInformation(image)
    return restored


# The formats results are written in (SimpleITK picks the writer by the suffix).
OUTPUT_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
# Below this much free space a failed write is reported as a full disk.
_FULL_DISK_BYTES = 64 << 20


def write_image(image: sitk.Image, path: PathLike) -> None:
    """Write an image (compressed where the format allows), creating the parent folder, atomically:
    to a temporary name in the same folder, read back whole (SimpleITK's NIfTI writer says nothing
    when the disk fills up), then renamed. The result exists whole under its name or not at all;
    a failure raises ``OutputFileError`` ("no space left on device" when the disk is full)."""
    path = Path(path)
    check_output_place(path, suffixes=OUTPUT_SUFFIXES)

    def write(temporary: Path) -> None:
        sitk.WriteImage(image, str(temporary), useCompression=True)
        if read_image(temporary).GetSize() != image.GetSize():
            raise OutputFileError("the written file does not hold the whole image")

    write_atomically(path, write)


def write_text(path: PathLike, text: str) -> None:
    """Write a text result (JSON, CSV, ...) atomically, as ``write_image`` does."""
    write_atomically(Path(path), lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary name beside ``path`` (same suffix), then rename it to ``path``;
    remove the temporary file on any failure and raise ``OutputFileError`` with the reason."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = next((s for s in OUTPUT_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    temporary = path.with_name(f".ppr-{secrets.token_hex(4)}.partial{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError, InputImageError, OutputFileError) as error:
        raise OutputFileError(_write_failure(path, error)) from None
    finally:
        temporary.unlink(missing_ok=True)


def _write_failure(path: Path, error: Exception) -> str:
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < _FULL_DISK_BYTES):
        shown = "" if free is None else f" ({free / 1e6:.1f} MB free)"
        return f"{path} was not written: no space left on device{shown}. Free some space or choose another folder."
    reason = getattr(error, "strerror", None) or _first_line(error)
    return f"{path} was not written ({reason}). Check the folder and its free space."


def check_output_place(path: PathLike, suffixes: Sequence[str] | None = None) -> None:
    """Raise ``OutputFileError`` unless ``path`` can be written: a known suffix (if ``suffixes``), a
    name the file system takes, not a folder, and a writable folder (or one that can be created)."""
    path = Path(path)
    if suffixes is not None and not path.name.lower().endswith(tuple(suffixes)):
        raise OutputFileError(f"{path} has an unknown extension: name it with one of {', '.join(suffixes)}.")
    folder = path.parent.resolve()
    existing = next(p for p in (folder, *folder.parents) if _exists(p))
    if not existing.is_dir():
        raise OutputFileError(f"{existing} is a file, so {path} cannot be written there: choose another folder.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFileError(f"{existing} is not writable: choose another output folder.")
    try:
        longest = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        longest = 255
    # The temporary name beside it is short; the final name must fit itself.
    for part in (*folder.relative_to(existing).parts, path.name):
        if len(os.fsencode(part)) > longest:
            raise OutputFileError(f"The name {part[:40]}... is {len(os.fsencode(part))} bytes long, more than "
                                  f"this file system allows ({longest}): choose a shorter name.")
    if path.is_dir():
        raise OutputFileError(f"{path} is a folder: give a file name.")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # e.g. a name too long for the file system
        return False


def check_outputs(outputs: Sequence[PathLike], inputs: Sequence[PathLike] = (),
                  suffixes: Sequence[str] | None = OUTPUT_SUFFIXES) -> None:
    """Before computing: every output can be written (``check_output_place``), none is an input (the
    same file, also through a symbolic or hard link), and no two outputs are the same file."""
    outputs = [Path(p) for p in outputs]
    for output in outputs:
        check_output_place(output, suffixes)
        for source in map(Path, inputs):
            if _same_file(output, source) or (source.is_dir() and source.resolve() in output.resolve().parents):
                raise OutputFileError(f"The output {output} is the input {source} (or inside it): writing it "
                                      "would destroy the scan. Choose another output name.")
    for index, first in enumerate(outputs):
        for second in outputs[index + 1:]:
            if _same_file(first, second):
                raise OutputFileError(f"Two outputs are the same file ({first} and {second}): one would "
                                      "overwrite the other. Give them different names.")


def _same_file(first: Path, second: Path) -> bool:
    if first.exists() and second.exists():
        return os.path.samefile(first, second)  # device and inode: symbolic and hard links too
    return first.resolve() == second.resolve()


def dicom_series_files(folder: PathLike) -> list[Path]:
    """The files of the series ``read_image`` reads from a DICOM folder (the one with the most
    slices), in GDCM's order (along the slice normal); ``InputImageError`` without a series."""
    folder = Path(folder)
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise InputImageError(
            f"{folder} is a folder without a DICOM series. Point to a folder of DICOM slices "
            "or to an image file."
        )
    # A folder often holds a scout or a dose report beside the scan: the scan has the most slices.
    files = max(
        (sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids),
        key=len,
    )
    return [Path(f) for f in files]


def _read_dicom_folder(folder: Path) -> sitk.Image:
    files = [str(f) for f in dicom_series_files(folder)]
    slices = _slice_geometry(folder, list(files))
    if slices is None or _evenly_stacked(slices):
        return _read_with_itk(folder, files)
    return _resample_slices(folder, slices)


def _read_with_itk(folder: Path, files: tuple[str, ...] | list[str]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputImageError(
            f"The DICOM series in {folder} could not be read ({_first_line(error)})."
        ) from None


@dataclass(frozen=True)
class _Slices:
    """A series' slices sorted along their normal: files, positions (n, 3) in mm, the axes as rows
    (row cosine, column cosine, normal; orthonormal) and the pixel steps along the first two."""

    files: list[str]
    positions: np.ndarray
    axes: np.ndarray
    pixel_mm: tuple[float, float]


def _slice_geometry(folder: Path, files: list[str]) -> _Slices | None:
    """Each slice's place from its header, or None for multi-frame files (ITK reads those whole).

    Refuses what cannot be placed: a single slice, slices without position or orientation, slices
    of different orientations or sizes, two slices at one position."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in files]
    if any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers):
        return None
    if len(headers) < 2:
        raise InputImageError(
            f"The DICOM series in {folder} has a single slice; a head CT needs all its slices. "
            "Copy every slice of the scan into the folder, or use a 3D image file.")
    tags = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    lacking = [Path(f).name for f, h in zip(files, headers) if any(tag not in h for tag in tags)]
    if lacking:
        raise InputImageError(
            f"{len(lacking)} slice(s) of the DICOM series in {folder} (e.g. {lacking[0]}) have no "
            "ImagePositionPatient, ImageOrientationPatient or PixelSpacing, so where they lie in the "
            "body is unknown. Export the series again from the scanner or PACS with full headers.")
    orientations = np.array([[float(v) for v in h.ImageOrientationPatient] for h in headers])
    grids = {(int(h.Rows), int(h.Columns), *np.round(np.asarray(h.PixelSpacing, float), 4)) for h in headers}
    if np.abs(orientations - orientations[0]).max() > 1e-3 or len(grids) > 1:
        raise InputImageError(
            f"The slices of the DICOM series in {folder} differ in orientation or size (a localizer "
            "or reformatted images mixed into the scan?). Put only the axial scan's slices in the folder.")
    row = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    normal = np.cross(row, orientations[0, 3:])
    normal /= np.linalg.norm(normal)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    gaps = np.diff(positions[order] @ normal)
    if gaps.min() < 0.01:
        first, second = (Path(files[order[i]]).name for i in (gaps.argmin(), gaps.argmin() + 1))
        raise InputImageError(
            f"Two slices of the DICOM series in {folder} ({first}, {second}) lie at the same position: "
            "the folder holds repeated slices or two scans under one series. Keep one scan per folder.")
    spacing = headers[0].PixelSpacing  # (between rows, between columns)
    return _Slices(files=[files[i] for i in order], positions=positions[order],
                   axes=np.stack([row, np.cross(normal, row), normal]),
                   pixel_mm=(float(spacing[1]), float(spacing[0])))


def _evenly_stacked(slices: _Slices) -> bool:
    """Whether ITK's reader places the slices right: it assumes them stacked along the normal at one
    even step (its origin is the first slice, its step the mean gap), so a tilt's shear or uneven gaps
    put slices elsewhere. A slice may be off by half a gap and at most 1 mm (scanners round positions;
    a helical scan's last slice is often closer, e.g. invesalius-0051's: 0.5 mm off), no more than a
    voxel of the model grids (1 mm in the paper, 2 mm in the default model); beyond that we resample."""
    offsets = slices.positions - slices.positions[0]
    step = offsets[-1] @ slices.axes[2] / (len(offsets) - 1)
    even = np.outer(np.arange(len(offsets)) * step, slices.axes[2])
    return float(np.linalg.norm(offsets - even, axis=1).max()) <= min(1.0, 0.5 * step)


def _resample_slices(folder: Path, slices: _Slices) -> sitk.Image:
    """The slices on a regular grid along their row, column and normal axes (float32, HU).

    Each voxel interpolates linearly along the normal between the two slices around it, each sampled
    bilinearly where the voxel projects into that slice (the tilt shears slices against each other).
    The grid covers every slice; voxels outside all of them hold air. The pixel spacing is kept in
    plane; through-slice, the step is the finest gap (keeps the thin slices' detail) but not below
    the pixel spacing (overlapping reconstructions would only make the volume huge), shortened so
    that whole steps run from the first slice to the last."""
    try:
        pixels = [sitk.GetArrayFromImage(sitk.ReadImage(f)).squeeze().astype(np.float32) for f in slices.files]
    except RuntimeError as error:  # GDCM applies RescaleSlope/Intercept above: pixels are in HU
        raise InputImageError(f"The DICOM series in {folder} could not be read ({_first_line(error)}).") from None
    air = max(float(min(p.min() for p in pixels)), -1024.0)  # padding (e.g. -3024) is not air
    offsets = (slices.positions - slices.positions[0]) @ slices.axes.T / (*slices.pixel_mm, 1.0)
    offsets[:, :2] -= offsets[:, :2].min(axis=0)  # in-plane: output pixel index of each slice's (0, 0)
    depth = offsets[:, 2]
    count = int(np.ceil(depth[-1] / max(np.diff(depth).min(), min(slices.pixel_mm)) - 1e-6))
    size = np.ceil(offsets[:, :2].max(axis=0) - 1e-6).astype(int) + pixels[0].shape[::-1]
    grid = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)  # (row, column) indices of the output plane

    @functools.lru_cache(maxsize=2)  # planes run upwards: each slice serves consecutive planes only
    def on_grid(k: int) -> np.ndarray:
        at = grid - np.array([offsets[k, 1], offsets[k, 0]], np.float32)[:, None, None]
        values = ndimage.map_coordinates(pixels[k], at, order=1, mode="nearest")
        # A slice covers its pixels' area, half a pixel beyond the outer centres; outside it is air.
        limit = np.array(pixels[k].shape, np.float32)[:, None, None] - 0.5
        values[((at < -0.5) | (at > limit)).any(axis=0)] = air
        return values

    volume = np.empty((count + 1, size[1], size[0]), np.float32)
    for plane, z in enumerate(np.linspace(0.0, depth[-1], count + 1)):
        k = min(int(np.searchsorted(depth, z, side="right")) - 1, len(depth) - 2)
        weight = (z - depth[k]) / (depth[k + 1] - depth[k])
        volume[plane] = (1 - weight) * on_grid(k) + weight * on_grid(k + 1)
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((*slices.pixel_mm, depth[-1] / count))
    # Slice 0's pixel (0, 0) is the output's pixel offsets[0, :2] in its first plane.
    image.SetOrigin(tuple(slices.positions[0] - (offsets[0, :2] * slices.pixel_mm) @ slices.axes[:2]))
    image.SetDirection(tuple(slices.axes.T.ravel()))
    return image


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK puts the useful sentence last, after file and line numbers.
    return lines[-1] if lines else type(error).__name__


def file_digest(path: Path) -> str:
    """sha256 of a file, or of the names and bytes of every file of a folder (DICOM series)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else "").encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def image_case_name(path: Path) -> str:
    """The case name of an image file: its file name without the image extension."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name
