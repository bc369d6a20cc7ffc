"""Model bundles: everything a detection needs, in one folder (or one .zip of it).

Layout::

    weights.pt        network state dict (spectral-norm parametrisation kept: resumable, exact)
    config.json       format version, network {m, patch_size} (PPR) or {method: "ae", m, levels,
                      bottleneck} (the autoencoder baseline), the PreprocessConfig, training
                      summary (cases, steps, seconds, final losses), torch / ppr versions, date
    reference.nii.gz  the reference head in model space (float32 HU on the model grid)
    checksums.json    sha256 of every file above (and of calibration.npz when present)
    calibration.npz   optional: per-voxel healthy error statistics (``ppr.statistics.calibration``)

``load_bundle`` checks the format version and every checksum, so a missing, corrupt, truncated or
incompatible bundle is refused with a ``BundleError`` that says what to do. ``write_checksums`` is
how another tool that adds a file (calibration) keeps the bundle valid.

What it does not: train, calibrate or detect; it only writes and reads bundles.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk
import torch

import ppr
from ppr.config import PreprocessConfig
from ppr.errors import BundleError
from ppr.image.imageio import write_text
from ppr.networks.autoencoder import AutoEncoder3D
from ppr.networks.network import PPRNet

if TYPE_CHECKING:  # for the annotation only: preprocess brings pydicom (see _read_reference)
    from ppr.image.preprocess import IntensityAnchor

FORMAT_VERSION = 1
WEIGHTS = "weights.pt"
CONFIG = "config.json"
REFERENCE = "reference.nii.gz"
CHECKSUMS = "checksums.json"
CALIBRATION = "calibration.npz"
INTENSITY_ATLAS = "intensity_atlas.npz"
REQUIRED_FILES = (WEIGHTS, CONFIG, REFERENCE)
# The unit of each method's error map: PPR's position error is in mm, the AE's residual is in
# the preprocessed intensity scale [0, 1].
ERROR_UNITS = {"ppr": "mm", "ae": "intensity"}


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded model bundle.

    network: the trained PPRNet in eval mode (fold it with ``ppr.networks.network.fold_spectral_norm``
        or let ``ppr.networks.inference`` do it), or the AutoEncoder3D of an autoencoder bundle
        (``method`` "ae").
    preprocess: how scans are brought into this model's space.
    reference: the reference head in model space (float32 HU), the fixed image of registration.
    info: the whole config.json (training summary, versions, date).
    calibration: ``ppr.statistics.calibration.Calibration`` when calibration.npz is present, else None.
    intensity_atlas: the healthy density per place (``ppr.statistics.intensity_atlas``, a Calibration
        of unit "intensity") when intensity_atlas.npz is present, else None; with a calibration it
        makes the shown anomaly map (``ppr.workflows.detection``).
    """

    network: PPRNet | AutoEncoder3D
    preprocess: PreprocessConfig
    reference: sitk.Image
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    checksum: str = ""
    calibration: Any = None
    intensity_atlas: Any = None

    @property
    def method(self) -> str:
        """"ppr" (position regression) or "ae" (the autoencoder baseline)."""
        return network_method(self.info.get("network", {}))

    @property
    def error_unit(self) -> str:
        """Unit of this model's error map: "mm" (PPR) or "intensity" (AE residual)."""
        return ERROR_UNITS[self.method]

    @cached_property
    def intensity_anchor(self) -> IntensityAnchor:
        """What every scan's intensities are normalised against, computed once per loaded bundle."""
        from ppr.image.preprocess import intensity_anchor  # here: preprocess brings pydicom, see _read_reference

        return intensity_anchor(self.reference, self.preprocess)

    @cached_property
    def region_masks(self) -> dict[str, np.ndarray]:
        """Region masks (bool, model space) of the reference, computed once per loaded bundle."""
        from ppr.image.preprocess import region_masks  # here: preprocess brings pydicom, see _read_reference

        return region_masks(self.reference, self.preprocess)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_checksums(folder: Path) -> Path:
    """(Re)write checksums.json over every file of a bundle folder (after adding or changing one),
    atomically (``ppr.image.imageio.write_text``)."""
    path = Path(folder) / CHECKSUMS
    write_text(path, checksums_text(folder))
    return path


def checksums_text(folder: Path, replaced: Mapping[str, Path] | None = None) -> str:
    """checksums.json's text over every file of a bundle folder but hidden (temporary) ones;
    ``replaced``: name -> the file that is about to take that name (its checksum is listed)."""
    folder = Path(folder)
    replaced = dict(replaced or {})
    files = {p.name: p for p in folder.iterdir()
             if p.is_file() and p.name != CHECKSUMS and not p.name.startswith(".")}
    files.update(replaced)
    checksums = {"algorithm": "sha256", "files": {name: sha256_file(files[name]) for name in sorted(files)}}
    return json.dumps(checksums, indent=2, sort_keys=True) + "\n"


