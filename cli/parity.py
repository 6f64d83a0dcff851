"""``shelfedge parity``: every bundle on every runtime against the server reference; exit 1 on a failure.

Recommendation bundles (or a recommendation reference) go to :mod:`sdk.qa.rec_parity`: overlap@10,
NDCG@10 vs the reference's ranking and the held-out NDCG@10 ratio; the score vectors' tensor tier
when the reference is the same model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from cli._rec_reference import (
    is_recommendation_bundle,
    make_reference,
    open_dataset,
    reference_cases,
    register_layers,
)
from sdk.data import load_split
from sdk.enums import Runtime
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases
from sdk.profiles import load_profile
from sdk.qa.rec_reference import RecReference, is_rec_reference, load_rec_reference
from sdk.qa.rec_reference_spec import RecDatasetSpec, select_cases
from sdk.qa.tables import markdown_table
from sdk.rec_datasets import NAMED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", action="append", required=True, help="bundle directory (repeatable)")
    parser.add_argument(
        "--reference",
        required=True,
        help="a saved reference directory (shelfedge reference) or the server model's Keras bundle; for "
        "recommendations also a recommendation bundle or the teacher (.keras / its directory) with --dataset",
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument(
        "--dataset",
        help=f"recommendations: {', '.join(NAMED)}, a CSV file or a MovieLens folder (default: the saved "
        "reference's own); needed when the reference is computed now",
    )
    parser.add_argument("--split", help="images: val (default); recommendations, computing a reference now: test")
    parser.add_argument("--limit", type=int, default=0, help="first N images / cases when computing the reference now")
    parser.add_argument("--seed", type=int, default=0, help="recommendations: the basket split's seed (reference now)")
    parser.add_argument("--resamples", type=int, default=1000, help="recommendations: bootstrap resamples (1000)")
    parser.add_argument("--profile", help="run on this profile's runtime/device and judge with its tolerances")
    parser.add_argument("--runtime", action="append", help="restrict to these runtimes (repeatable)")
    parser.add_argument("--out", help="write parity.json and parity.md here")
    parser.epilog = (
        "examples: shelfedge parity --bundle out/quickstart/bundles/shelf_cnn-tflite-fp32 "
        "--bundle out/quickstart/bundles/shelf_cnn-onnx-fp32 --reference out/ref; "
        "shelfedge parity --bundle out/rec-distill/baskets/bundles/baskets-mean32-tflite-fp32 "
        "--reference out/rec-ref/baskets/student --out out/rec-parity/baskets"
    )


def run(args: argparse.Namespace) -> int:
    if is_rec_reference(args.reference) or any(is_recommendation_bundle(b) for b in args.bundle):
        return _run_recommendations(args)
    from sdk.qa.parity_run import open_reference, run_parity

    dataset = load_split(data_dir(args.data), args.split or "val")
    if args.limit:
        dataset = dataset.head(args.limit)
    reference = open_reference(args.reference, dataset, log=log)
    profile = load_profile(args.profile) if args.profile else None
    runtimes = [Runtime.parse(r, "runtime") for r in args.runtime] if args.runtime else None
    results = run_parity(args.bundle, reference, dataset, profile=profile, runtimes=runtimes, log=log)
    passed = all(r.verdict.passed for r in results)
    payload = {
        "schema_version": 1,
        "passed": passed,
        "reference": {"path": str(reference.path), **dict(reference.info)},
        "results": [r.to_dict() for r in results],
    }
    table = markdown_table([r.row() for r in results])
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        where = "".join(
            f"- {Path(r.bundle).name} on {r.runtime.value}: {r.localisation['summary']}\n"
            for r in results
            if r.localisation
        )
        (out / "parity.md").write_text(
            f"# shelfedge parity\n\nReference: {reference.info.get('note')} "
            f"({reference.num_samples} images).\n\n{table}\n"
            + (f"\n## Where failures start\n\n{where}" if where else ""),
            encoding="utf-8",
        )

    def text() -> str:
        failures = [
            f"  {Path(r.bundle).name} on {r.runtime.value}: "
            + "; ".join(c.describe() for c in r.verdict.checks if not c.passed)
            + (f"\n    {r.localisation['summary']}" if r.localisation else "")
            for r in results
            if not r.verdict.passed
        ]
        return (
            f"reference: {reference.info['runtime']} on {reference.info['device']} "
            f"({reference.info.get('note')}), {reference.num_samples} images\n\n{table}\n"
            + ("\nfailed checks:\n" + "\n".join(failures) if failures else "\nall checks passed")
        )

    emit(args, payload, text)
    return 0 if passed else 1


def _run_recommendations(args: argparse.Namespace) -> int:
    """Recommendation bundles against a saved recommendation reference, or one computed now."""
    from sdk.qa.rec_parity import markdown, run_rec_parity

    images = [b for b in args.bundle if not is_recommendation_bundle(b)]
    if images:
        raise ConfigError(f"--bundle {images[0]} is not a recommendation bundle; compare image bundles separately")
    reference, cases = _rec_reference(args)
    register_layers(args.bundle)
    profile = load_profile(args.profile) if args.profile else None
    runtimes = [Runtime.parse(r, "runtime") for r in args.runtime] if args.runtime else None
    results = run_rec_parity(
        args.bundle, reference, cases, profile=profile, runtimes=runtimes, resamples=args.resamples, log=log
    )
    if not results:
        raise ConfigError(
            "parity: no bundle ran on any runtime (see the skipped lines); install the runtime or pass "
            "--runtime / --profile that reads the bundles' formats"
        )
    passed = all(r.passed for r in results)
    payload = {
        "schema_version": 1,
        "task": "recommendation",
        "passed": passed,
        "reference": {"path": str(reference.path), "dataset": reference.dataset.to_dict(), **dict(reference.info)},
        "results": [r.to_dict() for r in results],
    }
    report = markdown(results, reference)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "parity.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        (out / "parity.md").write_text(report, encoding="utf-8")
    judged = [r for r in results if r.judged]
    summary = (
        "no row judged (see the notes)"
        if not judged
        else ("all judged rows passed" if passed else "FAILED: " + ", ".join(r.status for r in judged if not r.passed))
    )
    emit(args, payload, lambda: f"{report}\n{summary}")
    return 0 if passed else 1


def _rec_reference(args: argparse.Namespace) -> tuple[RecReference, EvalCases]:
    """The saved reference and its cases (opened again), or a reference computed now in a temporary directory."""
    if is_rec_reference(args.reference):
        reference = load_rec_reference(args.reference)
        return reference, reference_cases(reference, args.dataset)
    if not args.dataset:
        raise ConfigError(
            f"--reference {args.reference} is not a saved recommendation reference: pass --dataset to compute one now"
        )
    import tempfile

    dataset = open_dataset(args.dataset, args.seed)
    spec = RecDatasetSpec.of(dataset, args.dataset, split=args.split or "test", limit=args.limit, seed=args.seed)
    with tempfile.TemporaryDirectory(prefix="shelfedge-rec-reference-") as tmp:
        reference = make_reference(args.reference, dataset, spec, Path(tmp) / "ref")
    return reference, select_cases(dataset, spec.split, spec.limit)
