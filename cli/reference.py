"""``shelfedge reference``: save the server model's outputs to compare against elsewhere.

Images: the Keras reference bundle's logits on a labelled split. Recommendations (``--dataset``, or
a recommendation bundle / teacher as ``--model``): every item's score and the top-10 for each
evaluation case, with per-case history and window hashes (:mod:`sdk.qa.rec_reference`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from cli._rec_reference import is_recommendation_model, make_reference, open_dataset
from sdk.data import load_split
from sdk.errors import ConfigError
from sdk.qa.rec_reference_spec import RecDatasetSpec
from sdk.rec_datasets import NAMED


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="the server model's Keras reference bundle (images); for recommendations a recommendation bundle "
        "TensorFlow runs (savedmodel/keras), a saved student directory (student.json) or the teacher (.keras "
        "file or the directory holding teacher.keras)",
    )
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument(
        "--dataset", help=f"recommendations: {', '.join(NAMED)}, a CSV file or a MovieLens folder (the cases)"
    )
    parser.add_argument("--split", help="images: val (default) / train / test; recommendations: test (default) / valid")
    parser.add_argument("--limit", type=int, default=0, help="first N images / cases only (0: all)")
    parser.add_argument("--seed", type=int, default=0, help="recommendations: the basket split's seed (default 0)")
    parser.add_argument("--out", required=True, help="reference directory to write (npz + json)")
    parser.add_argument(
        "--bundle-out",
        help="recommendations: keep the SavedModel bundle a student or teacher --model is packaged as, here "
        "(default: a temporary directory)",
    )
    parser.epilog = (
        "examples: shelfedge reference --model out/quickstart/bundles/shelf_cnn-keras-fp32 "
        "--data ../shared/data/grocery --out out/ref; "
        "shelfedge reference --model out/rec-teacher/baskets --dataset baskets --out out/rec-ref/baskets/teacher"
    )


def run(args: argparse.Namespace) -> int:
    if args.dataset or is_recommendation_model(args.model):
        return _run_recommendations(args)
    from sdk.qa.parity_run import make_reference

    dataset = load_split(data_dir(args.data), args.split or "val")
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


def _run_recommendations(args: argparse.Namespace) -> int:
    if not args.dataset:
        raise ConfigError(
            f"--model {args.model} is a recommender: pass --dataset ({', '.join(NAMED)}, a CSV file, ...)"
        )
    dataset = open_dataset(args.dataset, args.seed)
    spec = RecDatasetSpec.of(dataset, args.dataset, split=args.split or "test", limit=args.limit, seed=args.seed)
    bundle_out = Path(args.bundle_out) if args.bundle_out else None
    ref = make_reference(args.model, dataset, spec, Path(args.out), bundle_out=bundle_out)
    info = ref.info
    payload = {
        "path": str(ref.path),
        "cases": ref.num_cases,
        "dataset": ref.dataset.to_dict(),
        "info": dict(info),
        "npz_sha256": ref.npz_sha256,
    }
    emit(
        args,
        payload,
        lambda: (
            f"reference: {ref.path} ({ref.cases}, {ref.dataset.n_items:,} items): {info['model_name']} "
            f"({info['model_kind']}) ran on {info['runtime']} {info['device']}: {info['note']}"
        ),
    )
    return 0
