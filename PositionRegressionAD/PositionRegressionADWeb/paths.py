"""Safe names of files under the viewer's data folder (``--data-dir``): resolving and listing them.

The page names scans and model bundles as text, and nothing it sends is trusted: a name is
accepted only when it is a relative POSIX path without ``..``, ``.``, empty or hidden parts, and
when it resolves (symbolic links followed) to an existing path inside the data folder. Listing
walks the data folder without following links and keeps only what ``resolve_under`` would accept,
so every name the page is offered can be loaded and nothing else can.

This module does not read what the files hold: ``uploads`` checks that a file is a volume.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path, PurePosixPath

from PositionRegressionADLib.model_card import CONFIG
from ppr.errors import PPRError
from ppr.image.imageio import holds_dicom_series

# Single-file volume formats only: a detached header (.nhdr, .mhd, .hdr) names a data file that
# could lie anywhere on the server.
SCAN_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")
BUNDLE_ARCHIVE_SUFFIX = ".zip"
# A data folder is browsed from a page: bound the walk so a huge tree cannot stall the server.
MAX_LISTED = 2000
MAX_DEPTH = 6
MAX_NAME_CHARS = 1000


class PathRefusedError(PPRError):
    """A name sent by the page does not designate a file the viewer may read."""


def data_folder(path: Path) -> Path:
    """The data folder, resolved; a ``PathRefusedError`` when it is not an existing folder."""
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_dir():
        raise PathRefusedError(f"The data folder {path} does not exist or is not a folder: "
                               "start the viewer with --data-dir set to a folder of scans and model bundles.")
    return resolved


def check_relative_name(name: object) -> PurePosixPath:
    """``name`` as a relative path without any part that could leave or hide in the data folder."""
    if not isinstance(name, str) or not name.strip():
        raise PathRefusedError("No file was chosen: pick a scan or model bundle from the list.")
    if len(name) > MAX_NAME_CHARS or "\x00" in name or "\\" in name:
        raise PathRefusedError("That file name is not accepted: pick a file from the list.")
    path = PurePosixPath(name)
    if path.is_absolute():
        raise PathRefusedError(f"{name!r} is an absolute path; only files inside the data folder can be opened: "
                               "pick a file from the list.")
    if any(part in ("", "..", ".") or part.startswith(".") for part in name.split("/")):
        raise PathRefusedError(f"{name!r} is refused: a name with '..', '.', empty or hidden parts could leave "
                               "the data folder; only files inside it can be opened: pick a file from the list.")
    return path


def resolve_under(root: Path, name: object) -> Path:
    """The existing file or folder ``name`` designates inside ``root``, or a ``PathRefusedError``.

    Symbolic links are followed and the target must still lie inside ``root``.
    """
    relative = check_relative_name(name)
    root = Path(root).resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root):
        raise PathRefusedError(f"{name!r} points outside the data folder; only files inside it can be opened: "
                               "pick a file from the list.")
    if not candidate.exists():
        raise PathRefusedError(f"{name!r} is not in the data folder (any more): refresh the page and pick again.")
    return candidate


def is_scan_name(name: str) -> bool:
    return name.lower().endswith(SCAN_SUFFIXES)


def resolve_scan(root: Path, name: object) -> Path:
    """A scan inside ``root`` (see ``resolve_under``): a file with a single-file volume suffix, or a
    folder holding a DICOM series."""
    path = resolve_under(root, name)
    if path.is_dir() and holds_dicom_series(path):
        return path
    if not path.is_file() or not is_scan_name(path.name):
        raise PathRefusedError(f"{name!r} is not a scan; the viewer opens {', '.join(SCAN_SUFFIXES)} files "
                               "and folders holding a DICOM series.")
    return path


def is_bundle(path: Path) -> bool:
    """A model bundle folder (holds config.json) or a .zip that holds a config.json."""
    if path.is_dir():
        return (path / CONFIG).is_file()
    if path.is_file() and path.name.lower().endswith(BUNDLE_ARCHIVE_SUFFIX):
        try:
            with zipfile.ZipFile(path) as archive:
                return any(PurePosixPath(member).name == CONFIG for member in archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    return False


def resolve_bundle(root: Path, name: object) -> Path:
    """A model bundle inside ``root`` (see ``resolve_under`` and ``is_bundle``)."""
    path = resolve_under(root, name)
    if not is_bundle(path):
        raise PathRefusedError(f"{name!r} is not a model bundle (a folder or .zip made by PPR Training).")
    return path


def _walk(root: Path):
    """(folder, relative parts, sub-folder names, file names) under ``root``, hidden entries skipped."""
    for folder, subfolders, files in os.walk(root, followlinks=False):
        relative = Path(folder).relative_to(root).parts
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        if len(relative) >= MAX_DEPTH:
            subfolders[:] = []
        yield Path(folder), relative, subfolders, sorted(name for name in files if not name.startswith("."))


def _accepted(root: Path, name: str) -> bool:
    try:
        resolve_under(root, name)
    except PathRefusedError:
        return False
    return True


def list_scans(root: Path, limit: int = MAX_LISTED) -> list[str]:
    """Relative names of the scans under ``root``: scan files, and folders holding a DICOM series
    (listed as one scan, not entered); model bundles' own files left out."""
    root = Path(root).resolve()
    found: list[str] = []
    for folder, relative, subfolders, files in _walk(root):
        if (folder / CONFIG).is_file():
            subfolders[:] = []  # a bundle's reference image is not a scan to open
            continue
        if relative and holds_dicom_series(folder) and _accepted(root, "/".join(relative)):
            found.append("/".join(relative))
            subfolders[:] = []
            if len(found) >= limit:
                return found
            continue
        for file_name in files:
            name = "/".join((*relative, file_name))
            if is_scan_name(file_name) and _accepted(root, name) and (root / name).is_file():
                found.append(name)
                if len(found) >= limit:
                    return found
    return found


def list_bundles(root: Path, limit: int = MAX_LISTED) -> list[str]:
    """Relative names of the model bundles (folders and .zip files) under ``root``."""
    root = Path(root).resolve()
    found: list[str] = []
    for folder, relative, subfolders, files in _walk(root):
        for entry in [*subfolders, *files]:
            name = "/".join((*relative, entry))
            if _accepted(root, name) and is_bundle(root / name):
                found.append(name)
                if len(found) >= limit:
                    return found
        # Nothing inside a bundle is another bundle.
        subfolders[:] = [entry for entry in subfolders if not (folder / entry / CONFIG).is_file()]
    return sorted(found)
