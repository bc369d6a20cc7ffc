"""Calibrating a model bundle on held-out healthy scans: the "calibrate on my scanner" workflow.

What it does:
- ``calibrate_bundle``: detection (``ppr.workflows.detection``) on each healthy scan, the
  statistics fitted (``ppr.statistics.calibration``) and written into the bundle, or into a new
  copy of it; the bundle's checksums are refreshed (``ppr.workflows.bundle.checksums_text``); both files are written
  whole to temporary names before either takes its name.
- ``calibration_scans``: the scans named by files and folders (image files, DICOM series folders).
- The intensity atlas (``ppr.statistics.intensity_atlas``) of the same healthy scans plus any
  ``atlas_images`` (healthy scans for the atlas only: the training scans may be among them, the atlas
  does not involve the network), written as ``intensity_atlas.npz`` when there are enough scans;
  with fewer, an earlier atlas is removed (it would not describe this scanner) and the shown map
  is the position z-map.

What it does not: change any bundle file but ``calibration.npz`` and ``intensity_atlas.npz`` (with
an output folder the bundle's other files are copied there unchanged), or estimate anything itself.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ppr.errors import BundleError, PPRError
from ppr.image.imageio import image_case_name, read_image, scans_in, write_text
from ppr.statistics.calibration import (
    MIN_SCANS, Calibration, CalibrationConfig, fit_calibration_scans, save_calibration,
)
from ppr.image.preprocess import to_model_space
from ppr.statistics.intensity_atlas import fit_intensity_atlas, soft_tissue_mask
from ppr.statistics.scores import BRAIN_REGIONS, focus_mask, head_z_map
from ppr.workflows.bundle import CALIBRATION, CHECKSUMS, INTENSITY_ATLAS, checksums_text, load_bundle
from ppr.workflows.detection import DetectOptions, detect


ProgressFn = Callable[[float, str], None]


def calibrate_bundle(
    bundle_path: str | Path,
    images: Sequence[str | Path],
    config: CalibrationConfig = CalibrationConfig(),
    stride: int = 1,
    device: str = "auto",
    progress: ProgressFn | None = None,
    allow_training_scans: bool = False,
    output: str | Path | None = None,
    atlas_images: Sequence[str | Path] = (),
) -> tuple[Calibration, Path]:
    """Detect each healthy image with the bundle, fit the statistics, store them in a bundle.

    ``images``: scan files, DICOM series folders, or folders holding either (``calibration_scans``).
    ``output`` None: into ``bundle_path`` itself (a folder; a .zip is read-only here), replacing any
    earlier ``calibration.npz``. ``output`` a new (or empty) folder: a copy of the bundle with the new
    calibration, the original untouched; the folder appears only once the calibration succeeded.
    ``checksums.json`` is rewritten so ``load_bundle`` accepts the result. Scans the bundle was
    trained on are refused unless ``allow_training_scans``: the network has learnt them, so their
    errors are low and would make every new scan look anomalous. A scan that cannot be read or
    detected stops the calibration with its path in the message. Returns the calibration and the
    path of the written ``calibration.npz``. ``atlas_images``: more healthy scans for the intensity
    atlas only (e.g. the training scans); the atlas is fitted when the scans are at least
    ``MIN_SCANS + 1`` together, and is left out (an earlier one removed) otherwise.
    """
    bundle_path = Path(bundle_path)
    bundle = load_bundle(bundle_path)
    target = bundle_path if output is None else Path(output)
    if not bundle_path.is_dir() and output is None:
        raise BundleError(
            f"{bundle_path} is a zipped bundle: unzip it into a folder, calibrate the folder, and zip it again."
        )
    if output is not None:
        _check_new_bundle_folder(bundle_path, target)
    images = calibration_scans(images)
    names = [image_case_name(Path(image)) for image in images]
    if len(images) < MIN_SCANS:
        found = f" ({', '.join(names)})" if names else ""
        raise PPRError(
            f"Calibration needs at least {MIN_SCANS} healthy scans, got {len(images)}{found}: "
            "give more held-out healthy head CTs (10 or more give stable statistics)."
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PPRError(f"These scans are given twice: {', '.join(repeated)}. Give each healthy scan once.")
    seen = sorted(set(names) & training_cases(bundle.info))
    if seen and not allow_training_scans:
        raise PPRError(
            f"The model was trained on {', '.join(seen)}: calibrate with held-out healthy scans "
            "(or pass --allow-training-scans if you know what you are doing)."
        )
    atlas_images = calibration_scans(atlas_images) if atlas_images else []
    atlas_names = [image_case_name(Path(image)) for image in atlas_images]
    repeated = sorted(set(atlas_names) & set(names))
    if repeated:
        raise PPRError(f"These scans are given for the calibration and for the atlas: {', '.join(repeated)}. "
                       "Give each healthy scan once.")
    # The statistics are of the raw error: an existing (maybe other-grid) calibration must not be applied.
    options = DetectOptions(stride=stride, device=device, use_calibration=False)
    volumes: list[np.ndarray] = []
    heads: list[np.ndarray] = []  # each scan's soft tissue (head less bone), where the atlas looks
    error_maps: list[tuple[np.ndarray, np.ndarray]] = []  # (error, measured head) for the held-out position z

    def scans() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for index, image in enumerate(images):
            if progress:
                progress(index / len(images), f"detecting {names[index]}")
            try:
                result = detect(read_image(image), bundle, options)
            except PPRError as error:  # say which of the scans it was
                raise type(error)(f"{image}: {error}") from None
            except Exception as error:  # still name the scan; the cause stays chained for a traceback
                raise PPRError(f"{image}: this scan could not be processed ({error!r}). "
                               "Leave it out, or check that it is a readable head CT.") from error
            if bundle.method == "ppr":  # only PPR bundles get an atlas
                volumes.append(sitk.GetArrayFromImage(result.volume_model))
                heads.append(soft_tissue_mask(sitk.GetArrayViewFromImage(result.windowed_hu_model),
                                              sitk.GetArrayViewFromImage(result.head_mask_model) > 0,
                                              bundle.preprocess))
            # Only the measured head: places whose patch reaches a cut of the field of view are no evidence.
            error_maps.append((sitk.GetArrayFromImage(result.error_map_model),
                               sitk.GetArrayFromImage(result.measured_mask_model) > 0))
            yield error_maps[-1]

    # The reference's brain and skull, where detection looks for the most anomalous point too.
    everywhere = np.ones(bundle.reference.GetSize()[::-1], dtype=bool)
    brain_and_skull = focus_mask(bundle.region_masks, everywhere)
    brain = np.zeros_like(everywhere)
    for name in BRAIN_REGIONS:
        brain |= bundle.region_masks.get(name, False)
    calibration = fit_calibration_scans(scans(), names, config, brain_and_skull, bundle.error_unit,
                                        brain_mask=brain if brain.any() else None)
    atlas = None
    if len(names) + len(atlas_images) >= MIN_SCANS + 1 and bundle.method == "ppr":
        for index, image in enumerate(atlas_images):
            if progress:
                progress(index / len(atlas_images), f"placing {atlas_names[index]} for the intensity atlas")
            try:
                placed = to_model_space(read_image(image), bundle.reference, bundle.preprocess, bundle.intensity_anchor)
            except PPRError as error:
                raise type(error)(f"{image}: {error}") from None
            volumes.append(sitk.GetArrayFromImage(placed.volume))
            heads.append(soft_tissue_mask(sitk.GetArrayViewFromImage(placed.windowed_hu),
                                          sitk.GetArrayViewFromImage(placed.head_mask) > 0, bundle.preprocess))
        if progress:
            progress(1.0, "fitting the intensity atlas")
        # The anomaly map's threshold needs each calibration scan's position z against the others:
        # with MIN_SCANS or fewer there are too few others, and the intensity |z| alone sets it.
        held_out = (_held_out_position_z(error_maps, names, config, bundle.error_unit)
                    if len(names) > MIN_SCANS else [])
        atlas = fit_intensity_atlas(volumes, heads, names + atlas_names, brain_and_skull, held_out,
                                    calibration.overlay_threshold_z)
    del volumes, heads, error_maps
    if progress:
        progress(1.0, "writing the calibration")
    if output is None:
        return calibration, _write_into(bundle_path, calibration, atlas)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _copy_bundle_files(bundle_path, partial)
        _write_into(partial, calibration, atlas)
        if target.exists():
            target.rmdir()  # checked empty above
        partial.replace(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return calibration, target / "calibration.npz"


def _held_out_position_z(error_maps: Sequence[tuple[np.ndarray, np.ndarray]], names: Sequence[str],
                         config: CalibrationConfig, unit: str) -> list[np.ndarray]:
    """Each calibration scan's position z-map against the statistics of the other calibration scans
    (0 outside its measured head): what a new healthy scan gives, for the anomaly map's threshold."""
    held_out = []
    for index, (error, measured) in enumerate(error_maps):
        others = [i for i in range(len(error_maps)) if i != index]
        calibration = fit_calibration_scans((error_maps[i] for i in others), [names[i] for i in others], config,
                                            unit=unit)
        held_out.append(head_z_map(error, measured, calibration))
    return held_out


