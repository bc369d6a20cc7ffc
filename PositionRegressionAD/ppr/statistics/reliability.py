"""Is this scan within what the model's calibration knows? A scan-level "out of its depth" check.

A calibrated z-map says how unusual each place's error is *for the scanners the calibration saw*.
On a scan from another scanner or protocol the whole head can look unusual, and then every score
is high whatever the anatomy. Two figures of a scan's z-map tell that apart from a lesion:

- ``brain_median_z``: the median z over the brain (both hemispheres of the reference, only voxels
  inside the scan's measured head: ``ppr.image.field_of_view``, and where the calibration has statistics).
  A lesion, however large, covers far less than half of the brain, so it hardly moves the median;
  a scan whose ordinary tissue the model does not recognise moves all of it.
- ``fraction_above``: the fraction of brain and skull above the overlay threshold (the calibration
  promises about 1 % on healthy scans like its own).

The calibration stores both figures for each of its own scans, measured leave-one-out (each scan
against the statistics of the others, so they are the figures of *new* healthy scans from the same
scanners: ``ppr.statistics.calibration``). A scan is out of its depth when its brain median z lies more than
``MARGIN_Z`` outside the calibration scans' range, or when more than ``MARGIN_FRACTION`` more of its
brain and skull is above the threshold than on any calibration scan.

Why these margins (measured with the default model of 2026-11, 5 calibration scans, stride 2 and 4):
the calibration scans' leave-one-out brain median z spanned -0.44 to 0.42; five held-out healthy
dev scans (also cut to their top 160 mm) -1.54 to 1.06, i.e. up to 1.1 z outside that range; eight
haemorrhage cases -1.20 to -0.19 (0.8 z outside); two real scans from other sites 4.5 to 4.9 (4.1 z
outside). 2 z is about twice the worst healthy excursion and half the other sites'. Fractions
above the threshold: calibration scans 0 to 12.5 %, held-out healthy up to 5 %, haemorrhage up to
2 % (the largest, about 130 mL, 0 %), other sites 44-45 %; 25 points more than any calibration scan
is about three times the volume of the largest haemorrhage in the dev data, so a lesion alone
cannot reach it. Both margins are in the calibration's own units (healthy spreads, a fraction), and
the ranges they widen come from each calibration, so a recalibrated or retrained model brings its
own.

Calibrations written before these figures were stored get ``DEFAULT_BRAIN_MEDIAN_Z_RANGE`` and
``DEFAULT_FRACTION_ABOVE_RANGE`` (about what the 5-scan calibration above gave), and the result says
that the range is a default.

What it does not: compute z-maps or region scores (``ppr.statistics.scores``), or calibrate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # only for the type: ppr.statistics.calibration imports this module
    from ppr.statistics.calibration import Calibration

MARGIN_Z = 2.0
MARGIN_FRACTION = 0.25
DEFAULT_BRAIN_MEDIAN_Z_RANGE = (-0.5, 0.5)
DEFAULT_FRACTION_ABOVE_RANGE = (0.0, 0.13)
CUT_MESSAGE = ("Scores are not reliable for this scan: no part of its head lies a whole network patch away "
               "from where its field of view cuts through the head, so every score includes places the "
               "network saw only partly. Use a scan that covers the whole head.")
REMEDY = ("Calibrate the model on a few healthy scans from this scanner "
          "(ppr calibrate BUNDLE FOLDER --out NEW_BUNDLE / the module's Calibrate on my scanner).")


def ordinary_tissue_figures(z: np.ndarray, brain: np.ndarray, brain_and_skull: np.ndarray,
                            threshold_z: float) -> tuple[float, float]:
    """(median z over ``brain``, fraction of ``brain_and_skull`` with z above ``threshold_z``);
    NaN for an empty mask. The masks already hold only measured places."""
    z = np.asarray(z)
    brain_values = z[np.asarray(brain, dtype=bool)]
    focus_values = z[np.asarray(brain_and_skull, dtype=bool)]
    median = float(np.median(brain_values)) if brain_values.size else math.nan
    fraction = float(np.mean(focus_values > threshold_z)) if focus_values.size else math.nan
    return median, fraction


@dataclass(frozen=True)
class Reliability:
    """The out-of-depth check of one scan.

    reliable: False when the scan is far outside what the calibration saw (``message`` says so).
    brain_median_z, fraction_above: this scan's figures (NaN when the scan shows no measured brain).
    healthy_brain_median_z, healthy_fraction_above: (low, high) of the calibration scans.
    range_source: "calibration", or "default" for calibrations from before the figures were stored.
    message: the plain-words warning, "" when reliable.
    """

    reliable: bool
    brain_median_z: float
    fraction_above: float
    healthy_brain_median_z: tuple[float, float]
    healthy_fraction_above: tuple[float, float]
    threshold_z: float
    range_source: str = "calibration"
    message: str = ""

    def to_json_dict(self) -> dict[str, object]:
        """The figures for ``ppr detect --json`` (NaN as null)."""
        def number(value: float) -> float | None:
            return None if math.isnan(value) else round(float(value), 4)

        return {"reliable": self.reliable, "brain_median_z": number(self.brain_median_z),
                "fraction_above_threshold": number(self.fraction_above),
                "healthy_brain_median_z": [number(v) for v in self.healthy_brain_median_z],
                "healthy_fraction_above_threshold": [number(v) for v in self.healthy_fraction_above],
                "margin_z": MARGIN_Z, "margin_fraction": MARGIN_FRACTION, "range_source": self.range_source,
                "message": self.message}


def healthy_ranges(calibration: "Calibration") -> tuple[tuple[float, float], tuple[float, float], str]:
    """(brain median z range, fraction-above range, source) of a calibration's own scans."""
    medians = calibration.reference_brain_median_z
    fractions = calibration.reference_fraction_above
    if medians is None or fractions is None or not np.isfinite(medians).any():
        return DEFAULT_BRAIN_MEDIAN_Z_RANGE, DEFAULT_FRACTION_ABOVE_RANGE, "default"
    medians, fractions = medians[np.isfinite(medians)], fractions[np.isfinite(fractions)]
    return ((float(medians.min()), float(medians.max())),
            (float(fractions.min()), float(fractions.max())) if fractions.size else DEFAULT_FRACTION_ABOVE_RANGE,
            "calibration")


