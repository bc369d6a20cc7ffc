"""Detection results as DICOM objects that reference the source series (``ppr detect --dicom-out``).

For a scan read from a DICOM series folder, ``write_dicom_results`` writes into one output folder:

- ``anomaly_map_pm.dcm``: a **Parametric Map** (highdicom.pm.ParametricMap, SOP class
  1.2.840.10008.5.1.4.1.1.30) of the map the user is shown (``shown_map``): the anomaly map of a
  model with an intensity atlas (unit UCUM "1", quantity the local code 99PPR "ANOMALY", "Anomaly map
  (density z raised by position z)": z-like, dimensionless, but not a z-score), the calibrated
  position z-map (unit UCUM "{z-score}", quantity DCM 113071 "Z-score") or, without calibration, the
  position error (UCUM "mm"; an autoencoder's residual: UCUM "1"). Stored as **16-bit unsigned
  integers** (PixelData: 2 bytes a voxel, half the float32 size) with a linear
  Real World Value Mapping (``_quantise``): the slope spreads the map's min..max over 0..65535 and
  the intercept puts the minimum (negative values too) at 0, so every value read back through the
  mapping is the NIfTI map's float32 value within half a quantisation step (slope / 2); a 0 of the
  map (outside brain and skull) is stored exactly. The VOI window is given in stored values, as the
  Parametric Map's VOI LUT applies to them.
- ``anomaly_candidates_seg.dcm``: a **Segmentation** (highdicom.seg.Segmentation, BINARY, SOP class
  1.2.840.10008.5.1.4.1.1.66.4) of the anomaly candidates, one segment per candidate ("Anomaly
  candidate 1" = the largest, as in the Slicer module, from ``ppr.statistics.candidates``), empty
  frames omitted. Without any candidate it holds one empty segment "Anomaly candidate (none found)"
  so every result set has the same three files.
- ``region_scores_sr.dcm``: a **TID 1500 Measurement Report** (highdicom.sr.Comprehensive3DSR) with
  one measurement per scored region (the region score, in z or mm; regions that miss the scan are
  left out), its evidence the source series and the two objects above.

All three carry the source's patient and study (same StudyInstanceUID), each its own new series,
the source's FrameOfReferenceUID, and reference every instance of the source series
(ReferencedSeriesSequence / SourceImageSequence). They are built in memory first, then each is
written to a temporary name in the output folder and renamed; if any write fails, the files this
call already renamed are removed again, so a failure leaves none of the final names behind.

Geometry, and why (gantry-tilted series such as ``ge-tilt``). The maps live on the grid
``ppr.image.imageio.read_image`` placed the scan on: for a tilted or unevenly spaced series that is
a regular grid resampled in the slice plane's frame (same row/column directions as the source
slices, planes stacked along their normal at an even step), whose planes are *not* the source
slices. The derived objects therefore carry their own geometry: PixelMeasures, PlaneOrientation and
one PlanePosition per frame are those of the map's grid (highdicom builds them from a
``highdicom.Volume`` with the grid's affine), never the source slices' positions, so a viewer puts
every value exactly where the detector computed it. The FrameOfReferenceUID stays the source's: a
frame of reference is the patient coordinate system of the acquisition, and resampling inside it
does not create a new one (a new UID would tell viewers the objects cannot be overlaid on the scan
without a registration, which is false). The source instances are referenced as the images the
objects were derived from (SourceImageSequence and ReferencedSeriesSequence: every instance of the
series), required by highdicom and right for provenance; no frame carries a per-frame derivation
reference, so none claims to be a copy of one source slice. For an untilted, evenly spaced series
(``invesalius-0051``) the grid is ITK's (the first slice's origin, an even step), within 1 mm of
the source slices (``ppr.image.imageio._evenly_stacked``); the same rule applies, so the objects
always lie exactly where the NIfTI maps lie.

Use: ``write_detection_dicom(series_dir, detection_result, out_dir)`` in the process that detected
(``ppr detect --dicom-out``); from maps read back from files (the batch), with the module's display
choices::

    shown = ShownMap(z_map_image, "z", threshold_z)        # or (error_map_image, "mm", threshold_mm)
    write_dicom_results(series_dir, out_dir, shown.image, shown.unit, candidates_image(shown),
                        report_regions, threshold=shown.threshold, aggregate="p99", score_unit="z",
                        shown_map="anomaly")               # what a "z" map is: "anomaly" or "position z"

The maps must lie on the grid ``read_image(series_dir)`` gives (the NIfTI maps ``ppr detect``
writes do); ``dicom_result_paths(out_dir)`` names the files, to check before computing.

highdicom is imported here only, when a function runs (Slicer ships it, with pydicom 3).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ppr.errors import InputImageError
from ppr.image.imageio import dicom_series_files, holds_dicom_series, write_atomically
from ppr.statistics.candidates import (
    MAX_CANDIDATES,
    MIN_CANDIDATE_VOLUME_MM3,
    THRESHOLD_PERCENTILE,
    candidate_labels,
    default_threshold,
)

if TYPE_CHECKING:
    from ppr.workflows.detection import DetectionResult

PARAMETRIC_MAP_NAME = "anomaly_map_pm.dcm"
SEGMENTATION_NAME = "anomaly_candidates_seg.dcm"
REPORT_NAME = "region_scores_sr.dcm"
DICOM_RESULT_NAMES = (PARAMETRIC_MAP_NAME, SEGMENTATION_NAME, REPORT_NAME)
NEEDS_DICOM_INPUT = "DICOM output needs a DICOM input (a folder of the series)"

PARAMETRIC_MAP_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.30"
SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"

# Series numbers of the derived objects (the source's are scanner-chosen, usually small).
_SERIES_NUMBERS = {PARAMETRIC_MAP_NAME: 9901, SEGMENTATION_NAME: 9902, REPORT_NAME: 9903}
_MANUFACTURER = "PositionRegressionAD"
_MODEL_NAME = "ppr detect"
_SCHEME = "99PPRAD"  # private coding scheme for what no standard code names
_UNITS = ("z", "mm", "intensity")
# What a map in "z" is (``DetectionResult.shown_map``): the anomaly map or the position z-map.
_Z_MAPS = ("anomaly", "position z")
_LOCAL_SCHEME = "99PPR"  # local codes of the map's quantity
_STORED_MAX = 65535  # the Parametric Map stores uint16
# Patient and study attributes the derived objects copy; absent ones are copied as empty (Type 2).
_TYPE_2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                         "StudyID", "AccessionNumber", "ReferringPhysicianName")


def dicom_result_paths(out_dir: os.PathLike | str, report: bool = True) -> list[Path]:
    """The files ``write_dicom_results`` writes into ``out_dir`` (check them before computing)."""
    names = DICOM_RESULT_NAMES if report else DICOM_RESULT_NAMES[:2]
    return [Path(out_dir) / name for name in names]


def check_dicom_input(source: os.PathLike | str) -> None:
    """``InputImageError`` (the message for the user) unless ``source`` is a folder holding a DICOM
    series whose headers have the UIDs the results reference (study, series, instance, frame of
    reference). Cheap: call it before computing."""
    if not holds_dicom_series(source):
        raise InputImageError(f"{NEEDS_DICOM_INPUT}: {source} is not a folder holding a DICOM series.")
    _read_sources(Path(source), first_only=True)  # the UIDs results must reference are there


@dataclass(frozen=True)
class ShownMap:
    """The map the results show and cut into candidates: ``image`` (float32, the input's grid),
    ``unit`` ("z", "mm" or "intensity") and the candidate ``threshold`` in that unit."""

    image: sitk.Image
    unit: str
    threshold: float


def shown_map(result: "DetectionResult", threshold: float | None = None,
              percentile: float = THRESHOLD_PERCENTILE) -> ShownMap:
    """The module's choice: the z-map with the calibration's overlay threshold when the result has
    one, else the error map with ``percentile`` of its support (``threshold`` overrides either)."""
    if result.z_map_input is not None:
        chosen = result.overlay_threshold_z if threshold is None else threshold
        return ShownMap(result.z_map_input, "z", float(chosen))
    if threshold is None:
        threshold = default_threshold(sitk.GetArrayViewFromImage(result.error_map_input), percentile)
    return ShownMap(result.error_map_input, result.unit, float(threshold))


def candidates_image(shown: ShownMap, min_volume_mm3: float = MIN_CANDIDATE_VOLUME_MM3,
                     max_count: int = MAX_CANDIDATES) -> sitk.Image:
    """The anomaly candidates of a shown map as a uint16 labelmap on its grid (1 = the largest)."""
    labels = candidate_labels(sitk.GetArrayViewFromImage(shown.image), shown.image.GetSpacing(), shown.threshold,
                              min_volume_mm3, max_count)
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(shown.image)
    return image


def write_detection_dicom(source_series_dir: os.PathLike | str, result: "DetectionResult",
                          out_dir: os.PathLike | str, *, threshold: float | None = None,
                          min_volume_mm3: float = MIN_CANDIDATE_VOLUME_MM3, max_candidates: int = MAX_CANDIDATES,
                          aggregate: str | None = None, report: bool = True) -> list[Path]:
    """A ``DetectionResult`` as DICOM: the shown map, its candidates and the region scores
    (``shown_map``, ``candidates_image``, then ``write_dicom_results``; the map's quantity from
    ``result.shown_map``)."""
    shown = shown_map(result, threshold)
    return write_dicom_results(
        source_series_dir, out_dir, shown.image, shown.unit, candidates_image(shown, min_volume_mm3, max_candidates),
        result.regions if report else None, threshold=shown.threshold,
        aggregate=aggregate or result.options.scores.aggregate, score_unit=result.score_map,
        shown_map=result.shown_map if shown.unit == "z" else "none")


def write_dicom_results(source_series_dir: os.PathLike | str, out_dir: os.PathLike | str, anomaly_map: sitk.Image,
                        unit: str, candidates: sitk.Image, region_scores: Mapping[str, float | None] | None = None,
                        *, threshold: float | None = None, aggregate: str = "p99",
                        score_unit: str | None = None, shown_map: str | None = None) -> list[Path]:
    """Write the Parametric Map, the Segmentation and (given ``region_scores``) the TID 1500 report.

    source_series_dir: the DICOM series folder the scan was read from (``read_image``'s input).
    anomaly_map: the shown map (z-map or error map) on the input's grid, as ``read_image`` placed
        it (float, finite; stored as uint16 within half a quantisation step, ``_quantise``). unit: its
        unit, "z", "mm" or "intensity".
    candidates: labelmap on the same grid (0 background, 1..n candidates; e.g. ``candidates_image``).
    region_scores: region name -> score (None: the region misses the scan), in ``score_unit``
        (default ``unit``), the ``aggregate`` of the map in each region.
    threshold: the candidates' threshold, recorded in the descriptions.
    shown_map: what a map in "z" is (``DetectionResult.shown_map``): "anomaly" (the anomaly map:
        quantity 99PPR "ANOMALY", unit UCUM "1") or "position z" (the position z-map: DCM 113071
        "Z-score", UCUM "{z-score}"); None: "position z" for a "z" map. A map in mm or intensity
        takes None or "none".

    Returns the written paths (``dicom_result_paths``). Raises ``InputImageError`` when the folder
    holds no DICOM series, ``ValueError`` for inconsistent arguments, ``OutputFileError`` when a
    file cannot be written (none of the final names is left then).
    """
    # pydicom and highdicom warn about the source's own header (a person name of one component, a UID
    # with a leading zero, ...): nothing the user of the results can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _write_dicom_results(source_series_dir, out_dir, anomaly_map, unit, candidates, region_scores,
                                    threshold, aggregate, score_unit, shown_map)


def _write_dicom_results(source_series_dir, out_dir, anomaly_map, unit, candidates, region_scores, threshold,
                         aggregate, score_unit, shown_map) -> list[Path]:
    import highdicom as hd  # here: only a DICOM export needs it

    if unit not in _UNITS:
        raise ValueError(f"unit must be one of {_UNITS}, got {unit!r}")
    if unit == "z":
        shown_map = shown_map or "position z"
        if shown_map not in _Z_MAPS:
            raise ValueError(f"a map in z must be one of {_Z_MAPS}, got shown_map={shown_map!r}")
    elif shown_map not in (None, "none"):
        raise ValueError(f"a map in {unit} is no z-map: shown_map must be None or 'none', got {shown_map!r}")
    anomaly = shown_map == "anomaly"
    check_dicom_input(source_series_dir)
    _check_same_grid(anomaly_map, candidates)
    out_dir = Path(out_dir)
    sources = _read_sources(Path(source_series_dir))
    frame_of_reference = sources[0].FrameOfReferenceUID
    version = _version()

    values = sitk.GetArrayFromImage(anomaly_map).astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError("the anomaly map holds NaN or infinite values: it cannot be stored as a Parametric Map")
    stored, slope, intercept = _quantise(values)
    parametric_map = hd.pm.ParametricMap(
        source_images=sources,
        pixel_array=_volume(hd, stored, anomaly_map, frame_of_reference),
        series_instance_uid=hd.UID(), series_number=_SERIES_NUMBERS[PARAMETRIC_MAP_NAME],
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=_MANUFACTURER, manufacturer_model_name=_MODEL_NAME, software_versions=version,
        device_serial_number="1",
        # The error map covers the whole head surface: it may show the face.
        contains_recognizable_visual_features=True,
        real_world_value_mappings=[_value_mapping(hd, unit, anomaly, stored, slope, intercept)],
        voi_lut_transformations=[_window(hd, values, unit, threshold, slope, intercept)],
        content_label="ANOMALYMAP",
        content_description=_map_description(unit, threshold, anomaly)[:64],
        series_description=("Anomaly map (PPR)" if anomaly
                            else f"Anomaly {'z-map' if unit == 'z' else 'error map'} (PPR)")[:64],
    )

    labels = sitk.GetArrayFromImage(candidates).astype(np.uint16)
    count = int(labels.max(initial=0))
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=_volume(hd, labels, candidates, frame_of_reference),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segments(hd, labels, anomaly_map, unit, values, version, anomaly),
        series_instance_uid=hd.UID(), series_number=_SERIES_NUMBERS[SEGMENTATION_NAME],
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=_MANUFACTURER, manufacturer_model_name=_MODEL_NAME, software_versions=version,
        device_serial_number="1",
        content_label="CANDIDATES",
        content_description=(f"{count} anomaly candidate(s)"
                             + ("" if threshold is None else f" at {_value(threshold, unit, anomaly)} or above"))[:64],
        series_description="Anomaly candidates (PPR)",
        omit_empty_frames=count > 0,  # a segmentation needs a frame: with no candidate keep them all
    )

    written: list[tuple[Path, object]] = [(out_dir / PARAMETRIC_MAP_NAME, parametric_map),
                                          (out_dir / SEGMENTATION_NAME, segmentation)]
    if region_scores is not None:
        sr = _report(hd, sources, [parametric_map, segmentation], region_scores, score_unit or unit, aggregate,
                     version)
        written.append((out_dir / REPORT_NAME, sr))
    return _write_all(written)


# ---------------------------------------------------------------------------------------------


def _read_sources(folder: Path, first_only: bool = False) -> list:
    import pydicom

    files = dicom_series_files(folder)[:1 if first_only else None]
    try:
        with warnings.catch_warnings():  # about the source's own header (e.g. a UID with a leading zero)
            warnings.simplefilter("ignore", UserWarning)
            sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    except Exception as error:  # pydicom raises InvalidDicomError, OSError, ...
        raise InputImageError(f"The DICOM series in {folder} could not be read for the DICOM output ({error}).") from None
    for source in sources:  # Type 2 (may be empty) but some scanners leave them out; highdicom reads them
        for keyword in _TYPE_2_PATIENT_STUDY:
            if keyword not in source:
                setattr(source, keyword, "")
    lacking = [name for name in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
               if name not in sources[0]]
    if lacking:
        raise InputImageError(f"The DICOM series in {folder} has no {', '.join(lacking)}: results cannot "
                              "reference it. Export the series again with full headers.")
    return sources


def _check_same_grid(first: sitk.Image, second: sitk.Image) -> None:
    same = (first.GetSize() == second.GetSize()
            and np.allclose(first.GetOrigin(), second.GetOrigin(), atol=1e-3)
            and np.allclose(first.GetSpacing(), second.GetSpacing(), atol=1e-5)
            and np.allclose(first.GetDirection(), second.GetDirection(), atol=1e-6))
    if not same:
        raise ValueError("the candidates labelmap must lie on the anomaly map's grid")


def _volume(hd, array: np.ndarray, grid: sitk.Image, frame_of_reference: str):
    """``array`` (z, y, x) of a SimpleITK grid as a highdicom Volume (frames, rows, columns).

    SimpleITK's direction has the x (column), y (row), z (slice) axes as columns; highdicom's the
    slice, row and column axes. Both are LPS, DICOM's patient coordinates."""
    direction = np.asarray(grid.GetDirection(), float).reshape(3, 3)
    spacing = grid.GetSpacing()
    return hd.Volume.from_components(
        np.ascontiguousarray(array),
        spacing=(spacing[2], spacing[1], spacing[0]),
        coordinate_system="PATIENT",
        position=tuple(float(v) for v in grid.GetOrigin()),
        direction=direction[:, ::-1],
        frame_of_reference_uid=frame_of_reference,
    )


def _unit_code(hd, unit: str):
    from pydicom.sr.codedict import codes

    if unit == "z":
        return hd.sr.CodedConcept(value="{z-score}", scheme_designator="UCUM", meaning="z-score")
    if unit == "mm":
        return codes.UCUM.Millimeter
    return codes.UCUM.NoUnits  # an autoencoder's residual in the model's normalised intensity


def _quantise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """``values`` as uint16 ``stored`` with ``values ~ stored * slope + intercept`` (float64), every
    value within slope / 2 (half a step): the slope spreads min..max over the 65536 stored values and
    the intercept puts the minimum at 0. A map with values on both sides of 0 has 0 on the grid (one
    step less, so the maximum still fits), so the map's 0 (outside brain and skull) reads back as 0."""
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if high <= low:  # constant (or empty): all stored 0, read back exactly
        return np.zeros(values.shape, np.uint16), 1.0, low
    if low < 0.0 < high:
        slope = (high - low) / (_STORED_MAX - 1)
        intercept = -math.ceil(-low / slope) * slope  # stored value of 0: ceil(-low / slope) <= 65534
    else:
        slope, intercept = (high - low) / _STORED_MAX, low
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    return np.clip(stored, 0, _STORED_MAX).astype(np.uint16), slope, intercept


def _value_mapping(hd, unit: str, anomaly: bool, stored: np.ndarray, slope: float, intercept: float):
    from pydicom.sr.codedict import codes

    low, high = (int(stored.min()), int(stored.max())) if stored.size else (0, 0)
    if anomaly:
        label, explanation, unit_code = "ANOMALY", "Anomaly map (density z raised by position z)", codes.UCUM.NoUnits
        quantity = hd.sr.CodedConcept("ANOMALY", _LOCAL_SCHEME, "Anomaly map (density z raised by position z)")
        return hd.pm.RealWorldValueMapping(lut_label=label, lut_explanation=explanation, unit=unit_code,
                                           value_range=(low, high), slope=slope, intercept=intercept,
                                           quantity_definition=quantity)
    if unit == "z":
        label, explanation, quantity = "ZSCORE", "Anomaly z-score (calibrated PPR position error)", codes.DCM.ZScore
    elif unit == "mm":
        label, explanation = "ERRORMM", "PPR position error in mm"
        quantity = hd.sr.CodedConcept("PPRERROR", _SCHEME, "Patch position regression error")
    else:
        label, explanation = "RESIDUAL", "Autoencoder residual (normalised intensity)"
        quantity = hd.sr.CodedConcept("AERESIDUAL", _SCHEME, "Autoencoder residual")
    return hd.pm.RealWorldValueMapping(lut_label=label, lut_explanation=explanation, unit=_unit_code(hd, unit),
                                       value_range=(low, high), slope=slope, intercept=intercept,
                                       quantity_definition=quantity)


def _window(hd, values: np.ndarray, unit: str, threshold: float | None, slope: float, intercept: float):
    """0 (as usual) up to a robust maximum, as the module's colour range; in stored values (the
    Parametric Map's VOI LUT applies to them, the Real World Value Mapping is beside it)."""
    support = values[values != 0] if unit == "z" else values[values > 0]
    top = float(np.percentile(support, 99.9)) if support.size else 1.0
    top = max(top, 1.25 * threshold if threshold else 0.0, 1e-6)
    return hd.VOILUTTransformation(window_center=(top / 2.0 - intercept) / slope, window_width=top / slope)


def _map_description(unit: str, threshold: float | None, anomaly: bool = False) -> str:
    kind = "anomaly map" if anomaly else {"z": "anomaly z-map", "mm": "position error map",
                                          "intensity": "AE residual map"}[unit]
    return kind if threshold is None else f"{kind}, threshold {_value(threshold, unit, anomaly)}"


def _value(value: float, unit: str, anomaly: bool = False) -> str:
    if anomaly:
        return f"{value:.2f}"  # dimensionless, z-like, not a z-score
    return {"z": f"z {value:.2f}", "mm": f"{value:.1f} mm"}.get(unit, f"{value:.4g}")


def _segments(hd, labels: np.ndarray, grid: sitk.Image, unit: str, values: np.ndarray, version: str,
              anomaly: bool = False) -> list:
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="Position Regression AD", version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    category = codes.SCT.MorphologicallyAbnormalStructure
    kind = hd.sr.CodedConcept("ANOMALYCAND", _SCHEME, "Anomaly candidate")
    count = int(labels.max(initial=0))
    if count == 0:
        return [hd.seg.SegmentDescription(segment_number=1, segment_label="Anomaly candidate (none found)",
                                          segmented_property_category=category, segmented_property_type=kind,
                                          algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
                                          tracking_uid=hd.UID(), tracking_id="Anomaly candidate none")]
    voxel_ml = float(np.prod(grid.GetSpacing())) / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    peaks = np.full(count + 1, -np.inf)
    np.maximum.at(peaks, labels.ravel(), values.ravel())
    return [
        hd.seg.SegmentDescription(
            segment_number=rank,
            segment_label=f"Anomaly candidate {rank}: {sizes[rank] * voxel_ml:.1f} mL, peak "
                          f"{_value(peaks[rank], unit, anomaly)}"[:64],
            segmented_property_category=category, segmented_property_type=kind,
            algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=f"Anomaly candidate {rank}")
        for rank in range(1, count + 1)
    ]


def _report(hd, sources: list, derived: list, region_scores: Mapping[str, float | None], unit: str,
            aggregate: str, version: str):
    from pydicom.sr.codedict import codes

    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="Position Regression AD", manufacturer_name=_MANUFACTURER, model_name=_MODEL_NAME))
    what = "z" if unit == "z" else unit
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"SCORE-{name}"[:16], _SCHEME, f"{name} anomaly score ({aggregate} of {what})"[:64]),
            value=float(score), unit=_unit_code(hd, unit),
            algorithm_id=hd.sr.AlgorithmIdentification(name="Position Regression AD", version=version))
        for name, score in region_scores.items() if score is not None and math.isfinite(float(score))
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Region anomaly scores"),
        measurements=measurements or None,
        algorithm_id=hd.sr.AlgorithmIdentification(name="Position Regression AD", version=version))
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.LN.CTHead if hasattr(codes.LN, "CTHead") else codes.SCT.ImagingProcedure,
        imaging_measurements=[group])
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, *derived], content=content,
        series_instance_uid=hd.UID(), series_number=_SERIES_NUMBERS[REPORT_NAME],
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer=_MANUFACTURER,
        series_description="Anomaly region scores (PPR)")


def _version() -> str:
    import ppr

    return f"ppr {ppr.__version__}"


def _write_all(objects: Sequence[tuple[Path, object]]) -> list[Path]:
    """Each object to a temporary name, then renamed; on a failure the ones already renamed go too."""
    done: list[Path] = []
    try:
        for path, dataset in objects:
            write_atomically(path, lambda temporary, dataset=dataset: dataset.save_as(temporary, enforce_file_format=True))
            done.append(path)
    except BaseException:
        for path in done:
            path.unlink(missing_ok=True)
        raise
    return done
