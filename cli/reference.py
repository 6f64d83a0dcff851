"""``shelfedge reference``: save the server model's outputs to compare against elsewhere."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.data import load_split


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the server model's Keras reference bundle")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--out", required=True, help="reference directory to write (npz + json)")
    parser.epilog = (
        "example: shelfedge reference --model out/quickstart/bundles/shelf_cnn-keras-fp32 "
        "--data ../shared/data/grocery --out out/ref"
    )


def run(args: argparse.Namespace) -> int:
    from sdk.qa.parity_run import make_reference

    dataset = load_split(data_dir(args.data), args.split)
    if args.limit:
        dataset = dataset.head(args.limit)
    ref = make_reference(args.model, dataset, Path(args.out), log=log)
    payload = {"path": str(ref.path), "samples": ref.num_samples, "info": dict(ref.info), "npz_sha256": ref.npz_sha256}
    emit(
        args,
        payload,
        lambda: (
            f"reference: {ref.path} ({ref.num_samples} images) ran on "
            f"{ref.info['runtime']} {ref.info['device']}: {ref.info['note']}"
        ),
    )
    return 0