def assess(z: np.ndarray, brain: np.ndarray, brain_and_skull: np.ndarray,
           calibration: "Calibration", measured: bool = True) -> Reliability:
    """The check for a scan's model-space z-map; ``brain`` and ``brain_and_skull`` hold only its
    measured places (head, field of view, calibrated). ``measured`` False: no place of the scan was
    clear of the cuts of its field of view (``ppr.image.field_of_view``), so the masks are the whole head
    and the scores are not reliable whatever the figures say."""
    threshold = float(calibration.overlay_threshold_z)
    median, fraction = ordinary_tissue_figures(z, brain, brain_and_skull, threshold)
    median_range, fraction_range, source = healthy_ranges(calibration)
    far_median = not math.isnan(median) and (median > median_range[1] + MARGIN_Z
                                              or median < median_range[0] - MARGIN_Z)
    far_fraction = not math.isnan(fraction) and fraction > fraction_range[1] + MARGIN_FRACTION
    reliable = measured and not (far_median or far_fraction)
    if not measured:
        message = CUT_MESSAGE
    else:
        message = "" if reliable else warning_message(median, fraction, median_range, fraction_range, threshold)
    return Reliability(reliable, median, fraction, median_range, fraction_range, threshold, source, message)


def warning_message(median: float, fraction: float, median_range: tuple[float, float],
                    fraction_range: tuple[float, float], threshold_z: float) -> str:
    """The warning in plain words, with the figures that tripped it."""
    parts = []
    if not math.isnan(median):
        side = "above" if median >= 0 else "below"
        parts.append(f"its ordinary brain tissue is {abs(median):.1f} z {side} what the calibration saw "
                     f"(healthy scans: {median_range[0]:.1f} to {median_range[1]:.1f} z)")
    if not math.isnan(fraction):
        parts.append(f"{100 * fraction:.0f} % of its brain and skull is above the overlay threshold z "
                     f"{threshold_z:.2f} (healthy scans: {100 * fraction_range[0]:.0f} to "
                     f"{100 * fraction_range[1]:.0f} %)")
    return f"Scores are not reliable for this scan: {', and '.join(parts)}. {REMEDY}"
