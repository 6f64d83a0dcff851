"""``shelfedge distill``: distil the teacher into a smaller student; show what KD adds over the same student without.

Trains (or reuses) an EfficientNet-Lite student on the teacher bundle's soft targets plus the
hard labels and, unless ``--no-kd-baseline``, the same student on hard labels only; prints
teacher vs students (params, MACs, val top-1/top-5, train minutes). See :mod:`converters.training.distill`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.qa.tables import markdown_table

HELP = "distil the teacher into a smaller student (KD) and compare with the same student trained without KD"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="the teacher's Keras reference bundle directory")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--out", default="out/distill", help="output directory (default out/distill)")
    parser.add_argument(
        "--student",
        default="lite0",
        help="student: lite0, lite1, lite2 (or efficientnet_lite0), optionally @SIZE (default lite0)",
    )
    parser.add_argument(
        "--input-size", type=int, help="student input side in pixels (default 160, or the spec's @SIZE)"
    )
    parser.add_argument(
        "--drop-blocks",
        help="residual blocks left out of the student, comma-separated, or 'none' "
        "(default block6c,block6d: 2.55 M instead of 3.52 M parameters for lite0)",
    )
    parser.add_argument("--no-kd-baseline", action="store_true", help="skip the same student trained without KD")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs of the student's top")
    parser.add_argument("--views", type=int, help="cached augmented views per training photo")
    parser.add_argument("--temperature", type=float, help="KD temperature (default 4)")
    parser.add_argument("--alpha", type=float, help="weight of the KD term vs the hard labels (default 0.9)")
    parser.add_argument("--force", action="store_true", help="train again even if matching students are cached")
    parser.epilog = (
        "example: shelfedge distill --teacher out/teacher/bundles/teacher-keras-fp32 "
        "--data ../shared/data/grocery --out out/distill"
    )


def run(args: argparse.Namespace) -> int:
    from converters.training.distill import DistillConfig, parse_student_spec
    from converters.training.distill_compare import COLUMNS, compare

    variant, spec_size = parse_student_spec(args.student)
    overrides: dict[str, Any] = {
        field: value
        for field, value in (
            ("input_size", args.input_size or spec_size),
            ("epochs", args.epochs),
            ("views", args.views),
            ("temperature", args.temperature),
            ("alpha", args.alpha),
            ("drop_blocks", _blocks(args.drop_blocks)),
        )
        if value is not None
    }
    config = dataclasses.replace(DistillConfig(variant=variant), **overrides)
    data = data_dir(args.data)
    comparison = compare(
        Path(args.teacher), data, Path(args.out), config, baseline=not args.no_kd_baseline, log=log, force=args.force
    )

    def text() -> str:
        return (
            f"\n{markdown_table(comparison.rows(), COLUMNS)}\n\n{comparison.verdict()}\n\n"
            f"student bundle: {comparison.kd.bundle_path}\nreport: {Path(args.out) / 'comparison.md'}"
        )

    emit(args, comparison.to_dict(), text)
    return 0


def _blocks(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip().lower() == "none":
        return ()
    return tuple(name.strip() for name in value.split(",") if name.strip())