def network_method(description: dict[str, Any]) -> str:
    """The method of a config.json "network" entry; bundles from before the AE name none: PPR."""
    return str(description.get("method", "ppr"))


def network_description(network: PPRNet | AutoEncoder3D) -> dict[str, Any]:
    """The config.json "network" entry: what ``build_network`` needs to rebuild it."""
    if isinstance(network, AutoEncoder3D):
        return {"method": "ae", "m": network.m, "levels": network.levels, "bottleneck": network.bottleneck}
    return {"m": network.m, "patch_size": network.patch_size}  # unchanged since format 1


def build_network(description: dict[str, Any]) -> PPRNet | AutoEncoder3D:
    """The untrained network a config.json "network" entry describes (ValueError if it cannot)."""
    method = network_method(description)
    if method == "ae":
        return AutoEncoder3D(int(description["m"]), int(description["levels"]), int(description["bottleneck"]))
    if method != "ppr":
        raise ValueError(f"unknown method {method!r}")
    return PPRNet(int(description["m"]), int(description["patch_size"]))


def bundle_config(network: PPRNet | AutoEncoder3D, preprocess: PreprocessConfig,
                  training: dict[str, Any]) -> dict[str, Any]:
    """The content of config.json."""
    return {
        "format_version": FORMAT_VERSION,
        "network": network_description(network),
        "preprocess": preprocess.to_dict(),
        "training": training,
        "versions": {"ppr": ppr.__version__, "torch": torch.__version__, "SimpleITK": sitk.Version_VersionString()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def save_bundle(path: Path, network: PPRNet | AutoEncoder3D, preprocess: PreprocessConfig, reference: sitk.Image,
                training: dict[str, Any], extra_files: dict[str, Path] | None = None) -> Path:
    """Write a bundle folder (or a .zip when ``path`` ends in .zip); replaces an existing one.

    The bundle is assembled in a temporary folder beside ``path`` and moved in place at the end,
    so an interrupted save never leaves a half-written bundle under the real name.
    ``extra_files`` (name -> file) are copied in and checksummed (e.g. training_log.json).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        torch.save(network.state_dict(), work / WEIGHTS)
        (work / CONFIG).write_text(json.dumps(bundle_config(network, preprocess, training), indent=2) + "\n")
        sitk.WriteImage(sitk.Cast(reference, sitk.sitkFloat32), str(work / REFERENCE), useCompression=True)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, work / name)
        write_checksums(work)
        work.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        if path.suffix == ".zip":
            _zip_folder(work, path)
        else:
            if path.exists():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            work.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def _zip_folder(folder: Path, path: Path) -> None:
    partial = path.with_suffix(".zip.partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(folder.iterdir()):
            archive.write(file, arcname=file.name)
    partial.replace(path)


def load_bundle(path: Path | str) -> ModelBundle:
    """Read and check a bundle folder or .zip; any problem is a ``BundleError`` for the user."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"No model bundle at {path}: check the path, or train one with `python -m ppr train`.")
    if path.is_dir():
        return _load_folder(path, path)
    try:
        with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory(prefix="ppr-bundle-") as folder:
            _extract_flat(archive, Path(folder), path)
            return _load_folder(Path(folder), path)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise BundleError(f"The model bundle {path} is not a readable zip file ({error}): it may be "
                          "truncated or damaged; download or copy it again.") from None


# The largest file a zipped bundle may hold, and all of them together (the default bundle's largest
# file is under 2 MB; a 256^3 reference or a wide network stays well below): more is no bundle of ours
# and is not unpacked (a zip bomb would fill memory or the disk).
MAX_MEMBER_BYTES = 1 << 30
MAX_BUNDLE_BYTES = 2 << 30


def _extract_flat(archive: zipfile.ZipFile, folder: Path, shown: Path) -> None:
    """Extract the bundle's files; a zip of the bundle folder itself (one level down) works too.
    Refuses (``BundleError``) a member with no plain file name (``sub/..``), a name given twice, and
    members larger than ``MAX_MEMBER_BYTES`` (or together than ``MAX_BUNDLE_BYTES``), before unpacking."""
    members = [info for info in archive.infolist() if not info.is_dir()]
    names = [info.filename.replace("\\", "/").rsplit("/", 1)[-1] for info in members]  # as written, not normalised
    for info, name in zip(members, names):
        if name in ("", ".", "..") or name != name.strip() or any(ord(c) < 32 for c in name):
            raise BundleError(f"The model bundle {shown} holds a member named {info.filename!r}, which is no "
                              "plain file name: it was not written by ppr; download or copy the bundle again.")
        if names.count(name) > 1:
            raise BundleError(f"The model bundle {shown} holds {name} twice: it was not written by ppr; "
                              "download or copy the bundle again.")
        if info.file_size > MAX_MEMBER_BYTES:
            raise BundleError(f"The model bundle {shown} holds {name} of {info.file_size / 2**30:.1f} GiB, more "
                              f"than a bundle file may be ({MAX_MEMBER_BYTES / 2**30:.0f} GiB): it is not a "
                              "model bundle; it was not unpacked.")
    total = sum(info.file_size for info in members)
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(f"The model bundle {shown} unpacks to {total / 2**30:.1f} GiB, more than a bundle may "
                          f"be ({MAX_BUNDLE_BYTES / 2**30:.0f} GiB): it is not a model bundle; it was not unpacked.")
    for info, name in zip(members, names):
        # streamed: zipfile stops at the declared size and checks the CRC at the end
        with archive.open(info) as reading, open(folder / name, "wb") as writing:
            shutil.copyfileobj(reading, writing, 1 << 20)


def _load_folder(folder: Path, shown: Path) -> ModelBundle:
    checksums = _verified_checksums(folder, shown)
    info = _read_config(folder, shown)
    try:
        preprocess = PreprocessConfig.from_dict(info["preprocess"])
        network = build_network(info["network"])
    except (KeyError, TypeError, ValueError) as error:
        raise BundleError(f"The model bundle {shown} has an invalid config.json ({error}): it was not "
                          "written by a compatible version; train or download it again.") from None
    try:
        state = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Not PyTorch's advice to load with weights_only=False: that would run code from the file.
        raise BundleError(f"The weights file of the model bundle {shown} holds more than plain tensors "
                          "(Python objects that would run code when loaded), so it is refused: use a bundle "
                          "written by `python -m ppr train` from a source you trust.") from None
    except Exception as error:
        raise BundleError(f"The weights of the model bundle {shown} cannot be read "
                          f"({str(error).splitlines()[0]}): train or download the bundle again.") from None
    try:
        network.load_state_dict(state)
    except Exception as error:  # unpickling and shape errors mean the same to the user
        raise BundleError(f"The weights of the model bundle {shown} do not fit the network its config.json "
                          f"describes ({str(error).splitlines()[0]}): train or download the bundle again.") from None
    reference = _read_reference(folder, preprocess, shown)
    calibration = _read_calibration(folder / CALIBRATION) if CALIBRATION in checksums else None
    atlas = _read_calibration(folder / INTENSITY_ATLAS) if INTENSITY_ATLAS in checksums else None
    digest = hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    return ModelBundle(network.eval(), preprocess, reference, info, shown, digest, calibration, atlas)


def _verified_checksums(folder: Path, shown: Path) -> dict[str, str]:
    listing = folder / CHECKSUMS
    try:
        checksums = json.loads(listing.read_text())["files"]
    except FileNotFoundError:
        raise BundleError(f"The model bundle {shown} has no {CHECKSUMS}: it is incomplete; copy or "
                          "train it again.") from None
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"The {CHECKSUMS} of the model bundle {shown} is corrupt ({error}): copy or "
                          "train the bundle again.") from None
    for name in REQUIRED_FILES:
        if name not in checksums:
            raise BundleError(f"The model bundle {shown} does not list {name} in {CHECKSUMS}: it is "
                              "incomplete; copy or train it again.")
    for name in (CALIBRATION, INTENSITY_ATLAS):
        if (folder / name).exists() and name not in checksums:
            raise BundleError(f"The model bundle {shown} holds a {name} that its {CHECKSUMS} does not "
                              "list: run `python -m ppr calibrate` again, or delete that file.")
    for name, expected in checksums.items():
        file = folder / name
        if not file.is_file():
            raise BundleError(f"The model bundle {shown} is missing {name}: copy or train it again.")
        if sha256_file(file) != expected:
            raise BundleError(f"The file {name} of the model bundle {shown} is corrupt or truncated (its "
                              "checksum does not match): copy or train the bundle again.")
    return checksums


def _read_config(folder: Path, shown: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / CONFIG).read_text())
        version = int(info["format_version"])
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(f"The config.json of the model bundle {shown} is invalid ({error}): train or "
                          "download the bundle again.") from None
    if version > FORMAT_VERSION:
        raise BundleError(f"The model bundle {shown} has format version {version}, newer than this software "
                          f"reads ({FORMAT_VERSION}): update the extension.")
    if version < 1:
        raise BundleError(f"The model bundle {shown} has an unknown format version {version}: train it again.")
    return info


def _read_reference(folder: Path, preprocess: PreprocessConfig, shown: Path) -> sitk.Image:
    # here: preprocess brings pydicom, which loading a bundle (bench on a GPU machine) needs not
    from ppr.image.preprocess import model_grid_of

    try:
        reference = sitk.ReadImage(str(folder / REFERENCE), sitk.sitkFloat32)
        model_grid_of(reference, preprocess)
    except (RuntimeError, ValueError) as error:
        raise BundleError(f"The reference of the model bundle {shown} is unusable ({str(error).splitlines()[0]}): "
                          "train or download the bundle again.") from None
    return reference


def _read_calibration(path: Path) -> Any:
    """calibration.npz or intensity_atlas.npz (the same format)."""
    from ppr.statistics.calibration import load_calibration  # here: SciPy, which a bare GPU machine (bench) may lack

    return load_calibration(path)

