"""Reading and writing images at the edges of the pipeline.

Reads anything SimpleITK reads from a file (NIfTI, NRRD, MHA, a single DICOM file, ...) and DICOM
series from a folder. It does not check whether the image is a usable head CT (see
``ppr.validation``) and never changes the file it reads.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import SimpleITK as sitk

from ppr.errors import InputImageError

PathLike = str | os.PathLike


def read_image(path: PathLike) -> sitk.Image:
    """Read an image file, or the largest DICOM series in a folder, keeping its geometry."""
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path} does not exist: check the path of the input image.")
    if path.is_dir():
        return _read_dicom_folder(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputImageError(
            f"{path} could not be read as an image ({_first_line(error)}). "
            "Use a NIfTI, NRRD, MHA file or a folder holding one DICOM series."
        ) from None


def write_image(image: sitk.Image, path: PathLike) -> None:
    """Write an image (compressed where the format allows), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def _read_dicom_folder(folder: Path) -> sitk.Image:
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
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as error:
        raise InputImageError(
            f"The DICOM series in {folder} could not be read ({_first_line(error)})."
        ) from None


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
