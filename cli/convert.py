"""``shelfedge convert``: a model + hardware profile(s) -> the best bundle within the accuracy budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli import data_dir, emit, log
from cli._common import DATA_HELP
from sdk.errors import ConfigError
from sdk.profiles import load_profile
from sdk.qa.tables import markdown_table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        help="a Keras reference bundle directory (e.g. the teacher's), or the student "
        "architecture to distil with --distill-from (efficientnet_lite0, or "
        "efficientnet_lite0@160 for a 160-pixel student)",
    )
    parser.add_argument("--profile", required=True, help="hardware profile id(s), comma-separated")
    parser.add_argument("--data", help=DATA_HELP)
    parser.add_argument("--out", default="out/convert", help="output directory (default out/convert)")
    parser.add_argument(
        "--distill-from", metavar="TEACHER", help="teacher bundle: first distil a smaller student from it (cached)"
    )
    parser.add_argument("--budget", type=float, help="allowed val top-1 drop in points (default: the profile's)")
    parser.add_argument(
        "--calibration-per-class",
        type=int,
        default=3,
        help="calibration images per class, drawn class-balanced from train (default 3)",
    )
    parser.add_argument(
        "--eval-limit", type=int, default=0, help="verify on a class-balanced subset of about N val images (0: all)"
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
        "example: shelfedge convert --model efficientnet_lite0@160 --distill-from out/teacher/bundles/"
        "teacher-keras-fp32 --profile x86-kiosk-cpu,android-arm64 --data ../shared/data/grocery"
    )


def run(args: argparse.Namespace) -> int:
    from converters.convert.pipeline import ConvertConfig, convert
    from converters.convert.plan import plan

    data_root = data_dir(args.data)
    profiles = [load_profile(p.strip()) for p in args.profile.split(",") if p.strip()]
    if not profiles:
        raise ConfigError("--profile needs at least one profile id")
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