def _write_into(folder: Path, calibration: Calibration, atlas: Calibration | None = None) -> Path:
    """``calibration.npz`` (and ``intensity_atlas.npz``, or none) into a bundle folder and its checksums
    refreshed: all written in full to temporary names first (a full disk stops here with
    ``OutputFileError`` and the bundle unchanged), then renamed."""
    partial = folder / f".{CALIBRATION}.partial"
    atlas_partial = folder / f".{INTENSITY_ATLAS}.partial"
    listing = folder / f".{CHECKSUMS}.partial"
    try:
        save_calibration(calibration, partial)
        replaced = {CALIBRATION: partial}
        if atlas is not None:
            save_calibration(atlas, atlas_partial)
            replaced[INTENSITY_ATLAS] = atlas_partial
        text = checksums_text(folder, replaced)
        if atlas is None:  # an earlier atlas does not describe this calibration's scanner
            listed = json.loads(text)
            listed["files"].pop(INTENSITY_ATLAS, None)
            text = json.dumps(listed, indent=2, sort_keys=True) + "\n"
        write_text(listing, text)
        partial.replace(folder / CALIBRATION)
        if atlas is not None:
            atlas_partial.replace(folder / INTENSITY_ATLAS)
        listing.replace(folder / CHECKSUMS)
        if atlas is None:
            (folder / INTENSITY_ATLAS).unlink(missing_ok=True)
    finally:
        partial.unlink(missing_ok=True)
        atlas_partial.unlink(missing_ok=True)
        listing.unlink(missing_ok=True)
    return folder / CALIBRATION


