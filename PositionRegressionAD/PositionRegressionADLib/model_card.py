"""The model card the widget shows: what a model bundle is, read from its config.json.

Reads only config.json and checksums.json (from the bundle folder or its .zip), never the weights,
so it works before torch is installed and costs nothing. Checking a bundle (checksums, format,
weights) is ``ppr.workflows.bundle.load_bundle``'s job, done by the detector; this module only describes it.
"""

from __future__ import annotations

import html
import json
import zipfile
from pathlib import Path
from typing import Any

CONFIG = "config.json"
CHECKSUMS = "checksums.json"
CALIBRATION = "calibration.npz"


def read_bundle_file(path: Path, name: str) -> str:
    """Text of one file of a bundle folder or .zip (a zip of the folder itself works too)."""
    path = Path(path)
    if path.is_dir():
        return (path / name).read_text(encoding="utf-8")
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if Path(member).name == name:
                return archive.read(member).decode("utf-8")
    raise FileNotFoundError(f"{name} is not in {path}")


def bundle_info(path: Path) -> dict[str, Any]:
    """config.json of the bundle, with ``calibrated`` added (whether checksums list a calibration)."""
    info = json.loads(read_bundle_file(path, CONFIG))
    try:
        files = json.loads(read_bundle_file(path, CHECKSUMS)).get("files", {})
    except (FileNotFoundError, ValueError):
        files = {}
    info["calibrated"] = CALIBRATION in files
    return info


def model_card_lines(info: dict[str, Any]) -> list[str]:
    """Plain sentences about a bundle, from its config.json (missing fields are left out)."""
    lines = []
    network, preprocess, training = info.get("network", {}), info.get("preprocess", {}), info.get("training", {})
    if network:
        lines.append(f"Network width m = {network.get('m')}, patches of {network.get('patch_size')}³ voxels.")
    if preprocess:
        window = preprocess.get("window_hu", ["?", "?"])
        windowed = " (for scans exported in that window)" if preprocess.get("prewindowed") else ""
        lines.append(f"Model grid {preprocess.get('size')}³ at {preprocess.get('spacing_mm')} mm; "
                     f"window {window[0]} to {window[1]} HU{windowed}.")
    cases = training.get("case_count", training.get("cases"))
    if cases is not None:
        minutes = f", {training['seconds'] / 60:.0f} min" if isinstance(training.get("seconds"), (int, float)) else ""
        device = f" on {training['device']}" if training.get("device") else ""
        lines.append(f"Trained on {cases} healthy scans, {training.get('steps', '?')} steps{minutes}{device}.")
    if isinstance(training.get("final_loss"), (int, float)):
        validation = (f", validation {training['final_val_loss']:.3f}"
                      if isinstance(training.get("final_val_loss"), (int, float)) else "")
        lines.append(f"Final loss {training['final_loss']:.3f}{validation}.")
    lines.append("Calibrated on healthy scans." if info.get("calibrated") else "Not calibrated.")
    versions = info.get("versions", {})
    if versions or info.get("created"):
        made = ", ".join(f"{name} {version}" for name, version in versions.items())
        lines.append(f"Made {info.get('created', '')} with {made}.".replace("Made  with", "Made with"))
    return lines


def model_card_html(path: Path) -> str:
    """Rich text for the widget: the bundle's name and card, or what is wrong with the path."""
    path = Path(path)
    name = html.escape(path.name)
    if not path.exists():
        return (f"<b>{name}</b>: <span style='color:#c0392b'>not found at {html.escape(str(path))}</span>. "
                "Choose a model bundle (a folder or .zip made by PPR Training).")
    try:
        info = bundle_info(path)
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        return (f"<b>{name}</b>: <span style='color:#c0392b'>not a readable model bundle "
                f"({html.escape(str(error))})</span>.")
    body = "<br>".join(html.escape(line) for line in model_card_lines(info))
    return f"<b>{name}</b><br>{body}"
