"""``shelfedge convert``: a model + hardware profile(s) -> the best bundle within the accuracy budget.

Image classifiers (a Keras bundle, or a student to distil first) go through
``converters.convert.pipeline``; a recommendation student directory (``shelfedge rec-distill``'s
``student/``) or a Keras recommendation bundle, with ``--dataset``, goes through
``converters.convert.rec_pipeline`` (budget: validation NDCG@10 points).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile, load_profile
from sdk.qa.tables import markdown_table
from sdk.rec_datasets import NAMED, open_rec_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a Keras reference bundle directory (e.g. the teacher's), or the student "
        "architecture to distil with --distill-from (efficientnet_lite0, or "
        "efficientnet_lite0@160 for a 160-pixel student); or a recommendation student directory "
        "(out/rec-distill/<dataset>/student-kd/student) or Keras recommendation bundle, with --dataset",
    )
    parser.add_argument("--profile", required=True, help="hardware profile id(s), comma-separated")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--out", default="out/convert", help="output directory (default out/convert)")
    parser.add_argument(
        "--distill-from", metavar="TEACHER", help="teacher bundle: first distil a smaller student from it (cached)"
    )
    parser.add_argument(
        "--budget",
        type=float,
        help="allowed val top-1 drop in points (recommendations: val NDCG@10 x 100) (default: the profile's)",
    )
    parser.add_argument(
        "--dataset",
        help="recommendations: the dataset the student was trained on (baskets, movielens, "
        "synthetic-baskets, synthetic-sequences, a CSV file or a MovieLens folder)",
    )
    parser.add_argument("--kind", choices=("baskets", "sequences"), help="recommendations, a CSV --dataset: its rows")
    parser.add_argument(
        "--ivf-lists",
        type=int,
        help="recommendation models: also store an IVF index of N lists in the bundles (about sqrt(items); "
        "recommend() searches it past the profile's latency budget)",
    )
    parser.add_argument(
        "--table-precision",
        choices=("int8", "fp16", "fp32"),
        default="int8",
        help="recommendations: the item table in every bundle (default int8, one scale per row)",
    )
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=300,
        help="recommendations: training histories drawn to calibrate int8 (default 300)",
    )
    parser.add_argument("--seed", type=int, default=0, help="recommendations: split, calibration and bootstrap seed")
    parser.add_argument(
        "--calibration-per-class",
        type=int,
        default=3,
        help="calibration images per class, drawn class-balanced from train (default 3)",
    )
    parser.add_argument(
        "--eval-limit",
        type=int,
        default=0,
        help="verify on a class-balanced subset of about N val images; recommendations: the first N validation "
        "and test cases (0: all)",
    )
    parser.add_argument(
        "--qat",
        choices=("auto", "always", "off"),
        default="auto",
        help="quantization-aware fine-tuning: auto = the last resort when int8 misses the budget "
        "after PTQ (default), always = an extra int8 candidate, off = never",
    )
    parser.add_argument("--qat-epochs", type=int, default=2, help="quantization-aware fine-tuning epochs (default 2)")
    parser.epilog = (
        "examples: shelfedge convert --model efficientnet_lite0@160 --distill-from out/teacher/bundles/"
        "teacher-keras-fp32 --profile x86-kiosk-cpu,android-arm64 --data ../shared/data/grocery; "
        "shelfedge convert --model out/rec-distill/baskets/student-kd/student --dataset baskets "
        "--profile x86-kiosk-cpu,android-arm64,onnxruntime-cpu --out out/rec-convert/baskets"
    )


def run(args: argparse.Namespace) -> int:
    from converters.convert.rec_source import is_recommendation_source

    profiles = [load_profile(p.strip()) for p in args.profile.split(",") if p.strip()]
    if not profiles:
        raise ConfigError("--profile needs at least one profile id")
    if is_recommendation_source(args.model):
        return _run_recommendation(args, profiles)
    if args.dataset:
        raise ConfigError(
            f"--dataset is for recommendation models, but --model {args.model} is neither a recommendation student "
            "directory (student.json) nor a recommendation bundle; image models take --data"
        )
    return _run_image(args, profiles)


def _run_image(args: argparse.Namespace, profiles: list[HardwareProfile]) -> int:
    from converters.convert.pipeline import ConvertConfig, convert
    from converters.convert.plan import plan

    data_root = data_dir(args.data)
    plans = [plan(p, args.budget) for p in profiles]  # every plan is checked before any work
    config = ConvertConfig(
        calibration_per_class=args.calibration_per_class,
        eval_limit=args.eval_limit,
        qat=args.qat,
        qat_epochs=args.qat_epochs,
    )
    out = Path(args.out)
    reports = []
    for p in plans:
        height, width = p.profile.input_size
        source = _source(args, data_root, out, (height, width))
        log(f"[convert] {source.description} -> {p.profile.id}")
        reports.append(convert(source, p, data_root, out, config, log=log))
    payload = {"reports": [r.to_dict() for r in reports]}

    def text() -> str:
        parts = []
        for r in reports:
            parts.append(
                f"\n{r.plan.profile.id} ({r.plan.format.value}, budget {r.plan.max_drop_pt} pt, "
                f"{r.seconds / 60:.1f} min): chosen {r.chosen.path}\n\n"
                + markdown_table(r.rows())
                + f"\n\nreport: {out / r.plan.profile.id / 'report.md'}"
            )
        return "\n".join(parts)

    emit(args, payload, text)
    return 0


def _run_recommendation(args: argparse.Namespace, profiles: list[HardwareProfile]) -> int:
    from converters.convert.rec_pipeline import (
        RecConvertConfig,
        RecSource,
        convert_recommender,
        rec_plan,
    )

    if not args.dataset:
        raise ConfigError(
            f"--model {args.model} is a recommendation model: give --dataset, the data it was trained on "
            f"({', '.join(NAMED)}, a CSV file or a MovieLens folder)"
        )
    plans = [rec_plan(p, args.budget) for p in profiles]  # every plan is checked before any work
    config = RecConvertConfig(
        table_precision=args.table_precision,
        calibration_size=args.calibration_size,
        max_cases=args.eval_limit,
        seed=args.seed,
        ivf_lists=args.ivf_lists,
    )
    dataset = open_rec_dataset(args.dataset, kind=args.kind, seed=args.seed, fallback=args.dataset in NAMED)
    source = RecSource.open(args.model, dataset.name)
    source.check_fits(dataset)  # before the first profile's export
    out = Path(args.out)
    reports = []
    for p in plans:
        log(f"[convert] {source.description} on {dataset.name} -> {p.profile.id}")
        reports.append(convert_recommender(source, p, dataset, out, config, log=log))
    payload = {"reports": [r.to_dict() for r in reports]}

    def text() -> str:
        parts = [f"{dataset.note}\n{dataset.split.describe()}"]
        for r in reports:
            parts.append(
                f"\n{r.plan.profile.id} ({r.plan.format.value}, budget {r.plan.max_drop_pt:g} pt val NDCG@10, "
                f"{r.seconds / 60:.1f} min): chosen {r.chosen.path}\n\n"
                + markdown_table(r.rows(), _SUMMARY_COLUMNS)
                + "".join(f"\n- {v.name} misses: {'; '.join(v.misses)}" for v in r.variants if v.misses)
                + "".join(
                    f"\n- {v.name} is not chosen: {v.size_bytes / 1e6:.3f} MB, larger than the fp32 bundle"
                    for v in r.variants
                    if v.larger_than_fp32
                )
                + f"\n\nreport: {out / r.plan.profile.id / 'report.md'}"
            )
        return "\n".join(parts)

    emit(args, payload, text)
    return 0


_SUMMARY_COLUMNS = (
    "precision",
    "size MB",
    "size vs fp32",
    "val NDCG@10",
    "drop pt",
    "val overlap@10",
    "test NDCG@10 [95% CI]",
    "coverage@10",
    "kept in float",
    "meets budget",
    "chosen",
)


def _source(args: argparse.Namespace, data_root: Path, out: Path, input_size: tuple[int, int]):  # -> ModelSource
    from converters.convert.pipeline import ModelSource

    if not args.distill_from:
        if not Path(args.model).is_dir():
            raise ConfigError(
                f"--model {args.model}: give a Keras reference bundle directory (shelfedge export --formats "
                "keras, or the teacher's), or a student architecture together with --distill-from TEACHER"
            )
        return ModelSource.from_bundle(args.model)
    from converters.training.distill import distill_for_convert

    return distill_for_convert(args.model, Path(args.distill_from), data_root, out / "students", input_size, log=log)
