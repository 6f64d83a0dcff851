"""``shelfedge rec-distill --dataset movielens``: the recommendation student with and without KD vs the teacher."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli import emit, log
from sdk.errors import ConfigError
from sdk.rec_datasets import NAMED, RecDataset, open_rec_dataset

SHAPES = ("mean", "recency", "attention", "last_query", "gru")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="baskets", help=f"{', '.join(NAMED)}, a CSV file or a MovieLens folder")
    parser.add_argument("--kind", choices=("baskets", "sequences"), help="for a CSV file: what its rows are")
    parser.add_argument("--shape", choices=SHAPES, help="student encoder (default: mean for baskets, recency else)")
    parser.add_argument("--dim", type=int, help="embedding size (default: 32 for baskets, 64 else)")
    parser.add_argument("--epochs", type=int, help="student epochs, the same with and without KD (default 10 / 8)")
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation term (default 0.5)")
    parser.add_argument("--temperature", type=float, default=2.0, help="softening temperature (default 2)")
    parser.add_argument("--teacher-epochs", type=int, help="the teacher's most epochs (default 30, early stop)")
    parser.add_argument(
        "--teacher-dir", help="where the teacher is trained and cached (default out/rec-teacher/<dataset>)"
    )
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="split, training and bootstrap seed (default 0)")
    parser.add_argument("--out", help="output directory (default out/rec-distill/<dataset>)")
    parser.add_argument(
        "--no-bundles", action="store_true", help="do not package the chosen student (LiteRT, OpenVINO, ONNX bundles)"
    )
    parser.add_argument(
        "--table-precision", choices=("int8", "fp16", "fp32"), default="int8", help="item table in the bundles"
    )
    parser.add_argument(
        "--ivf-lists",
        type=int,
        help="also put an IVF index of this many lists in the bundles (about sqrt(items); for catalogues where "
        "brute force misses the profile's p99_recommend_ms, roughly 150k+ items; default: none)",
    )
    parser.epilog = "example: shelfedge rec-distill --dataset movielens --shape recency --dim 64 --epochs 8"


def run(args: argparse.Namespace) -> int:
    # Imported here: the converters pull in TensorFlow, which every other command can do without.
    from converters.training.rec_compare import write_comparison
    from converters.training.rec_distill import DistillRecConfig
    from converters.training.rec_distill_compare import compare_distillation

    dataset = open_rec_dataset(args.dataset, kind=args.kind, seed=args.seed, fallback=args.dataset in NAMED)
    n_items = dataset.split.n_items
    if args.ivf_lists is not None and not 1 <= args.ivf_lists <= n_items:  # refused before minutes of training
        raise ConfigError(f"--ivf-lists {args.ivf_lists}: pass 1..{n_items} (the catalogue), about sqrt(items)")
    baskets = dataset.interactions.kind == "baskets"
    config = DistillRecConfig(
        shape=args.shape or ("mean" if baskets else "recency"),
        dim=args.dim or (32 if baskets else 64),
        max_len=32 if baskets else 50,
        epochs=args.epochs or (10 if baskets else 8),
        alpha=args.alpha,
        temperature=args.temperature,
        seed=args.seed,
    )
    out = Path(args.out or Path("out") / "rec-distill" / dataset.name)
    result = compare_distillation(
        dataset,
        config,
        teacher_dir=Path(args.teacher_dir or Path("out") / "rec-teacher" / dataset.name),
        out_dir=out,
        teacher_epochs=args.teacher_epochs,
        resamples=args.resamples,
        seed=args.seed,
        log=log,
    )
    comparison = result.comparison
    paths = write_comparison(comparison, out)
    log(f"[rec-distill] report: {paths['markdown']}")
    payload = comparison.to_dict()
    if not args.no_bundles:
        bundles = _package(dataset, result.chosen(), out / "bundles", args.table_precision, args.ivf_lists)
        payload["bundles"] = {fmt.value: str(bundle.path) for fmt, bundle in bundles.items()}
    emit(args, payload, lambda: comparison.markdown() + f"\nreports: {out}")
    return 0


def _package(dataset: RecDataset, chosen: Any, out: Path, precision: str, ivf_lists: int | None) -> dict:
    """The chosen student (a ``DistillRecResult``) as LiteRT, OpenVINO and ONNX bundles with its item table."""
    from converters.export.rec_bundle import package_recommender
    from converters.models.rec_student import ENCODER_FILE
    from converters.training.rec_teacher_bundle import train_popularity

    student = chosen.student
    popularity = train_popularity(dataset)  # training rows only: cold start must not know the test items
    name = f"{dataset.name}-{student.config.get('shape')}{student.config.get('dim')}"
    log(f"[rec-distill] packaging {name} (best epoch {chosen.best_epoch}, val NDCG@10 {chosen.val_ndcg10:.4f})")
    bundles = package_recommender(
        # The saved file, not the in-memory model: the bundles' lineage then names the student on disk.
        chosen.student_dir / ENCODER_FILE,
        student.item_table,
        student.item_bias,
        dataset.interactions.catalogue,
        popularity,
        out_dir=out,
        name=name,
        kind=dataset.interactions.kind,
        formats=("tflite", "openvino", "onnx"),
        table_precision=precision,
        max_len=student.max_len,
        ivf_lists=ivf_lists,
        progress=lambda line: log(f"[rec-distill] {line}"),
    )
    for bundle in bundles.values():
        log(f"[rec-distill] bundle: {bundle.path}")
    return bundles
