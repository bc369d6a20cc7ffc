"""``python -m ppr evaluate``: evaluate a model bundle on labelled cases (argument parsing, printing).

Example::

    python -m ppr evaluate --model bundle/ --cases cases.csv --out eval/ --bootstrap 1000 --seed 0

Several models on the same cases (e.g. PPR and the autoencoder baseline)::

    python -m ppr evaluate --model ppr_bundle/ --model ae_bundle/ --cases cases.csv --out eval/

writes each model's results in ``eval/<bundle name>/<score map>/`` (the raw error, "mm" or
"intensity", and "z" where the bundle is calibrated; ``--score-map`` does not apply) and the
comparison in ``eval/comparison.json`` (key ``methods``: one row per model and score map) and
``eval/comparison.md`` (the same as a table). With one ``--model`` the output is as it always was.

A case that cannot be scored (unreadable, refused by registration) does not stop the evaluation: its
row in ``cases.csv`` says "failed" and why, the summary counts and names it (``n_failed``,
``failed_cases``), and the figures are over the other cases.

CASES.csv: ``image`` (path relative to the CSV), ``anomalous`` (0/1), optional ``mask`` (voxel
labels on the image's grid), ``left``, ``right``, ``skull`` (0/1 per structure) and ``case``.
The work is done by ``ppr.workflows.evaluation``; this module only parses and prints.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ppr.errors import PPRError
from ppr.networks.autoencoder import POST_FILTERS
from ppr.statistics.calibration import AGGREGATE_METHODS, Aggregation
from ppr.workflows.bundle import load_bundle
from ppr.workflows.evaluation import (
    SCORE_MAPS, STRUCTURES, VOXEL_CASES, BundleDetector, EvaluationConfig, ModelUnderTest, comparison_markdown, evaluate,
    evaluate_models, model_names, read_cases,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, action="append",
                        help="model bundle folder; repeat to compare several models on the same cases")
    parser.add_argument("--cases", required=True, type=Path, help="cases CSV (image, anomalous, [mask, left, right, skull])")
    parser.add_argument("--out", required=True, type=Path, help="output folder (scores, summary, ROC curves, cache)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON line last on stdout")
    parser.add_argument("--stride", type=int, default=1, choices=(1, 2, 4), help="error map preview stride (1 = full)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--score-map", default="auto", choices=("auto", *SCORE_MAPS),
                        help="z (calibrated) or the raw error (mm for PPR, intensity for an autoencoder); auto "
                             "takes z when the bundle is calibrated (one model only)")
    parser.add_argument("--post-filter", choices=POST_FILTERS, default="erosion",
                        help="autoencoder bundles: residual post-filter (erosion: haemorrhage, median: fracture)")
    parser.add_argument("--aggregate", default="percentile", choices=AGGREGATE_METHODS,
                        help="how a region's voxels become its score (default: the 99th percentile, "
                             "as detection scores regions)")
    parser.add_argument("--p", type=float, default=99.0, help="percentile for --aggregate percentile")
    parser.add_argument("--k", type=float, default=0.01, help="top-k for top_k_mean: fraction (<1) or voxel count")
    parser.add_argument("--voxel-cases", default="masked", choices=VOXEL_CASES,
                        help="voxel metrics over cases with a mask, or also healthy cases as all-negative (MOOD)")
    parser.add_argument("--mood", type=Path, default=None, help="also write MOOD challenge files into this folder")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines on stderr")


def _progress(fraction: float, message: str) -> None:
    print(f"PROGRESS {fraction:.3f} {message}", file=sys.stderr, flush=True)


def _format(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def _interval(bounds: list[float | None]) -> str:
    return "" if bounds[0] is None else f" [{bounds[0]:.3f}, {bounds[1]:.3f}]"


def print_summary(summary: dict) -> None:
    print(f"{summary['n_cases']} cases ({summary['n_anomalous']} anomalous); score: "
          f"{summary['score']['map']}, {summary['score']['aggregate']}")
    if summary.get("n_failed"):
        print(f"  {summary['n_failed']} case(s) failed and count in no figure below (reasons in cases.csv):")
        for name, reason in summary["failed_cases"].items():
            print(f"    {name}: {reason}")
    for structure in STRUCTURES:
        print(f"  {structure:6s} AUROC {_format(summary['auroc'][structure])}{_interval(summary['auroc_ci95'][structure])}"
              f"  AP {_format(summary['average_precision'][structure])}"
              f"{_interval(summary['average_precision_ci95'][structure])}"
              f"  ({summary['n_positive'][structure]} vs {summary['n_negative'][structure]})")
    if summary["voxel"] is not None:
        voxel = summary["voxel"]
        print(f"  voxels: AP {_format(summary['voxel_ap'])}, best Dice {_format(summary['best_dice'])} "
              f"over {voxel['n_cases']} cases ({voxel['n_positive']} of {voxel['n_voxels']} voxels anomalous)")
    localisation = summary.get("localisation")
    if localisation is not None:
        print(f"  localisation on {localisation['n_cases']} lesion cases (input grid): voxel AP / best Dice / "
              "top 1 % touches the lesion")
        for kind, figures in localisation["maps"].items():
            cells = "; ".join(f"{region}: {_format(figures[region]['voxel_ap'])} / {_format(figures[region]['best_dice'])}"
                              f" / {figures[region]['top1_touches']} of {localisation['n_cases']}"
                              for region in ("head", "brain and skull"))
            healthy = figures["healthy_flagged_mean"]
            above = "" if healthy is None else f"; healthy brain and skull above its threshold {100 * healthy:.2f} %"
            if figures.get("patient_auroc_p99_brain_and_skull") is not None:
                above += f"; patient AUROC of its p99 in brain and skull {figures['patient_auroc_p99_brain_and_skull']:.3f}"
            print(f"    {kind:10s} {cells} (threshold z {figures['threshold']:.2f}{above})")
    flagged = summary.get("healthy_flagged_fraction")
    if flagged is not None:
        print(f"  healthy cases: {100 * flagged['mean']:.2f} % of brain and skull at or above the overlay "
              f"threshold (per case: {', '.join(f'{n} {100 * v:.2f} %' for n, v in flagged['cases'].items())})")


def print_comparison(comparison: dict) -> None:
    print(comparison_markdown(comparison), end="")


def _raw_or_z(requested: str, bundle) -> str:
    """The score map of a single-model run: "auto" takes z when calibrated; "mm" and "intensity"
    both mean the raw error and are named by the bundle's own unit."""
    if requested == "auto":
        return "z" if bundle.calibration is not None else bundle.error_unit
    return requested if requested == "z" else bundle.error_unit


