"""What a detection reported and the scores table built from it.

``DetectionReport`` is the JSON object of ``ppr detect --json`` (plus the model used); the scores
table is one row: each region score (z with a calibrated model, else mm: column "Score map"), the
error summary (and the z summary), the overlay threshold used and on which map, with a calibrated
model the out-of-depth check (``ppr.statistics.reliability``: "Scores reliable", the brain median z and the
calibration scans' range, the share of brain and skull above the threshold, and the "Warning" in
plain words), and how the run was made (model, device, stride, method, seconds, registration
metric). This module does not compute any score: the numbers are the detector's, copied as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import slicer
import vtk

from ppr.errors import PPRError

SCORE_MAPS = ("z", "mm", "intensity")  # z, or the raw error's unit: PPR mm, autoencoder intensity
# What the report's z-map holds (``ppr detect``'s "shown_map"): the anomaly map of a bundle with an
# intensity atlas, the position z-map itself, or nothing (not calibrated).
SHOWN_MAPS = ("anomaly", "position z", "none")
ERROR_DESCRIPTIONS = {"mm": "position error", "intensity": "autoencoder residual"}
REGION_LABELS = {
    "left_hemisphere": "Left hemisphere",
    "right_hemisphere": "Right hemisphere",
    "skull": "Skull",
    "head": "Whole head",
}


ERROR_UNIT_COLUMN = "Error unit"
WARNING_COLUMN = "Warning"
RELIABLE_COLUMN = "Scores reliable"


def reliability_warning(table: slicer.vtkMRMLTableNode | None) -> str:
    """The out-of-depth warning recorded in a scores table ("" when the scores are reliable, the model
    is not calibrated, or the table is from before the check)."""
    column = None if table is None else table.GetTable().GetColumnByName(WARNING_COLUMN)
    return "" if column is None or column.GetNumberOfValues() == 0 else str(column.GetValue(0))


def error_unit_of(table: slicer.vtkMRMLTableNode | None) -> str:
    """The error map's unit recorded in a scores table ("mm" for tables from before the column)."""
    column = None if table is None else table.GetTable().GetColumnByName(ERROR_UNIT_COLUMN)
    return "mm" if column is None or column.GetNumberOfValues() == 0 else str(column.GetValue(0))


class ResultImportError(PPRError):
    """The detection's output cannot be turned into results (incomplete report, wrong grid, unreadable file)."""


