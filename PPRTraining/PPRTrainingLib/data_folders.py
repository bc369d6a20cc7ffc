"""Find the head CT images to train on in the folders a user names.

An image is a file with a volume suffix (NIfTI, NRRD, MetaImage) or a sub-folder holding a DICOM
series (any file names GDCM reads, ``ppr.image.imageio.is_scan``). Label maps that sit beside the scans (``*_mask*``, ``*label*``,
``*seg*``) are skipped by default. This module only lists paths: it does not read or check images
(``ppr`` does that when it trains) and does not decide which scans are healthy: the user does.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

from ppr.errors import PPRError
from ppr.image.imageio import LABEL_MAP_PATTERNS, VOLUME_SUFFIXES, is_scan

DEFAULT_EXCLUDES: tuple[str, ...] = LABEL_MAP_PATTERNS


def images_in_folders(folders: Sequence[Path], exclude: Sequence[str] = DEFAULT_EXCLUDES) -> list[Path]:
    """Every image in ``folders`` (not recursive, sorted per folder), excluded names dropped.

    >>> images_in_folders([Path("healthy_scans")])  # doctest: +SKIP
    [PosixPath('healthy_scans/case01.nii.gz'), PosixPath('healthy_scans/case02.nii.gz')]

    Raises PPRError when a folder does not exist or holds no image, naming the folder.
    """
    images: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise PPRError(f"The data folder {folder} does not exist: check the path.")
        found = [path for path in sorted(folder.iterdir()) if is_scan(path) and not _excluded(path, exclude)]
        if not found:
            raise PPRError(
                f"No head CT images found in {folder}: put healthy scans there as "
                f"{', '.join(VOLUME_SUFFIXES)} files or DICOM series sub-folders "
                f"(names matching {', '.join(exclude) or 'nothing'} are skipped)."
            )
        images += found
    return _unique(images)


def _excluded(path: Path, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path.name.lower(), pattern.lower()) for pattern in exclude)


def _unique(paths: list[Path]) -> list[Path]:
    # The same folder named twice must not weigh its scans twice in training.
    seen: set[Path] = set()
    unique = []
    for path in paths:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
