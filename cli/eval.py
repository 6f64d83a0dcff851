"""``shelfedge eval BUNDLE --data DIR``: accuracy of a bundle, measured through ``sdk.load``."""

from __future__ import annotations

import argparse
from typing import Any

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.data import load_split
from sdk.qa.evaluation import evaluate
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", nargs="+", help="bundle directories")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--runtime", help="runtime to use (default: the profile's, else the format's)")
    parser.add_argument("--device", help="device (default: the profile's, else CPU)")
    parser.add_argument("--profile", help="hardware profile id or YAML path")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the first N images only (0: all)")
    parser.epilog = "example: shelfedge eval out/convert/android-arm64/chosen --data ../shared/data/grocery --json"


def run(args: argparse.Namespace) -> int:
    dataset = load_split(data_dir(args.data), args.split)
    if args.limit:
        dataset = dataset.head(args.limit)
    results = []
    for path in args.bundle:
        log(f"[eval] {path}: {len(dataset)} images")
        result = evaluate(path, dataset, profile=args.profile, runtime=args.runtime, device=args.device)
        results.append(result)
    payload: dict[str, Any] = {"results": [r.summary() for r in results]}
    if len(results) > 1:
        payload["agreement_with_first"] = [r.agreement(results[0]) for r in results]
    rows = [
        {
            "bundle": r.bundle,
            "runtime": r.ran.runtime.value,
            "device": r.ran.actual_device,
            "precision": r.ran.precision.value,
            "images": len(r.labels),
            "top-1": r.top1,
            "top-5": r.top5,
            "agreement w/ first": r.agreement(results[0]),
        }
        for r in results
    ]
    emit(args, payload, lambda: markdown_table(rows))
    return 0