def run(args: argparse.Namespace) -> int:
    cases = read_cases(args.cases)  # before the model: a bad CSV is reported at once
    if len(args.model) > 1:
        return _run_comparison(args, cases)
    bundle = load_bundle(args.model[0])
    score_map = _raw_or_z(args.score_map, bundle)
    config = EvaluationConfig(
        score_map=score_map,
        aggregation=Aggregation(args.aggregate, p=args.p, k=args.k),
        n_bootstrap=args.bootstrap,
        seed=args.seed,
        voxel_cases=args.voxel_cases,
    )
    detector = BundleDetector(bundle, stride=args.stride, device=args.device, post_filter=args.post_filter)
    summary = evaluate(cases, detector, bundle.region_masks, args.out, config, bundle.calibration,
                       _progress if args.progress else None, mood_dir=args.mood,
                       intensity_atlas=getattr(bundle, "intensity_atlas", None), preprocess=bundle.preprocess)
    print_summary(summary)
    print(f"written to {args.out}")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0


def _run_comparison(args: argparse.Namespace, cases) -> int:
    if args.mood is not None:
        raise PPRError("--mood writes one model's challenge files: give it with a single --model.")
    if args.score_map != "auto":
        raise PPRError("--score-map applies to one model: a comparison evaluates the raw error of every "
                       "model and the z-map of every calibrated one.")
    models = [ModelUnderTest(name, load_bundle(path)) for name, path in zip(model_names(args.model), args.model)]
    config = EvaluationConfig(aggregation=Aggregation(args.aggregate, p=args.p, k=args.k),
                              n_bootstrap=args.bootstrap, seed=args.seed, voxel_cases=args.voxel_cases)
    comparison = evaluate_models(cases, models, args.out, config, stride=args.stride, device=args.device,
                                 post_filter=args.post_filter, progress=_progress if args.progress else None)
    print_comparison(comparison)
    print(f"written to {args.out} (comparison.json, comparison.md)")
    if args.json:
        print(json.dumps(comparison, sort_keys=True))
    return 0
