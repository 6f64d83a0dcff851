"""``convert`` for a recommendation model: a trained student + a hardware profile -> the best bundle in budget.

The image ``convert`` (:mod:`converters.convert.pipeline`) for the recommender's encoder, reusing
its pieces: the plan from the profile (:func:`converters.convert.plan.plan`; the budget is the
profile's ``budgets.max_ndcg_drop_pt``, validation NDCG@10 points vs the fp32 bundle of the same
format), the candidate builders (:mod:`converters.convert.variants`, each format's
``quantize_with_budget`` judged by validation NDCG@10) and the choice
(:func:`converters.convert.choice.choose`). What differs:

- the fp32 bundle is :func:`~converters.export.rec_bundle.package_recommender`'s (encoder + item
  table, int8 per row by default); each quantized encoder gets its item files with ``add_items_from``;
- calibration samples are training histories (int32 item index + 1, left-padded: the encoder's
  input contract); only weights and activations quantize, the ids stay int32;
- every candidate is verified end to end through ``sdk.Recommender`` and the shared ranking
  evaluator (:mod:`converters.convert.rec_verify`); the report is :mod:`converters.convert.rec_report`.
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

from converters.convert.choice import choose
from converters.convert.plan import ConvertPlan, plan
from converters.convert.rec_report import REC_COLUMNS, RecConvertReport, RecVariant
from converters.convert.rec_source import RecSource
from converters.convert.rec_verify import RecEvaluation, make_rec_variant, ndcg_eval_fn, verify_recommender
from converters.convert.variants import make_candidates
from converters.export.rec_bundle import add_items_from, package_recommender
from converters.export.source import load_source
from converters.models.sasrec import pad_histories
from converters.quantize.calibration import CalibrationSet, from_arrays
from converters.training.loop import Log
from converters.training.rec_distill_data import student_examples
from converters.training.rec_teacher_bundle import train_popularity
from sdk.bundle import Bundle, write_bundle
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile
from sdk.rec_datasets import RecDataset
from sdk.rec_manifest import TABLE_PRECISIONS

__all__ = [
    "REC_COLUMNS",
    "RecConvertConfig",
    "RecConvertReport",
    "RecSource",
    "RecVariant",
    "convert_recommender",
    "history_calibration",
    "rec_plan",
    "search_budget_pt",
]


# When a profile states no recommendation budget: half a point of NDCG@10, what the shipped profiles ask.
DEFAULT_MAX_NDCG_DROP_PT = 0.5


def rec_plan(profile: HardwareProfile, max_drop_pt: float | None = None) -> ConvertPlan:
    """The image plan for ``profile`` with the recommendation budget: ``budgets.max_ndcg_drop_pt`` points.

    Raises:
        ConfigError: as :func:`converters.convert.plan.plan` (no edge format, a precision the format
            cannot take, a negative budget).
    """
    budget = max_drop_pt if max_drop_pt is not None else profile.budgets.max_ndcg_drop_pt
    return plan(profile, DEFAULT_MAX_NDCG_DROP_PT if budget is None else float(budget))


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecConvertConfig:
    """Knobs of a recommendation conversion that are not in the profile. Immutable; safe to share.

    Attributes:
        table_precision: the item table in every bundle (``int8`` per row, ``fp16``, ``fp32``).
        calibration_size: training histories drawn (seeded) to calibrate int8 activations.
        max_ignored: most layers the budget search keeps in float.
        max_cases: verify on the first N validation and test cases (0: all; for quick runs).
        resamples, seed: the test intervals' bootstrap, and the calibration draw.
        ivf_lists: an IVF index of this many lists in every bundle (``package_recommender``), or None.

    Raises:
        ConfigError: on construction, a value out of range.
    """

    table_precision: str = "int8"
    calibration_size: int = 300
    max_ignored: int = 8
    max_cases: int = 0
    resamples: int = 1000
    seed: int = 0
    ivf_lists: int | None = None

    def __post_init__(self) -> None:
        choices = tuple(p.value for p in TABLE_PRECISIONS)
        if self.table_precision not in choices:
            raise ConfigError(
                f"RecConvertConfig.table_precision must be one of {choices}, got {self.table_precision!r}"
            )
        for name, low in (("calibration_size", 1), ("max_ignored", 0), ("max_cases", 0), ("resamples", 100)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"RecConvertConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.ivf_lists is not None and (not isinstance(self.ivf_lists, int) or self.ivf_lists < 1):
            raise ConfigError(f"RecConvertConfig.ivf_lists must be a positive integer or None, got {self.ivf_lists!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Context:
    """What every candidate of one conversion is built with and judged against."""

    source: RecSource
    plan: ConvertPlan
    config: RecConvertConfig
    dataset: RecDataset
    variants_dir: Path
    fp32_bundle: Bundle
    fp32: RecEvaluation
    calibration: CalibrationSet | None
    log: Log

    def verify(self, bundle: Bundle) -> RecEvaluation:
        return _verify(bundle, self.dataset, self.plan, self.config, self.log)


def convert_recommender(
    source: RecSource,
    plan: ConvertPlan,
    dataset: RecDataset,
    out_dir: str | Path,
    config: RecConvertConfig = RecConvertConfig(),
    log: Log = print,
) -> RecConvertReport:
    """Run the plan for ``source`` on ``dataset``; write every candidate, the chosen bundle and a report.

    Writes ``<out_dir>/<profile>/variants/`` (every candidate), the chosen bundle as
    ``<out_dir>/<profile>/<name>-<profile>-<precision>`` with its metrics in the manifest, and
    ``report.json`` + ``report.md`` beside it.

    Raises:
        ConfigError: the dataset does not fit the model (item count, kind, catalogue), before any export;
            or calibration data is missing (no training history of two or more items).
        ConversionError: a converter step failed (names the step; cause chained).
        BackendUnavailableError: the format's runtime is not installed here, so nothing can be verified.
    """
    started = time.perf_counter()
    source.check_fits(dataset)
    out_dir = Path(out_dir) / plan.profile.id
    variants_dir = out_dir / "variants"
    variants_dir.mkdir(parents=True, exist_ok=True)
    steps: list[dict[str, Any]] = []
    log(
        f"[plan] {plan.profile.id}: {plan.format.value}, precisions {', '.join(p.value for p in plan.precisions)}, "
        f"budget {plan.max_drop_pt:g} pt validation NDCG@10"
    )
    fp32_bundle = _export_fp32(source, plan, dataset, config, variants_dir, steps, log)
    ctx = _Context(
        source=source,
        plan=plan,
        config=config,
        dataset=dataset,
        variants_dir=variants_dir,
        fp32_bundle=fp32_bundle,
        fp32=_verify(fp32_bundle, dataset, plan, config, log),
        calibration=_calibrate(source, plan, dataset, config, steps, log),
        log=log,
    )
    with tempfile.TemporaryDirectory(prefix=".convert-work-", dir=out_dir) as work:
        variants = _candidates(ctx, Path(work), steps)
    chosen_variant = choose(variants, plan)  # type: ignore[arg-type]  # RecVariant has what choose reads
    variants = [dataclasses.replace(v, chosen=v is chosen_variant) for v in variants]
    target = out_dir / f"{source.name}-{plan.profile.id}-{chosen_variant.precision.value}"
    chosen = _publish(chosen_variant, plan, dataset, target)
    report = RecConvertReport(
        plan=plan,
        variants=tuple(variants),
        chosen=chosen,
        data=_data_record(dataset, ctx, config),
        source=source.description,
        model=_model_record(source),
        seconds=time.perf_counter() - started,
        steps=tuple(steps),
    )
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return report


def _export_fp32(
    source: RecSource,
    plan: ConvertPlan,
    dataset: RecDataset,
    config: RecConvertConfig,
    variants_dir: Path,
    steps: list[dict[str, Any]],
    log: Log,
) -> Bundle:
    """The encoder in the plan's format at fp32 with its item files: every candidate's parent and yardstick."""
    t = time.perf_counter()
    bundle = package_recommender(
        source.encoder,
        source.item_table,
        source.item_bias,
        source.catalogue or dataset.interactions.catalogue,
        source.popularity if source.popularity is not None else train_popularity(dataset),
        out_dir=variants_dir,
        name=source.name,
        kind=source.kind,
        formats=[plan.format],
        table_precision=config.table_precision,
        max_len=source.max_len,
        ivf_lists=config.ivf_lists,
        progress=lambda m: log(f"[export] {m}"),
    )[plan.format]
    steps.append({"step": "export", "format": plan.format.value, "seconds": round(time.perf_counter() - t, 1)})
    return bundle


def _verify(
    bundle: Bundle, dataset: RecDataset, plan: ConvertPlan, config: RecConvertConfig, log: Log
) -> RecEvaluation:
    split, limit = dataset.split, config.max_cases
    val, test = (split.valid.head(limit), split.test.head(limit)) if limit else (split.valid, split.test)
    return verify_recommender(bundle, val, test, plan, log, resamples=config.resamples, seed=config.seed)


def _calibrate(
    source: RecSource,
    plan: ConvertPlan,
    dataset: RecDataset,
    config: RecConvertConfig,
    steps: list[dict[str, Any]],
    log: Log,
) -> CalibrationSet | None:
    """Training histories, drawn seeded from every training example, when a precision of the plan needs them."""
    if not plan.needs_calibration:
        return None
    t = time.perf_counter()
    calibration = history_calibration(dataset, source.max_len, config.calibration_size, config.seed)
    log(
        f"[calibrate] {len(calibration)} training histories (int32, window {source.max_len}), "
        f"sha256 {calibration.sha256[:12]}"
    )
    steps.append({"step": "calibration", **calibration.record(), "seconds": round(time.perf_counter() - t, 1)})
    return calibration


def history_calibration(dataset: RecDataset, max_len: int, size: int, seed: int) -> CalibrationSet:
    """``size`` training examples' histories (as ``rec-distill`` trains on them) in the encoder's input form.

    Raises:
        ConfigError: the training rows hold no history of two or more items.
    """
    histories, _ = student_examples(dataset.split, max_len)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(histories), size=min(size, len(histories)), replace=False))
    tensors = pad_histories([histories[i] for i in chosen], max_len)
    return from_arrays(tensors, source=f"{dataset.interactions.source}: training histories (seed {seed})")


def _candidates(ctx: _Context, work: Path, steps: list[dict[str, Any]]) -> list[RecVariant]:
    """The fp32 bundle and one candidate per other precision of the plan, each with item files, verified."""
    plan, fp32_bundle = ctx.plan, ctx.fp32_bundle
    fp32_bytes = fp32_bundle.size_bytes()
    variants = [make_rec_variant(fp32_bundle, Precision.FP32, ctx.fp32, ctx.fp32, fp32_bytes, plan, 0.0)]
    wants_keras = plan.format is ModelFormat.TFLITE and any(p is not Precision.FP32 for p in plan.precisions)
    keras_source = load_source(ctx.source.encoder, work / "source") if wants_keras else None
    split, limit = ctx.dataset.split, ctx.config.max_cases
    evaluate_file = ndcg_eval_fn(fp32_bundle, split.valid.head(limit) if limit else split.valid)
    for candidate in make_candidates(plan, fp32_bundle, keras_source):
        t = time.perf_counter()
        search_pt = search_budget_pt(plan, candidate.precision, ctx.fp32.val_ndcg)
        tighter = (
            f" (searching within {search_pt:.3f} pt: the parity min_accuracy_ratio)"
            if search_pt < plan.max_drop_pt
            else ""
        )
        ctx.log(f"[quantize] {candidate.label}…{tighter}")
        bundle = candidate.build(
            work_dir=work / candidate.label,
            out_dir=ctx.variants_dir,
            calibration=ctx.calibration,
            eval_fn=evaluate_file,
            fp32_accuracy=ctx.fp32.val_ndcg,
            max_drop_pt=search_pt,
            max_ignored=ctx.config.max_ignored,
            log=lambda m: ctx.log(f"  {m}"),
        )
        bundle = add_items_from(bundle, fp32_bundle)
        evaluation = ctx.verify(bundle)
        seconds = time.perf_counter() - t
        variants.append(make_rec_variant(bundle, candidate.precision, evaluation, ctx.fp32, fp32_bytes, plan, seconds))
        steps.append({"step": candidate.label, "seconds": round(seconds, 1)})
    return variants


def search_budget_pt(plan: ConvertPlan, precision: Precision, fp32_ndcg: float) -> float:
    """The drop the quantizers' budget search aims at: the plan's points, or the tighter parity ratio.

    A candidate is chosen only when it meets both the point budget and ``min_accuracy_ratio`` of
    fp32's NDCG@10 (:func:`~converters.convert.rec_verify.rec_budget_misses`); on a small NDCG
    (MovieLens: 0.066) a ratio of 0.99 allows 0.07 pt, far less than 0.5, so the search must know it.
    """
    ratio = plan.profile.tolerance(precision).min_accuracy_ratio
    if ratio is None:
        return plan.max_drop_pt
    return round(min(plan.max_drop_pt, max(0.0, 100.0 * (1.0 - ratio) * fp32_ndcg)), 6)


def _model_record(source: RecSource) -> dict[str, Any]:
    return {
        "n_items": source.n_items,
        "max_len": source.max_len,
        "kind": source.kind,
        "config": dict(source.config),
        "macs_per_request": source.macs(),
    }


def _data_record(dataset: RecDataset, ctx: _Context, config: RecConvertConfig) -> dict[str, Any]:
    return {
        "dataset": dataset.name,
        "note": dataset.note,
        "split": dataset.split.describe(),
        "synthetic": dataset.synthetic,
        "val_cases": len(ctx.fp32.val),
        "test_cases": len(ctx.fp32.test),
        "groups": "baskets" if dataset.interactions.kind == "baskets" else "users",
        "table_precision": config.table_precision,
        "ivf_lists": config.ivf_lists,
        "calibration": ctx.calibration.record() if ctx.calibration else None,
    }


def _publish(variant: RecVariant, plan: ConvertPlan, dataset: RecDataset, target: Path) -> Bundle:
    """Copy the chosen bundle to ``target`` with its verified metrics in the manifest."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(variant.bundle.path, target)
    ev = variant.evaluation
    ndcg = ev.test_report.metric("ndcg@10")
    metrics = {
        plan.profile.id: {
            "val_ndcg@10": round(ev.val_ndcg, 6),
            "test_ndcg@10": round(ndcg.value, 6),
            "test_ndcg@10_ci95": [round(ndcg.low, 6), round(ndcg.high, 6)],
            "test_hr@10": round(ev.test_report.metric("hr@10").value, 6),
            "drop_pt_vs_fp32": round(variant.drop_pt, 4),
            "overlap@10_vs_fp32": round(variant.overlap, 6),
            "budget_pt": plan.max_drop_pt,
            "verified_on": f"{ev.ran.runtime.value} {ev.ran.runtime_version} {ev.ran.actual_device}",
            "dataset": f"{dataset.name}: {dataset.note}",
            "cases": {"val": len(ev.val), "test": len(ev.test)},
        }
    }
    manifest = variant.bundle.manifest.with_changes(metrics={**variant.bundle.manifest.metrics, **metrics})
    return write_bundle(target, manifest)
