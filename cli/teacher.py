"""``shelfedge teacher``: train (or reuse) the reference server model on the Grocery Store photos.

EfficientNet-Lite, ImageNet-pretrained, fine-tuned on the 81 fine-grained classes on this
machine's CPU; the result is cached in ``--out`` and reused while the config and the data are
unchanged. See :mod:`converters.training.teacher`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.qa.tables import markdown_table

HELP = "train or reuse the reference server model (EfficientNet-Lite fine-tuned on the Grocery photos)"
COLUMNS = ["variant", "input size", "params", "val top-1", "val top-5", "train minutes", "cached"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--out", default="out/teacher", help="output directory (default out/teacher)")
    parser.add_argument(
        "--variant", choices=["lite0", "lite1", "lite2"], help="EfficientNet-Lite variant (default lite0)"
    )
    parser.add_argument("--input-size", type=int, help="input side in pixels (default: the variant's own)")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs over the cached features")
    parser.add_argument("--views", type=int, help="cached views per training photo (view 0 un-augmented)")
    parser.add_argument("--train-stages", type=int, help="top MBConv stages to train (the rest stay frozen)")
    parser.add_argument("--seed", type=int, help="seed of weights, augmentation and batch order")
    parser.add_argument("--threads", type=int, help="TensorFlow threads (default: every core)")
    parser.add_argument("--force", action="store_true", help="train again even if a matching run is cached")
    parser.epilog = "example: shelfedge teacher --data ../shared/data/grocery --out out/teacher"


def run(args: argparse.Namespace) -> int:
    from converters.training.teacher import TeacherConfig, train_teacher

    overrides = {
        field: value
        for field, value in (
            ("variant", args.variant),
            ("input_size", args.input_size),
            ("epochs", args.epochs),
            ("views", args.views),
            ("train_stages", args.train_stages),
            ("seed", args.seed),
        )
        if value is not None
    }
    config = dataclasses.replace(TeacherConfig(), **overrides)
    data = data_dir(args.data)
    result = train_teacher(data, Path(args.out), config, log=log, force=args.force, threads=args.threads)
    row = {
        "variant": result.variant,
        "input size": result.input_size,
        "params": f"{result.params:,}",
        "val top-1": result.val_top1,
        "val top-5": result.val_top5,
        "train minutes": round(result.train_seconds / 60, 1),
        "cached": result.cached,
    }
    payload: dict[str, Any] = {
        key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(result).items()
    }
    payload["config"] = config.to_dict()

    def text() -> str:
        return (
            f"\n{markdown_table([row], COLUMNS)}\n\n"
            f"model: {result.model_path}\nbundle: {result.bundle_path}\nreport: {result.report_path}"
        )

    emit(args, payload, text)
    return 0