def _check_new_bundle_folder(source: Path, target: Path) -> None:
    if target.resolve() == source.resolve():
        raise PPRError(f"--out {target} is the bundle itself: give a new folder, or leave --out away to "
                       "calibrate the bundle in place.")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PPRError(f"{target} already exists and is not an empty folder: give a new folder for the "
                       "calibrated bundle.")
    if not target.parent.is_dir():
        raise PPRError(f"The folder {target.parent} for the calibrated bundle does not exist: create it first.")


def _copy_bundle_files(source: Path, folder: Path) -> None:
    """The bundle's files (a folder, or the files of a zipped bundle) into a new ``folder``, without
    its calibration and checksums (written afresh)."""
    folder.mkdir(parents=True)
    skipped = {CALIBRATION, CHECKSUMS, INTENSITY_ATLAS}
    if source.is_dir():
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name not in skipped and not path.name.startswith("."):
                shutil.copy2(path, folder / path.name)
        return
    with zipfile.ZipFile(source) as archive:
        for member in archive.infolist():
            name = Path(member.filename).name
            if member.is_dir() or not name or name in skipped or name.startswith("."):
                continue
            with archive.open(member) as reading, open(folder / name, "wb") as writing:
                shutil.copyfileobj(reading, writing)


def calibration_scans(items: Sequence[str | Path]) -> list[Path]:
    """The scans named by ``items``, in order: a file is one scan; a folder holding a DICOM series
    is one scan; any other folder gives its image files (NIfTI, NRRD, MetaImage) and its
    sub-folders that hold a DICOM series, sorted by name (not deeper)."""
    scans: list[Path] = []
    for item in map(Path, items):
        if not item.exists():
            raise PPRError(f"{item} does not exist: check the paths of the healthy scans.")
        found = [item] if item.is_file() else scans_in(item)
        if not found:
            raise PPRError(f"{item} holds no scan: give NIfTI / NRRD / MetaImage files or DICOM series "
                           "folders of healthy head CTs.")
        scans += found
    return scans


def training_cases(bundle_info: Mapping[str, Any]) -> set[str]:
    """Names of the scans a bundle was trained on (empty when the bundle does not say)."""
    training = bundle_info.get("training", {}) if isinstance(bundle_info, Mapping) else {}
    return {str(name) for name in training.get("cases", []) or []}
