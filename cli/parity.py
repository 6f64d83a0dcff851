"""``shelfedge parity``: every bundle on every runtime against the server reference; exit 1 on a failure."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.data import load_split
from sdk.enums import Runtime
from sdk.profiles import load_profile
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", action="append", required=True, help="bundle directory (repeatable)")
    parser.add_argument(
        "--reference",
        required=True,
        help="a saved reference directory (shelfedge reference) or the server model's Keras bundle",
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0, help="first N images when computing the reference now")
    parser.add_argument("--profile", help="run on this profile's runtime/device and judge with its tolerances")
    parser.add_argument("--runtime", action="append", help="restrict to these runtimes (repeatable)")
    parser.add_argument("--out", help="write parity.json and parity.md here")
    parser.epilog = (
        "example: shelfedge parity --bundle out/quickstart/bundles/shelf_cnn-tflite-fp32 "
        "--bundle out/quickstart/bundles/shelf_cnn-onnx-fp32 --reference out/ref"
    )


def run(args: argparse.Namespace) -> int:
    from sdk.qa.parity_run import open_reference, run_parity

    dataset = load_split(data_dir(args.data), args.split)
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