@dataclass(frozen=True)
class DetectionReport:
    """What ``ppr detect --json`` reported, plus the model bundle it was run with."""

    model: str
    seconds: float
    device: str
    stride: int
    method: str
    regions: dict[str, float]
    max_error_lps: tuple[float, float, float]
    registration_metric: float
    error_mm: dict[str, float] = field(default_factory=dict)
    aggregate: str = ""
    score_map: str = "mm"
    overlay_threshold: float | None = None
    z_map: str | None = None
    z: dict[str, float] = field(default_factory=dict)
    error_unit: str = "mm"
    reliability: dict | None = None
    registration_note: str = ""
    shown_map: str = ""
    position_z_map: str | None = None
    position_overlay_threshold: float | None = None

    def __post_init__(self) -> None:
        # A detector from before the anomaly map does not say: its z-map (if any) is the position z-map.
        if not self.shown_map:
            object.__setattr__(self, "shown_map", "none" if self.z_map is None else "position z")

    @property
    def shows_anomaly_map(self) -> bool:
        """True when the z-map is the anomaly map and the position error has its own z-map."""
        return self.shown_map == "anomaly"

    @classmethod
    def from_json_dict(cls, data: dict, model: str) -> "DetectionReport":
        """The report of ``ppr detect --json``; a detector from before calibration reads as "mm"."""
        try:
            report = cls(model=model, seconds=float(data["seconds"]), device=str(data["device"]),
                         stride=int(data["stride"]), method=str(data["method"]),
                         regions=_flatten_numbers(data["regions"]),
                         max_error_lps=tuple(float(v) for v in data["max_error_lps"]),
                         registration_metric=float(data["registration_metric"]),
                         error_mm=_flatten_numbers(data.get("error", data.get("error_mm", {}))),
                         aggregate=str(data.get("aggregate", "")),
                         score_map=str(data.get("score_map", "mm")),
                         overlay_threshold=_number_or_none(data.get("overlay_threshold")),
                         z_map=None if data.get("z_map") is None else str(data["z_map"]),
                         z=_flatten_numbers(data.get("z") or {}),
                         error_unit=str(data.get("error_unit", "mm")),
                         reliability=_reliability_of(data.get("reliability")),
                         registration_note=str(data.get("registration_note") or ""),
                         shown_map=str(data.get("shown_map") or ""),
                         position_z_map=None if data.get("position_z_map") is None else str(data["position_z_map"]),
                         position_overlay_threshold=_number_or_none(data.get("position_overlay_threshold")))
        except (KeyError, TypeError, ValueError) as error:
            raise ResultImportError(
                f"The detection finished but its report is incomplete ({error!r}). "
                "Update the extension so the detector and the module match.") from error
        report.check_score_map()
        return report

    def check_score_map(self) -> None:
        """A z report names its z-map and threshold; an mm report has neither. The position error's own
        z-map ("PPR position error") comes with its threshold, and only beside an anomaly map."""
        calibrated = self.z_map is not None and self.overlay_threshold is not None
        raw = self.score_map in (self.error_unit, "z")
        if self.score_map not in SCORE_MAPS or calibrated != (self.score_map == "z") or not raw:
            raise ResultImportError(
                f"The detection reported score map {self.score_map!r} with z-map {self.z_map!r} and threshold "
                f"{self.overlay_threshold!r}, which do not belong together. Update the extension so the "
                "detector and the module match.")
        position = self.position_z_map is not None
        if (self.shown_map not in SHOWN_MAPS or position != (self.position_overlay_threshold is not None)
                or position != (self.shown_map == "anomaly") or (self.shown_map == "none") == calibrated):
            raise ResultImportError(
                f"The detection reported shown map {self.shown_map!r} with position z-map {self.position_z_map!r} "
                f"and threshold {self.position_overlay_threshold!r}, which do not belong together. Update the "
                "extension so the detector and the module match.")

    @property
    def score_unit(self) -> str:
        """Unit of the region scores: "z" (healthy spreads from the healthy median) or "mm"."""
        return self.score_map

    def score_columns(self) -> dict[str, float]:
        """Region scores under the names users read, in a stable order."""
        columns = {}
        for key, value in self.regions.items():
            region, _, detail = key.partition(".")
            label = REGION_LABELS.get(region, region.replace("_", " ").capitalize())
            columns[f"{label} {detail}".strip()] = value
        return columns


