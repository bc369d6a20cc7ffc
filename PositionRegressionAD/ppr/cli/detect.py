"""``python -m ppr detect INPUT --model BUNDLE --out ERRORMAP``: the error map of one head CT.

Argument parsing and printing only: the work is ``ppr.workflows.detection.detect``. The error map is written
on the input's own grid; with a calibrated bundle the z-map too, on the same grid, at ``--z-out``
or beside ``--out`` as ``<out stem>_z.nii.gz`` (``z_map_path``). With ``--json`` the last stdout
line is one JSON object: ``seconds`` (total) and ``seconds_per_step``, ``device``, ``stride``,
``method``, ``aggregate``, ``score_map`` ("z": regions scored on the calibrated z-map, else the raw
error's unit: "mm" for a PPR bundle, "intensity" for an autoencoder bundle), ``regions`` (the
aggregate per region, in the unit of ``score_map``; null where a region misses the scan),
``error_unit`` ("mm" or "intensity"), ``error`` (max, p99, mean of the error over the head, in
``error_unit``), ``error_mm`` (the same, only for a PPR bundle, whose error is in mm), ``z`` (the
same of the z-map, null without calibration), ``post_filter`` (the AE residual's filter, null for
PPR), ``overlay_threshold`` (the calibration's z threshold for
overlays, null without calibration), ``max_error_lps`` (highest z inside brain and skull when
calibrated, else highest error), ``registration_metric``, ``output``, ``z_map`` (path or null),
``shown_map`` ("anomaly": the z-map is the anomaly map of a bundle with an intensity atlas;
"position z"; "none" without calibration), ``position_z_map`` (with an anomaly map, the position
error's own z-map, "PPR position error", at ``--position-z-out`` or ``<out stem>_position_z.nii.gz``;
else null) and ``position_overlay_threshold``,
``model``, ``reliability`` (calibrated bundles: the out-of-depth check of ``ppr.statistics.reliability``,
``reliable``, ``brain_median_z``, ``fraction_above_threshold``, the calibration scans' ranges and
``message``, the warning in plain words or ""; null without calibration), ``dicom`` (the DICOM files
written with ``--dicom-out``, else null). ``--dicom-out DIR`` (DICOM series input only; any other
input is refused before any work) also writes the results as DICOM objects that reference the
source series: a Parametric Map, a Segmentation of the anomaly candidates and a TID 1500 report
(``ppr.workflows.dicom_results``). ``--no-calibration``
ignores a calibration (score_map "mm", for comparison). Without ``--json`` an unreliable scan's
warning is printed on its own line after the summary (stdout) and on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ppr.networks.autoencoder import POST_FILTERS
from ppr.networks.inference import STRIDES
from ppr.statistics.scores import AGGREGATES

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="head CT: NIfTI, NRRD, MHA file or DICOM series folder")
    parser.add_argument("--model", type=Path, required=True, help="model bundle (folder or .zip)")
    parser.add_argument("--out", type=Path, required=True,
                        help="error map to write on the input's grid (mm for PPR, intensity for an autoencoder)")
    parser.add_argument("--z-out", type=Path, default=None,
                        help="z-map to write with a calibrated bundle (default: <out stem>_z.nii.gz beside --out)")
    parser.add_argument("--position-z-out", type=Path, default=None,
                        help="with a bundle whose z-map is the anomaly map: the position error's own z-map "
                             "(default: <out stem>_position_z.nii.gz beside --out)")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore the bundle's calibration: score the raw error in mm (for comparison)")
    parser.add_argument("--method", choices=("dense", "patches"), default="dense",
                        help="dense (fast, default) or patches (the paper's one patch per voxel: slow)")
    parser.add_argument("--stride", type=int, choices=STRIDES, default=1,
                        help="compute every K-th voxel and interpolate (4 = fast preview; default 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--tile", type=int, default=128, help="tile edge in voxels (lower = less memory)")
    parser.add_argument("--post-filter", choices=POST_FILTERS, default="erosion",
                        help="autoencoder bundles: residual post-filter, erosion (haemorrhage, default), "
                             "median (fracture) or none; ignored for PPR bundles")
    parser.add_argument("--aggregate", choices=AGGREGATES, default="p99", help="region score (default p99)")
    parser.add_argument("--dicom-out", type=Path, default=None, metavar="DIR",
                        help="DICOM input only: also write into DIR a Parametric Map of the shown map (z-map, "
                             "else error), a Segmentation of the anomaly candidates and a TID 1500 report of "
                             "the region scores, referencing the source series")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def z_map_path(out: Path, z_out: Path | None = None, suffix: str = "_z") -> Path:
    """Where the z-map goes: ``z_out``, else ``<out stem><suffix>.nii.gz`` beside ``out``
    (``errors.nii.gz`` -> ``errors_z.nii.gz``, ``errors.nrrd`` -> ``errors_z.nii.gz``)."""
    if z_out is not None:
        return Path(z_out)
    out = Path(out)
    stem = next((out.name[: -len(known)] for known in NIFTI_SUFFIXES if out.name.endswith(known)), out.stem)
    return out.with_name(f"{stem}{suffix}.nii.gz")


def position_z_map_path(out: Path, position_z_out: Path | None = None) -> Path:
    """Where the position error's own z-map goes (bundles with an anomaly map):
    ``position_z_out``, else ``<out stem>_position_z.nii.gz`` beside ``out``."""
    return z_map_path(out, position_z_out, "_position_z")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    # here: SimpleITK and pydicom only when the command runs, so --help and argument errors stay fast
    from ppr.image.imageio import check_outputs, read_image, write_image
    from ppr.statistics.scores import ScoreOptions
    from ppr.workflows.bundle import load_bundle
    from ppr.workflows.detection import DetectOptions, detect

    dicom_paths = []
    if args.dicom_out is not None:  # refused before any work: DICOM results reference a DICOM series
        from ppr.workflows.dicom_results import check_dicom_input, dicom_result_paths

        check_dicom_input(args.input)
        dicom_paths = dicom_result_paths(args.dicom_out)
    # Before any work: outputs writable, none of them the input, --out and the z-map not one file.
    check_outputs([args.out, z_map_path(args.out, args.z_out), position_z_map_path(args.out, args.position_z_out)],
                  inputs=[args.input])
    if dicom_paths:
        check_outputs(dicom_paths, inputs=[args.input], suffixes=None)  # not into the series' own folder
    started = time.perf_counter()
    progress = _progress if args.progress else None
    if progress:
        progress(0.0, "reading the input and the model")
    image = read_image(args.input)
    bundle = load_bundle(args.model)
    loading = time.perf_counter() - started
    options = DetectOptions(method=args.method, stride=args.stride, device=args.device, tile=args.tile,
                            scores=ScoreOptions(args.aggregate), use_calibration=not args.no_calibration,
                            post_filter=args.post_filter)
    result = detect(image, bundle, options, progress)
    write_image(result.error_map_input, args.out)
    z_path = None
    if result.z_map_input is not None:
        z_path = z_map_path(args.out, args.z_out)
        write_image(result.z_map_input, z_path)
    position_path = None
    if result.position_z_map_input is not None:
        position_path = position_z_map_path(args.out, args.position_z_out)
        write_image(result.position_z_map_input, position_path)
    if dicom_paths:
        from ppr.workflows.dicom_results import write_detection_dicom

        if progress:
            progress(1.0, "writing the DICOM results")
        dicom_paths = write_detection_dicom(args.input, result, args.dicom_out)
    per_step = {"load": loading, **result.seconds}
    report = {
        "seconds": round(time.perf_counter() - started, 3),
        "seconds_per_step": {step: round(value, 3) for step, value in per_step.items()},
        "device": result.device,
        "stride": args.stride,
        "method": args.method,
        "aggregate": args.aggregate,
        "score_map": result.score_map,
        "error_unit": result.unit,
        "error": result.error_mm,
        **({"error_mm": result.error_mm} if result.unit == "mm" else {}),
        "post_filter": args.post_filter if bundle.method == "ae" else None,
        "z": result.z,
        "regions": result.regions,
        "overlay_threshold": result.overlay_threshold_z,
        "max_error_lps": list(result.max_error_lps),
        "registration_metric": result.registration.metric,
        "brain_shift_hu": round(result.brain_shift_hu, 2),
        "registration_note": result.registration.note,
        "output": str(args.out.resolve()),
        "z_map": None if z_path is None else str(z_path.resolve()),
        "shown_map": result.shown_map,
        "position_z_map": None if position_path is None else str(position_path.resolve()),
        "position_overlay_threshold": result.position_overlay_threshold_z,
        "dicom": [str(path.resolve()) for path in dicom_paths] if args.dicom_out is not None else None,
        "model": str(args.model),
        "reliability": None if result.reliability is None else result.reliability.to_json_dict(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(_summary_line(args, result, report))
    if result.reliability is not None and not result.reliability.reliable:
        if not args.json:
            print(f"WARNING: {result.reliability.message}")
        print(f"warning: {result.reliability.message}", file=sys.stderr, flush=True)
    if result.registration.note:  # e.g. a scan read upside down (its header was wrong)
        if not args.json:
            print(f"NOTE: {result.registration.note}")
        print(f"note: {result.registration.note}", file=sys.stderr, flush=True)
    return 0


def _summary_line(args: argparse.Namespace, result, report: dict) -> str:
    error = _mm if result.unit == "mm" else _intensity
    unit = _z if result.score_map == "z" else error
    regions = ", ".join(f"{name} {unit(value)}" for name, value in result.regions.items())
    line = f"wrote {args.out}: max error {error(result.error_mm['max'])}, p99 {error(result.error_mm['p99'])}"
    if report["z_map"] is not None:
        shown = "anomaly map" if result.shown_map == "anomaly" else "z-map"
        line += f"; {shown} {report['z_map']}: max {_z(result.z['max'])} (threshold {_z(result.overlay_threshold_z)})"
    if report["position_z_map"] is not None:
        line += f"; position z-map {report['position_z_map']}"
    if result.reliability is not None:
        check = result.reliability
        line += (f"; brain median z {_plain(check.brain_median_z)} (healthy scans "
                 f"{check.healthy_brain_median_z[0]:.2f} to {check.healthy_brain_median_z[1]:.2f})")
    if report["dicom"]:
        line += f"; DICOM results in {args.dicom_out}"
    return f"{line}; regions ({args.aggregate} of {result.score_map}): {regions}; {report['seconds']:.1f} s on {result.device}"


def _plain(value: float) -> str:
    return "n/a" if value != value else f"{value:.2f}"  # NaN: no measured brain


def _mm(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} mm"


def _intensity(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} (intensity)"


def _z(value: float | None) -> str:
    return "n/a" if value is None else f"z {value:.2f}"
