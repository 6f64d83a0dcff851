"""``convert``: a model + a hardware profile -> the fastest bundle within the accuracy budget.

Plan from the profile, export fp32, quantize to every precision the profile lists (int8 under
the accuracy budget, keeping sensitive layers in float when needed), package each candidate,
verify each one by loading it through ``sdk`` and measuring val top-1 and agreement with the
fp32 model, choose the first in the profile's order of preference that meets the budget and is
not larger than the fp32 bundle (:mod:`converters.convert.choice`), and write it with its
evidence (report JSON + Markdown, metrics in the manifest).

The stages live in their own modules: :mod:`~converters.convert.plan`, :mod:`~converters.convert.variants`
(the quantized candidates), :mod:`~converters.convert.qat_step`, :mod:`~converters.convert.verify`,
:mod:`~converters.convert.choice` and :mod:`~converters.convert.report`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from converters.convert.choice import budget_misses, choose
from converters.convert.config import DEFAULT_CONFIG, QAT_MODES, ConvertConfig
from converters.convert.plan import ConvertPlan
from converters.convert.qat_step import qat_candidate, wants_qat
from converters.convert.report import COLUMNS, REPORT_SCHEMA_VERSION, ConvertReport, Variant
from converters.convert.variants import make_candidates
from converters.convert.verify import eval_fn, make_variant, verify
from converters.export.package import bundle_dir_name
from converters.export.pipeline import export
from converters.export.source import load_source
from converters.models.source import ModelSource
from converters.quantize.calibration import CalibrationSet, build_calibration_set
from converters.training.loop import Log
from sdk.bundle import Bundle, write_bundle
from sdk.data import ImageDataset, load_split
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.qa.evaluation import Evaluation, preprocess_dataset

# The pipeline's public names, wherever they live: callers import them from here.
__all__ = [
    "COLUMNS",
    "QAT_MODES",
    "REPORT_SCHEMA_VERSION",
    "ConvertConfig",
    "ConvertReport",
    "ModelSource",
    "Variant",
    "budget_misses",
    "convert",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Context:
    """What every candidate of one conversion is built with and judged against."""

    source: ModelSource
    plan: ConvertPlan
    config: ConvertConfig
    train: ImageDataset
    val: ImageDataset
    variants_dir: Path
    fp32_bundle: Bundle
    fp32: Evaluation
    calibration: CalibrationSet | None
    log: Log


def convert(
    source: ModelSource,
    plan: ConvertPlan,
    data_root: str | Path,
    out_dir: str | Path,
    config: ConvertConfig = DEFAULT_CONFIG,
    log: Log = print,
) -> ConvertReport:
    """Run the plan for ``source`` and write every candidate bundle, the chosen one and a report.

    Raises:
        ConfigError: data or model do not fit the plan (classes, input size), before any export.
        ConversionError: a converter step failed (names the step; cause chained).
        BackendUnavailableError: the format's runtime is not installed here, so nothing can be verified.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir) / plan.profile.id
    train, val = load_split(data_root, "train"), load_split(data_root, "val")
    if config.eval_limit:
        val = val.balanced(max(1, config.eval_limit // max(1, len(set(val.labels)))), seed=config.seed)
    _check_fits(source, plan, train, log)
    variants_dir = out_dir / "variants"
    variants_dir.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []

    log(
        f"[plan] {plan.profile.id}: {plan.format.value}, precisions {', '.join(p.value for p in plan.precisions)}, "
        f"budget {plan.max_drop_pt} pt"
    )
    fp32_bundle = _export_fp32(source, plan, variants_dir, steps, log)
    fp32 = verify(fp32_bundle, val, plan, log)
    calibration = _calibrate(source, plan, config, train, steps, log)
    ctx = _Context(
        source=source,
        plan=plan,
        config=config,
        train=train,
        val=val,
        variants_dir=variants_dir,
        fp32_bundle=fp32_bundle,
        fp32=fp32,
        calibration=calibration,
        log=log,
    )
    with tempfile.TemporaryDirectory(prefix=".convert-work-", dir=out_dir) as work:
        variants = _candidates(ctx, Path(work), steps)

    chosen_variant = choose(variants, plan)
    variants = [dataclasses.replace(v, chosen=v is chosen_variant) for v in variants]
    published = bundle_dir_name(source.name, plan.format, chosen_variant.precision)
    chosen = _publish(
        chosen_variant, plan, out_dir / published.replace(f"-{plan.format.value}-", f"-{plan.profile.id}-")
    )
    data = {
        "root": str(data_root),
        "train_images": len(train),
        "val_images": len(val),
        "classes": len(train.class_names),
        "calibration": calibration.record() if calibration else None,
    }
    report = ConvertReport(
        plan=plan,
        variants=tuple(variants),
        chosen=chosen,
        data=data,
        source=source.description,
        seconds=time.perf_counter() - started,
        steps=tuple(steps),
    )
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return report


def _export_fp32(
    source: ModelSource, plan: ConvertPlan, variants_dir: Path, steps: list[dict[str, Any]], log: Log
) -> Bundle:
    """The source in the plan's format at fp32: every candidate's parent and yardstick."""
    t = time.perf_counter()
    bundle = export(
        source.model,
        out_dir=variants_dir,
        formats=[plan.format],
        name=source.name,
        labels=source.labels,
        preprocessing=source.preprocessing,
        progress=lambda m: log(f"[export] {m}"),
    )[plan.format]
    steps.append({"step": "export", "format": plan.format.value, "seconds": round(time.perf_counter() - t, 1)})
    return bundle


def _calibrate(
    source: ModelSource,
    plan: ConvertPlan,
    config: ConvertConfig,
    train: ImageDataset,
    steps: list[dict[str, Any]],
    log: Log,
) -> CalibrationSet | None:
    """The class-balanced calibration images, when a precision of the plan needs them."""
    if not plan.needs_calibration:
        return None
    t = time.perf_counter()
    calibration = build_calibration_set(
        train, source.preprocessing, per_class=config.calibration_per_class, seed=config.seed
    )
    log(
        f"[calibrate] {len(calibration)} images ({config.calibration_per_class} per class), "
        f"sha256 {calibration.sha256[:12]}"
    )
    steps.append({"step": "calibration", **calibration.record(), "seconds": round(time.perf_counter() - t, 1)})
    return calibration


def _candidates(ctx: _Context, work: Path, steps: list[dict[str, Any]]) -> list[Variant]:
    """The fp32 bundle and every quantized candidate (the QAT one too when asked or needed), each verified."""
    plan, fp32_bundle = ctx.plan, ctx.fp32_bundle
    fp32_bytes = fp32_bundle.size_bytes()
    variants = [make_variant(fp32_bundle, Precision.FP32, ctx.fp32, ctx.fp32, fp32_bytes, plan, 0.0)]
    wants_keras = plan.format is ModelFormat.TFLITE and _wants_quantization(plan)
    keras_source = load_source(ctx.source.model, work / "source") if wants_keras else None
    val_tensors = preprocess_dataset(fp32_bundle, ctx.val).astype(np.float32, copy=False)
    evaluate_file = eval_fn(plan.format, val_tensors, np.asarray(ctx.val.labels))

    def add(bundle: Bundle, precision: Precision, step: str, started: float) -> None:
        evaluation = verify(bundle, ctx.val, plan, ctx.log)
        variants.append(
            make_variant(bundle, precision, evaluation, ctx.fp32, fp32_bytes, plan, time.perf_counter() - started)
        )
        steps.append({"step": step, "seconds": round(time.perf_counter() - started, 1)})

    for candidate in make_candidates(plan, fp32_bundle, keras_source):
        t = time.perf_counter()
        ctx.log(f"[quantize] {candidate.label}…")
        bundle = candidate.build(
            work_dir=work / candidate.label,
            out_dir=ctx.variants_dir,
            calibration=ctx.calibration,
            eval_fn=evaluate_file,
            fp32_accuracy=ctx.fp32.top1,
            max_drop_pt=plan.max_drop_pt,
            max_ignored=ctx.config.max_ignored,
            log=lambda m: ctx.log(f"  {m}"),
        )
        add(bundle, candidate.precision, candidate.label, t)
    if wants_qat(ctx.config, plan, variants):
        t = time.perf_counter()
        qat_bundle = qat_candidate(
            ctx.source,
            plan,
            fp32_bundle,
            ctx.train,
            work / "qat",
            ctx.variants_dir,
            ctx.calibration,
            evaluate_file,
            ctx.fp32.top1,
            ctx.config,
            ctx.log,
        )
        if qat_bundle is not None:
            add(qat_bundle, Precision.INT8, f"{plan.format.value}-int8-qat", t)
    return variants


def _check_fits(source: ModelSource, plan: ConvertPlan, train: ImageDataset, log: Log) -> None:
    if len(train.class_names) != len(source.labels):
        raise ConfigError(
            f"the model has {len(source.labels)} classes but {train.root} has {len(train.class_names)}; "
            "convert with the dataset the model was trained on"
        )
    if tuple(source.preprocessing.size) != tuple(plan.profile.input_size):
        log(
            f"[plan] note: profile {plan.profile.id} lists input size {list(plan.profile.input_size)}, "
            f"the model takes {list(source.preprocessing.size)}; converting the model as it is"
        )


def _wants_quantization(plan: ConvertPlan) -> bool:
    return any(p is not Precision.FP32 for p in plan.precisions)


def _publish(variant: Variant, plan: ConvertPlan, target: Path) -> Bundle:
    """Copy the chosen bundle to ``target`` with its verified metrics in the manifest."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(variant.bundle.path, target)
    ev = variant.evaluation
    metrics = {
        plan.profile.id: {
            "val_top1": round(ev.top1, 6),
            "val_top5": round(ev.top5, 6),
            "drop_pt_vs_fp32": round(variant.drop_pt, 4),
            "top1_agreement_vs_fp32": round(variant.agreement, 6),
            "budget_pt": plan.max_drop_pt,
            "verified_on": f"{ev.ran.runtime.value} {ev.ran.runtime_version} {ev.ran.actual_device}",
            "dataset": ev.dataset,
            "images": len(ev.labels),
        }
    }
    manifest = variant.bundle.manifest.with_changes(metrics={**variant.bundle.manifest.metrics, **metrics})
    return write_bundle(target, manifest)
