"""A fake calibrated detector for Lib and batch tests: the fake ``ppr detect`` of
``PositionRegressionADLib.testing`` plus what a calibrated model adds (a z-map beside the error map,
regions and the most anomalous point from z, and the report's ``score_map``, ``overlay_threshold``,
``z_map``, ``z`` and ``reliability``). The z-map peaks somewhere else than the error, so a test can tell which map a
result shows. Its numbers are not a detector's: never evidence that detection works.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PositionRegressionADLib.process import ProcessOutcome
from PositionRegressionADLib.testing import AIR, BACKGROUND_ERROR_MM, InProcessFakeDetection, fake_error_map
from ppr.cli.detect import z_map_path
# The error (mm) peaks at LESION_LPS (left frontal brain), z at SKULL_POINT_LPS (the forehead's skull).
from synthetic_heads import LESION_LPS, SKULL_POINT_LPS

CALIBRATED_THRESHOLD_Z = 5.0
Z_SPREAD_MM = 2.0


class CalibratedFakeDetection(InProcessFakeDetection):
    """The fake detector plus what a calibrated model adds: a z-map beside the error map (peak at
    ``SKULL_POINT_LPS``, 0 in the air), regions and the most anomalous point from z, and the report's
    ``score_map``, ``overlay_threshold``, ``z_map`` and ``z``. ``write_z_map`` False: the report names
    a z-map that was never written."""

    write_z_map = True
    # What ppr.statistics.reliability.Reliability.to_json_dict gives for a scan like the calibration's.
    reliability = {"reliable": True, "brain_median_z": 0.1, "fraction_above_threshold": 0.012,
                   "healthy_brain_median_z": [-0.4, 0.4], "healthy_fraction_above_threshold": [0.0, 0.09],
                   "margin_z": 2.0, "margin_fraction": 0.25, "range_source": "calibration", "message": ""}

    def _run(self) -> None:
        super()._run()
        if self._outcome.returncode != 0:
            return
        out = Path(self._command[self._command.index("--out") + 1])
        image = sitk.ReadImage(self._command[self._command.index("detect") + 1])
        head = sitk.GetArrayFromImage(image) > AIR + 5.0
        bumped = sitk.GetArrayFromImage(fake_error_map(image, np.array(SKULL_POINT_LPS)))
        z = np.where(head, (bumped - BACKGROUND_ERROR_MM) / Z_SPREAD_MM, 0.0).astype(np.float32)
        z_image = sitk.GetImageFromArray(z)
        z_image.CopyInformation(image)
        path = z_map_path(out)
        if self.write_z_map:
            sitk.WriteImage(z_image, str(path))
        report = json.loads(self._outcome.stdout.splitlines()[-1])
        left = np.zeros_like(head)
        left[..., head.shape[2] // 2:] = True
        k, j, i = np.unravel_index(int(np.argmax(z)), z.shape)
        report.update(
            score_map="z", overlay_threshold=CALIBRATED_THRESHOLD_Z, z_map=str(path.resolve()),
            z={"max": float(z[head].max()), "p99": float(np.percentile(z[head], 99)), "mean": float(z[head].mean())},
            regions={"left_hemisphere": float(z[head & left].max()), "right_hemisphere": float(z[head & ~left].max()),
                     "skull": float(np.percentile(z[head], 99)), "head": float(z[head].max())},
            max_error_lps=list(image.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))),
            reliability=self.reliability)
        self._outcome = ProcessOutcome(0, json.dumps(report) + "\n", self._outcome.stderr, cancelled=False)


OUT_OF_DEPTH_MESSAGE = ("Scores are not reliable for this scan: its ordinary brain tissue is 4.6 z above what the "
                        "calibration saw (healthy scans: -0.4 to 0.4 z), and 44 % of its brain and skull is above "
                        "the overlay threshold z 4.77 (healthy scans: 0 to 9 %). Calibrate the model on a few "
                        "healthy scans from this scanner (ppr calibrate BUNDLE FOLDER --out NEW_BUNDLE / the "
                        "module's Calibrate on my scanner).")


class OutOfDepthDetection(CalibratedFakeDetection):
    """A calibrated detection whose scan is far from what the calibration saw (figures of a real
    scan from another site with the default model)."""

    reliability = {**CalibratedFakeDetection.reliability, "reliable": False, "brain_median_z": 4.6,
                   "fraction_above_threshold": 0.442, "message": OUT_OF_DEPTH_MESSAGE}


class MissingZMapDetection(CalibratedFakeDetection):
    write_z_map = False




POSITION_THRESHOLD_Z = 4.0


class AnomalyMapFakeDetection(CalibratedFakeDetection):
    """A calibrated detection of a model with an intensity atlas: its z-map is the anomaly map
    (``shown_map`` "anomaly", peak at ``SKULL_POINT_LPS``) and the position error's own z-map is written
    beside it (``--position-z-out`` or ``<out stem>_position_z.nii.gz``, peak at the error's, the lesion),
    with ``position_z_map`` and ``position_overlay_threshold`` in the report. ``write_position_z_map``
    False: the report names a position z-map that was never written."""

    write_position_z_map = True

    def _run(self) -> None:
        super()._run()
        if self._outcome.returncode != 0:
            return
        from ppr.cli.detect import position_z_map_path

        out = Path(self._command[self._command.index("--out") + 1])
        given = self._command[self._command.index("--position-z-out") + 1] if "--position-z-out" in self._command \
            else None
        path = position_z_map_path(out, None if given is None else Path(given))
        errors = sitk.ReadImage(str(out))
        values = sitk.GetArrayFromImage(errors)
        position = np.where(values > 0, (values - BACKGROUND_ERROR_MM) / Z_SPREAD_MM, 0.0).astype(np.float32)
        image = sitk.GetImageFromArray(position)
        image.CopyInformation(errors)
        if self.write_position_z_map:
            sitk.WriteImage(image, str(path))
        report = json.loads(self._outcome.stdout.splitlines()[-1])
        report.update(shown_map="anomaly", position_z_map=str(path.resolve()),
                      position_overlay_threshold=POSITION_THRESHOLD_Z)
        self._outcome = ProcessOutcome(0, json.dumps(report) + "\n", self._outcome.stderr, cancelled=False)


class MissingPositionZMapDetection(AnomalyMapFakeDetection):
    write_position_z_map = False
