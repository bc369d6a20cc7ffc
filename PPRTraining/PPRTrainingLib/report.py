"""Training report of a model bundle: loss curves (PNG) and a JSON summary, written next to it.

Reads the ``training_log.json`` that ``python -m ppr train`` writes with the bundle: the per-step
records of ``ppr.networks.training.train`` (step, training loss, seconds of training so far, and every
``val_every`` steps the validation loss, None without validation scans). The loss is the paper's
mean position error on normalised grid positions, so 0.01 is 1 % of the grid edge. The
report sits beside the bundle, not inside it, so the bundle's checksums stay valid. This module
does not train, does not evaluate detection, and uses matplotlib's Agg canvas only (no GUI).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ppr.errors import PPRError

TRAINING_LOG_NAME = "training_log.json"


@dataclass(frozen=True)
class TrainingLog:
    """Loss histories of one training run (steps counted from 1, seconds since the start)."""

    steps: np.ndarray
    loss: np.ndarray
    seconds: np.ndarray
    val_steps: np.ndarray
    val_loss: np.ndarray
    cases: list[str] | None = None
    validation_cases: list[str] | None = None


@dataclass(frozen=True)
class TrainingReport:
    """Where the report went, and its summary (the content of the JSON file)."""

    figure: Path
    summary_file: Path
    summary: dict[str, Any]


def find_training_log(bundle: Path) -> Path:
    """The training log of a bundle: in the bundle folder, in its cache folder, or beside it."""
    bundle = Path(bundle)
    candidates = [bundle / TRAINING_LOG_NAME, bundle.parent / f"{bundle.name}.cache" / TRAINING_LOG_NAME,
                  bundle.parent / TRAINING_LOG_NAME]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if zipfile.is_zipfile(bundle):
        return bundle
    raise PPRError(
        f"No {TRAINING_LOG_NAME} found for the model bundle {bundle}: it is written by "
        "`python -m ppr train`; train the bundle again or point to the folder it was trained into."
    )


def read_training_log(path: Path) -> TrainingLog:
    """Parse a training log (a JSON file, or a zipped bundle holding one); no step is an error."""
    try:
        data = json.loads(_log_text(Path(path)))
    except (OSError, KeyError, json.JSONDecodeError, zipfile.BadZipFile) as error:
        raise PPRError(f"The training log {path} cannot be read ({error}): train the bundle again.") from error
    records = _step_records(data)
    if not records:
        raise PPRError(f"The training log {path} holds no training step: the training stopped before its first step.")
    steps = np.array([int(r["step"]) for r in records])
    loss = np.array([float(r["loss"]) for r in records])
    seconds = np.array([float(r.get("seconds", math.nan)) for r in records])
    with_val = [r for r in records if r.get("val_loss") is not None]
    val_steps = np.array([int(r["step"]) for r in with_val], dtype=int)
    val_loss = np.array([float(r["val_loss"]) for r in with_val], dtype=float)
    cases = data.get("cases") if isinstance(data, dict) else None
    validation_cases = data.get("validation_cases") if isinstance(data, dict) else None
    return TrainingLog(steps, loss, seconds, val_steps, val_loss, cases, validation_cases)


def _log_text(path: Path) -> str:
    if path.suffix == ".json":
        return path.read_text(encoding="utf-8")
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == TRAINING_LOG_NAME]
        if not names:
            raise KeyError(f"{TRAINING_LOG_NAME} is not in the archive")
        return archive.read(min(names, key=len)).decode("utf-8")


def _step_records(data: Any) -> list[dict[str, Any]]:
    # ppr.networks.training.train() logs one record per step ({"step", "loss", "seconds", "val_loss"});
    # the file holds that list, bare or under "steps" / "log" next to other run details.
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in ("steps", "log"):
            if isinstance(data.get(key), list):
                return data[key]
    return []


def summarize(log: TrainingLog) -> dict[str, Any]:
    """First and final training loss (mean over the first 5 % / last 10 % of steps), validation."""
    n = len(log.loss)
    first = float(np.mean(log.loss[: max(1, n // 20)]))
    final = float(np.mean(log.loss[-max(1, n // 10):]))
    summary: dict[str, Any] = {
        "steps": int(log.steps[-1]),
        "seconds": _finite_or_none(log.seconds[-1]),
        "first_loss": first,
        "final_loss": final,
        "loss_reduction": 1.0 - final / first if first > 0 else None,
        "training_scans": len(log.cases) if log.cases is not None else None,
        "validation_scans": len(log.validation_cases) if log.validation_cases is not None else None,
        "validation": None,
    }
    if len(log.val_loss):
        best = int(np.argmin(log.val_loss))
        summary["validation"] = {
            "first": float(log.val_loss[0]),
            "final": float(log.val_loss[-1]),
            "best": float(log.val_loss[best]),
            "best_step": int(log.val_steps[best]),
            "evaluations": int(len(log.val_loss)),
        }
    return summary


def write_training_report(bundle: Path, training_log: Path | None = None) -> TrainingReport:
    """Write ``<bundle>_training_loss.png`` and ``<bundle>_training_report.json`` beside the bundle."""
    bundle = Path(bundle)
    log_path = Path(training_log) if training_log is not None else find_training_log(bundle)
    log = read_training_log(log_path)
    stem = bundle.name[: -len(".zip")] if bundle.name.endswith(".zip") else bundle.name
    figure = bundle.parent / f"{stem}_training_loss.png"
    summary_file = bundle.parent / f"{stem}_training_report.json"
    plot_loss_curves(log, figure, title=f"Training of {stem}")
    summary = {"bundle": str(bundle), "training_log": str(log_path), "figure": str(figure), **summarize(log)}
    summary_file.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return TrainingReport(figure, summary_file, summary)


def plot_loss_curves(log: TrainingLog, path: Path, title: str) -> None:
    """Training loss per step (raw and running mean) and validation loss, log scale when positive."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    window = max(1, len(log.loss) // 50)
    axes.plot(log.steps, log.loss, color="tab:blue", alpha=0.3 if window > 1 else 1.0, linewidth=0.8,
              label="training loss (per step)")
    if window > 1:
        # A running mean shows the trend that the per-step noise of 256 sampled patches hides.
        smooth = np.convolve(log.loss, np.ones(window) / window, mode="valid")
        axes.plot(log.steps[window - 1:], smooth, color="tab:blue", label=f"training loss (mean of {window})")
    if len(log.val_loss):
        axes.plot(log.val_steps, log.val_loss, "o-", color="tab:orange", markersize=3, label="validation loss")
    values = np.concatenate([log.loss, log.val_loss])
    if np.all(values[np.isfinite(values)] > 0):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("loss |x - f(p_x)| (fraction of the grid)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(path)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
