"""``shelfedge rec-compare --dataset baskets``: recommenders side by side, with 95% intervals."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import emit, log
from sdk.rec_datasets import NAMED, open_rec_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        default="baskets",
        help=f"{', '.join(NAMED)}, a CSV file (user,item[,timestamp] with a header, or one basket per line) "
        "or a MovieLens folder (default: baskets; its synthetic kin when ../shared/data is absent)",
    )
    parser.add_argument("--kind", choices=("baskets", "sequences"), help="for a CSV file: what its rows are")
    parser.add_argument(
        "--baselines", default="popularity,item-knn,ease,als", help="comma-separated (default: all four)"
    )
    parser.add_argument(
        "--teacher", action="store_true", help="also train (or reuse) the self-attention teacher and rank it"
    )
    parser.add_argument(
        "--teacher-dir", help="where the teacher is trained and cached (default out/rec-teacher/<dataset>)"
    )
    parser.add_argument("--teacher-epochs", type=int, help="the teacher's most epochs (default 30, early stop)")
    parser.add_argument("--no-tune", action="store_true", help="use each baseline's defaults, no validation search")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="split and bootstrap seed (default 0)")
    parser.add_argument("--out", help="output directory (default out/rec-compare/<dataset>)")
    parser.epilog = "example: shelfedge rec-compare --dataset movielens --teacher"


def run(args: argparse.Namespace) -> int:
    # Imported here: the converters pull in TensorFlow, which every other command can do without.
    from converters.training.rec_compare import RecCompareConfig, compare_recommenders, teacher_for, write_comparison

    dataset = open_rec_dataset(args.dataset, kind=args.kind, seed=args.seed, fallback=args.dataset in NAMED)
    config = RecCompareConfig(
        baselines=tuple(b.strip() for b in args.baselines.split(",") if b.strip()),
        tune=not args.no_tune,
        resamples=args.resamples,
        seed=args.seed,
    )
    out = Path(args.out or Path("out") / "rec-compare" / dataset.name)
    teacher_dir = Path(args.teacher_dir or Path("out") / "rec-teacher" / dataset.name)  # shared with rec-distill
    extra = [teacher_for(dataset, teacher_dir, epochs=args.teacher_epochs, log=log)] if args.teacher else []
    comparison = compare_recommenders(dataset, config, extra=extra, log=log)
    paths = write_comparison(comparison, out)
    log(f"[rec-compare] {len(comparison.rows)} models in {comparison.seconds:.1f} s; report: {paths['markdown']}")
    emit(args, comparison.to_dict(), lambda: comparison.markdown() + f"\nreports: {out}")
    return 0