def _reliability_of(value: object) -> dict | None:
    """The detector's out-of-depth check, checked for the keys the table shows (None: not calibrated,
    or a detector from before the check)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"reliability must be an object, got {type(value).__name__}")
    median = _number_or_none(value.get("brain_median_z"))
    fraction = _number_or_none(value.get("fraction_above_threshold"))
    low, high = (float(v) for v in value["healthy_brain_median_z"])
    return {"reliable": bool(value["reliable"]), "message": str(value.get("message", "")),
            "brain_median_z": math.nan if median is None else median, "healthy_brain_median_z": (low, high),
            "fraction_above_threshold": math.nan if fraction is None else fraction}


def _number_or_none(value: object) -> float | None:
    return None if value is None else float(value)


def _flatten_numbers(value: object, prefix: str = "") -> dict[str, float]:
    """``{"head": {"p99": 3}}`` -> ``{"head.p99": 3.0}``; a bare number -> ``{prefix: value}``.

    ``None`` (a region that misses the scan) becomes NaN: a number the table can hold, read "no score".
    """
    if isinstance(value, dict):
        flat: dict[str, float] = {}
        for key, item in value.items():
            flat.update(_flatten_numbers(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix or "value": math.nan if value is None else float(value)}


def build_scores_table(report: DetectionReport, name: str, overlay_threshold: float | None = None,
                       overlay_map: str | None = None) -> slicer.vtkMRMLTableNode:
    """One row: each region score, the error (and z) summary, the overlay threshold used and on
    which map ("z" or "mm"; columns only when given), and how the run was made."""
    table = slicer.vtkMRMLTableNode()
    table.SetName(name)
    how = f"{report.aggregate} of the" if report.aggregate else "Aggregate of the"
    error = ERROR_DESCRIPTIONS.get(report.error_unit, "error")
    scored = (f"calibrated z-map (how unusual the {error} is for the place, in healthy spreads)"
              if report.score_map == "z" else f"{error}, {report.error_unit}")
    for label, value in report.score_columns().items():
        _add_column(table, vtk.vtkDoubleArray(), label, value,
                    f"{how} {scored} in the region (empty: the region misses the scan)", report.score_unit)
    for key, value in report.error_mm.items():
        label = f"Error ({report.error_unit})" if key == "value" else f"Error {key} ({report.error_unit})"
        _add_column(table, vtk.vtkDoubleArray(), label, value, f"{key} of the {error} over the head", report.error_unit)
    shown = "anomaly map" if report.shows_anomaly_map else "calibrated z-map"
    for key, value in report.z.items():
        _add_column(table, vtk.vtkDoubleArray(), f"z {key}", value, f"{key} of the {shown} over the head", "z")
    _add_column(table, vtk.vtkStringArray(), "Score map", report.score_map,
                "Map the region scores aggregate: z (calibrated z-map), mm (position error) or intensity "
                "(autoencoder residual)")
    _add_column(table, vtk.vtkStringArray(), ERROR_UNIT_COLUMN, report.error_unit,
                "Unit of the error map: mm (position error) or intensity (autoencoder residual)")
    if report.aggregate:
        _add_column(table, vtk.vtkStringArray(), "Region score", report.aggregate, "How region scores aggregate the map")
    if overlay_threshold is not None:
        unit = overlay_map or report.score_unit
        _add_column(table, vtk.vtkDoubleArray(), "Overlay threshold", overlay_threshold,
                    "Values below this are not shown in the overlay and are not anomaly candidates", unit)
        _add_column(table, vtk.vtkStringArray(), "Overlay map", unit,
                    "Map shown over the scan and on the skull surface: z (z-map), or the error map in its unit")
    if report.reliability is not None:
        _add_reliability_columns(table, report.reliability)
    warning = " ".join(text for text in (
        report.reliability["message"] if report.reliability is not None else "", report.registration_note) if text)
    if report.reliability is not None or warning:
        _add_column(table, vtk.vtkStringArray(), WARNING_COLUMN, warning,
                    "Why the scores are not reliable for this scan, or what the registration had to correct, "
                    "and what to do (empty: nothing to say)")
    _add_column(table, vtk.vtkStringArray(), "Model", report.model, "Model bundle used")
    _add_column(table, vtk.vtkStringArray(), "Device", report.device, "Device the network ran on")
    _add_column(table, vtk.vtkIntArray(), "Stride", report.stride, "Error map computed every this many voxels")
    _add_column(table, vtk.vtkStringArray(), "Method", report.method, "Inference method")
    _add_column(table, vtk.vtkDoubleArray(), "Seconds", report.seconds, "Time of the detection", "s")
    _add_column(table, vtk.vtkDoubleArray(), "Registration metric", report.registration_metric,
                "Quality of the alignment with the reference head (higher is better)")
    return table


def _add_reliability_columns(table: slicer.vtkMRMLTableNode, check: dict) -> None:
    low, high = check["healthy_brain_median_z"]
    _add_column(table, vtk.vtkStringArray(), RELIABLE_COLUMN, "yes" if check["reliable"] else "no",
                "no: this scan's ordinary tissue is far from what the calibration saw (see Warning)")
    _add_column(table, vtk.vtkDoubleArray(), "Brain median z", check["brain_median_z"],
                "Median z over the brain: near the calibration scans' own range for scans like them", "z")
    _add_column(table, vtk.vtkStringArray(), "Healthy brain median z", f"{low:.2f} to {high:.2f}",
                "Brain median z of the calibration's healthy scans, each against the others", "z")
    _add_column(table, vtk.vtkDoubleArray(), "Brain and skull above threshold", 100.0 * check["fraction_above_threshold"],
                "Share of brain and skull whose position z is above the position z-map's own threshold (the "
                "reliability check; healthy: about 1 %); with an anomaly map this is not the overlay's threshold", "%")


def _add_column(table: slicer.vtkMRMLTableNode, column: vtk.vtkAbstractArray, name: str, value: object,
                description: str, unit: str = "") -> None:
    column.SetName(name)
    column.InsertNextValue(value)
    table.AddColumn(column)
    table.SetColumnDescription(name, description)
    if unit:
        table.SetColumnUnitLabel(name, unit)


def table_row(table: slicer.vtkMRMLTableNode, row: int = 0) -> dict[str, object]:
    """A table row as ``{column name: value}`` with numbers as numbers."""
    data = table.GetTable()
    values = {}
    for index in range(data.GetNumberOfColumns()):
        column = data.GetColumn(index)
        values[column.GetName()] = column.GetValue(row)
    return values
