"""``convert``: a model + a hardware profile -> the fastest bundle within the accuracy budget.

Plan from the profile, export fp32, quantize to every precision the profile lists (int8 under
the accuracy budget, keeping sensitive layers in float when needed), package each candidate,
verify each one by loading it through ``sdk`` and measuring val top-1 and agreement with the
fp32 model, choose the first in the profile's order of preference that meets the budget, and
write it with its evidence (report JSON + Markdown, metrics in the manifest).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.quantize import common as qc
from converters.quantize.calibration import build_calibration_set
from converters.convert.plan import ConvertPlan
from converters.convert.variants import make_candidates
from converters.export.pipeline import export
from converters.export.package import bundle_dir_name
from converters.export.source import load_source
from sdk.bundle import Bundle, sha256_file, write_bundle
from sdk.data import ImageDataset, load_split
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat, Precision, Task
from sdk.errors import ConfigError
from sdk.qa.evaluation import Evaluation, evaluate, preprocess_dataset
from sdk.manifest import Preprocessing
from sdk.qa.tables import markdown_table
from sdk.versions import host_info, tool_versions

REPORT_SCHEMA_VERSION = 1
QAT_MODES = ("auto", "always", "off")
COLUMNS = ["variant", "format", "precision", "size MB", "val top-1", "drop pt", "agreement",
           "kept in float", "meets budget", "chosen"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """Knobs of a conversion run that are not in the profile."""

    calibration_per_class: int = 3
    max_ignored: int = 8
    eval_limit: int = 0  # 0: the whole val split
    seed: int = 0
    # Quantization-aware fine-tuning (converters.training.qat) of the Keras source, then PTQ again:
    # "auto" as the last resort when an int8 candidate misses the budget, "always" as an extra
    # int8 candidate, "off" never.
    qat: str = "auto"
    qat_epochs: int = 2
    qat_per_class: int = 20

    def __post_init__(self) -> None:
        if self.qat not in QAT_MODES:
            raise ConfigError(f"ConvertConfig.qat must be one of {QAT_MODES}, got {self.qat!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """What to convert: a Keras model / file / SavedModel, with how it is used."""

    model: Any  # keras.Model | str | Path
    name: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    description: str

    @classmethod
    def from_bundle(cls, path: str | Path) -> "ModelSource":
        """A Keras reference bundle (the teacher's, a distilled student's) as the source.

        Raises:
            ConfigError: the bundle is not a Keras/SavedModel image classification bundle.
            BundleError, ManifestError: see ``Bundle.open``.
        """
        bundle = Bundle.open(path)
        m = bundle.manifest
        if m.format not in (ModelFormat.KERAS, ModelFormat.SAVEDMODEL) or m.preprocessing is None:
            raise ConfigError(
                f"{bundle.path}: convert starts from a Keras reference bundle (format keras with "
                f"preprocessing), this one is {m.format.value}; pass the teacher/student bundle"
            )
        if m.task is not Task.IMAGE_CLASSIFICATION:
            raise ConfigError(f"{bundle.path}: convert handles image_classification bundles, not {m.task.value}")
        return cls(model=bundle.model_path, name=m.name, labels=bundle.labels,
                   preprocessing=m.preprocessing, description=f"bundle {bundle.path}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """One verified candidate: a row of the report."""

    name: str
    bundle: Bundle
    precision: Precision
    evaluation: Evaluation
    drop_pt: float
    agreement: float
    misses: tuple[str, ...]
    kept_in_float: int
    seconds: float
    chosen: bool = False

    @property
    def meets_budget(self) -> bool:
        return not self.misses

    def row(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "format": self.bundle.manifest.format.value,
            "precision": self.precision.value,
            "size MB": round(self.bundle.size_bytes() / 1e6, 3),
            "val top-1": round(self.evaluation.top1, 4),
            "drop pt": round(self.drop_pt, 2),
            "agreement": round(self.agreement, 4),
            "kept in float": self.kept_in_float,
            "meets budget": self.meets_budget,
            "chosen": self.chosen,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertReport:
    plan: ConvertPlan
    variants: tuple[Variant, ...]
    chosen: Bundle
    data: dict[str, Any]
    source: str
    seconds: float
    steps: tuple[dict[str, Any], ...]

    def rows(self) -> list[dict[str, Any]]:
        return [v.row() for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "plan": self.plan.to_dict(),
            "source": self.source,
            "data": self.data,
            "chosen": str(self.chosen.path),
            "variants": [
                {**v.row(), "bundle": str(v.bundle.path), "val_top5": round(v.evaluation.top5, 4),
                 "ran": v.evaluation.ran.to_dict(), "seconds": round(v.seconds, 1), "misses": list(v.misses),
                 "kept_in_float_layers": [k.to_dict() for k in v.bundle.manifest.kept_in_float]}
                for v in self.variants
            ],
            "steps": list(self.steps),
            "host": host_info(),
            "tool_versions": tool_versions(),
            "seconds": round(self.seconds, 1),
        }

    def to_markdown(self) -> str:
        p = self.plan
        ran = self.variants[0].evaluation.ran
        where = f"{ran.runtime.value} on {ran.actual_device}" + (" (fell back)" if ran.fell_back else "")
        return (
            f"# shelfedge convert: {p.profile.id}\n\n"
            f"Source: {self.source}. Target: {p.profile.description}.\n"
            f"Format {p.format.value}; precisions tried in order of preference: "
            f"{', '.join(x.value for x in p.precisions)}; budget: at most {p.max_drop_pt} pt val top-1 "
            f"below the fp32 model, and the task tier of the profile's parity tolerances for the precision "
            f"(top-1 agreement, accuracy as a fraction of fp32). Verified through sdk.load ({where}) on "
            f"{self.data['val_images']} val images; agreement = top-1 equal to the fp32 model's.\n\n"
            f"{markdown_table(self.rows(), COLUMNS)}\n\n"
            + "".join(f"- {v.name} misses: {'; '.join(v.misses)}\n" for v in self.variants if v.misses)
            + f"\nChosen: `{self.chosen.path}`. Calibration: {self.data.get('calibration')}.\n"
        )


def convert(
    source: ModelSource,
    plan: ConvertPlan,
    data_root: str | Path,
    out_dir: str | Path,
    config: ConvertConfig = ConvertConfig(),
    log: Callable[[str], None] = print,
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

    log(f"[plan] {plan.profile.id}: {plan.format.value}, precisions {', '.join(p.value for p in plan.precisions)}, "
        f"budget {plan.max_drop_pt} pt")
    t = time.perf_counter()
    fp32_bundle = export(source.model, out_dir=variants_dir, formats=[plan.format], name=source.name,
                         labels=source.labels, preprocessing=source.preprocessing,
                         progress=lambda m: log(f"[export] {m}"))[plan.format]
    steps.append({"step": "export", "format": plan.format.value, "seconds": round(time.perf_counter() - t, 1)})
    fp32 = _verify(fp32_bundle, val, plan, log)

    calibration = None
    if plan.needs_calibration:
        t = time.perf_counter()
        calibration = build_calibration_set(train, source.preprocessing, per_class=config.calibration_per_class,
                                            seed=config.seed)
        log(f"[calibrate] {len(calibration)} images ({config.calibration_per_class} per class), "
            f"sha256 {calibration.sha256[:12]}")
        steps.append({"step": "calibration", **calibration.record(), "seconds": round(time.perf_counter() - t, 1)})

    variants = [_variant(fp32_bundle, Precision.FP32, fp32, fp32, plan, 0.0)]
    with tempfile.TemporaryDirectory(prefix=".convert-work-", dir=out_dir) as work:
        keras_source = (load_source(source.model, Path(work) / "source")
                        if plan.format is ModelFormat.TFLITE and _wants_quantization(plan) else None)
        val_tensors = preprocess_dataset(fp32_bundle, val).astype(np.float32, copy=False)
        eval_fn = _eval_fn(plan.format, val_tensors, np.asarray(val.labels))
        for candidate in make_candidates(plan, fp32_bundle, keras_source):
            t = time.perf_counter()
            log(f"[quantize] {candidate.label}…")
            bundle = candidate.build(
                work_dir=Path(work) / candidate.label, out_dir=variants_dir, calibration=calibration,
                eval_fn=eval_fn, fp32_accuracy=fp32.top1, max_drop_pt=plan.max_drop_pt,
                max_ignored=config.max_ignored, log=lambda m: log(f"  {m}"),
            )
            evaluation = _verify(bundle, val, plan, log)
            variants.append(_variant(bundle, candidate.precision, evaluation, fp32, plan, time.perf_counter() - t))
            steps.append({"step": candidate.label, "seconds": round(time.perf_counter() - t, 1)})
        if _wants_qat(config, plan, variants):
            t = time.perf_counter()
            qat_bundle = _qat_candidate(source, plan, fp32_bundle, train, Path(work) / "qat", variants_dir,
                                        calibration, eval_fn, fp32.top1, config, log)
            if qat_bundle is not None:
                evaluation = _verify(qat_bundle, val, plan, log)
                variants.append(_variant(qat_bundle, Precision.INT8, evaluation, fp32, plan, time.perf_counter() - t))
                steps.append({"step": f"{plan.format.value}-int8-qat", "seconds": round(time.perf_counter() - t, 1)})

    chosen_variant = _choose(variants, plan)
    variants = [dataclasses.replace(v, chosen=v is chosen_variant) for v in variants]
    chosen = _publish(chosen_variant, plan, out_dir / bundle_dir_name(source.name, plan.format, chosen_variant.precision)
                      .replace(f"-{plan.format.value}-", f"-{plan.profile.id}-"))
    data = {"root": str(data_root), "train_images": len(train), "val_images": len(val),
            "classes": len(train.class_names), "calibration": calibration.record() if calibration else None}
    report = ConvertReport(plan=plan, variants=tuple(variants), chosen=chosen, data=data,
                           source=source.description, seconds=time.perf_counter() - started, steps=tuple(steps))
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
    (out_dir / "report.md").write_text(report.to_markdown(), encoding="utf-8")
    return report


def _check_fits(source: ModelSource, plan: ConvertPlan, train: ImageDataset, log: Callable[[str], None]) -> None:
    if len(train.class_names) != len(source.labels):
        raise ConfigError(
            f"the model has {len(source.labels)} classes but {train.root} has {len(train.class_names)}; "
            "convert with the dataset the model was trained on"
        )
    if tuple(source.preprocessing.size) != tuple(plan.profile.input_size):
        log(f"[plan] note: profile {plan.profile.id} lists input size {list(plan.profile.input_size)}, "
            f"the model takes {list(source.preprocessing.size)}; converting the model as it is")


def _wants_quantization(plan: ConvertPlan) -> bool:
    return any(p is not Precision.FP32 for p in plan.precisions)


def _verify(bundle: Bundle, val: ImageDataset, plan: ConvertPlan, log: Callable[[str], None]) -> Evaluation:
    # record: a profile for an absent accelerator (NPU, Edge TPU) still verifies accuracy on
    # the host CPU, and the report says where it ran.
    evaluation = evaluate(bundle, val, profile=plan.profile, fallback="record")
    log(f"[verify] {bundle.path.name}: val top-1 {evaluation.top1:.4f} on {evaluation.ran.runtime.value} "
        f"{evaluation.ran.actual_device}{' (fell back)' if evaluation.ran.fell_back else ''}")
    return evaluation


def _variant(bundle: Bundle, precision: Precision, evaluation: Evaluation, fp32: Evaluation,
             plan: ConvertPlan, seconds: float) -> Variant:
    drop = (fp32.top1 - evaluation.top1) * 100.0
    agreement = evaluation.agreement(fp32)
    return Variant(
        name=bundle.path.name, bundle=bundle, precision=precision, evaluation=evaluation, drop_pt=drop,
        agreement=agreement, misses=budget_misses(plan, precision, drop, evaluation.top1, fp32.top1, agreement),
        kept_in_float=len(bundle.manifest.kept_in_float), seconds=seconds,
    )


def budget_misses(plan: ConvertPlan, precision: Precision, drop_pt: float, top1: float, fp32_top1: float,
                  agreement: float) -> tuple[str, ...]:
    """What a candidate misses: the profile's accuracy budget, and the task tier of its parity tolerances.

    The task tier (top-1 agreement, accuracy as a fraction of fp32) is what ``shelfedge parity``
    will check against the model the bundle was made from, so a bundle chosen here passes it.
    """
    tol = plan.profile.tolerance(precision)
    ratio = top1 / fp32_top1 if fp32_top1 > 0 else 1.0
    misses = []
    if drop_pt > plan.max_drop_pt + 1e-9:
        misses.append(f"drop {drop_pt:.2f} pt > budget {plan.max_drop_pt:g} pt")
    if tol.min_accuracy_ratio is not None and ratio < tol.min_accuracy_ratio - 1e-9:
        misses.append(f"accuracy {ratio:.4f} of fp32 < parity min_accuracy_ratio {tol.min_accuracy_ratio:g}")
    if tol.min_top1_agreement is not None and agreement < tol.min_top1_agreement - 1e-9:
        misses.append(f"top-1 agreement {agreement:.4f} < parity min_top1_agreement {tol.min_top1_agreement:g}")
    return tuple(misses)


def _choose(variants: Sequence[Variant], plan: ConvertPlan) -> Variant:
    """The first variant, in the profile's order of preference, within the budget (fp32 always is).

    Within one precision (int8 by PTQ, int8 after QAT) the first that meets the budget wins.
    """
    for precision in plan.precisions:
        for variant in variants:
            if variant.precision is precision and variant.meets_budget:
                return variant
    return next(v for v in variants if v.precision is Precision.FP32)


def _wants_qat(config: ConvertConfig, plan: ConvertPlan, variants: Sequence[Variant]) -> bool:
    if config.qat == "off" or Precision.INT8 not in plan.precisions:
        return False
    return config.qat == "always" or any(v.precision is Precision.INT8 and not v.meets_budget for v in variants)


def _qat_candidate(source: ModelSource, plan: ConvertPlan, fp32_bundle: Bundle, train: ImageDataset, work: Path,
                   variants_dir: Path, calibration: Any, eval_fn: qc.EvalFn, fp32_accuracy: float,
                   config: ConvertConfig, log: Callable[[str], None]) -> Bundle | None:
    """Fine-tune the Keras source with fake-quantized weights, export it, quantize it under the same budget."""
    from converters.training import qat
    from sdk.enums import Device
    from sdk.manifest import Step

    model_path = Path(source.model) if isinstance(source.model, (str, Path)) else None
    if model_path is None or model_path.suffix != ".keras":
        log("[qat] skipped: quantization-aware fine-tuning needs a .keras source model")
        return None
    # OpenVINO and ONNX Runtime on CPU keep weights in 7 bits (overflow fix, reduce_range): train for those.
    bits = 7 if plan.format in (ModelFormat.OPENVINO, ModelFormat.ONNX) and plan.profile.device is Device.CPU else 8
    qat_config = qat.QATConfig(epochs=config.qat_epochs, per_class=config.qat_per_class, weight_bits=bits,
                               seed=config.seed)
    subset = train.balanced(qat_config.per_class, seed=config.seed)
    why = "asked for (qat=always)" if config.qat == "always" else f"int8 missed the {plan.max_drop_pt} pt budget after PTQ"
    log(f"[qat] {why}: quantization-aware fine-tuning on {len(subset)} training photos, {qat_config.epochs} epoch(s)")
    tensors = preprocess_dataset(fp32_bundle, subset).astype(np.float32, copy=False)
    result = qat.fine_tune(model_path, tensors, np.asarray(subset.labels), work / "model.keras", qat_config,
                           log=lambda m: log(f"  {m}"))
    step = Step(name=qat.STEP_NAME,
                config={**dataclasses.asdict(qat_config), **result.record(), "data": f"{subset.root}:{subset.split}",
                        "images": len(subset), "source_sha256": sha256_file(model_path)},
                tool_versions=tool_versions(), seconds=round(result.seconds, 3))
    name = f"{source.name}-qat"
    exported = export(result.model_path, out_dir=work / "fp32", formats=[plan.format], name=name,
                      labels=source.labels, preprocessing=source.preprocessing,
                      progress=lambda m: log(f"  [export] {m}"))[plan.format]
    p = exported.manifest.provenance
    exported = write_bundle(exported.path, exported.manifest.with_changes(
        provenance=dataclasses.replace(p, parent=fp32_bundle.path.name, steps=(step, *p.steps))))
    keras_source = None
    if plan.format is ModelFormat.TFLITE:
        loaded = load_source(result.model_path, work / "source")
        keras_source = dataclasses.replace(loaded, steps=(step, *loaded.steps))
    candidate = next(c for c in make_candidates(plan, exported, keras_source) if c.precision is Precision.INT8)
    return candidate.build(work_dir=work / "int8", out_dir=variants_dir, calibration=calibration, eval_fn=eval_fn,
                           fp32_accuracy=fp32_accuracy, max_drop_pt=plan.max_drop_pt,
                           max_ignored=config.max_ignored, log=lambda m: log(f"  {m}"))


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
            "images": int(len(ev.labels)),
        }
    }
    manifest = variant.bundle.manifest.with_changes(metrics={**variant.bundle.manifest.metrics, **metrics})
    return write_bundle(target, manifest)


def _eval_fn(fmt: ModelFormat, tensors: np.ndarray, labels: np.ndarray) -> qc.EvalFn:
    """Val top-1 of a candidate model file, run through the sdk adapter for its format."""
    from sdk.runtime import SessionOptions, describe_model, open_session

    runtime = RUNTIMES_FOR_FORMAT[fmt][0]

    def evaluate_file(path: Path) -> float:
        inputs, outputs = describe_model(runtime, path)
        spec, out = inputs[0], outputs[0]
        correct = 0
        with open_session(runtime, path, inputs, outputs, SessionOptions()) as session:
            for start in range(0, len(tensors), 32):
                batch = tensors[start : start + 32]
                if spec.quantization is not None and spec.dtype in ("int8", "uint8", "int16"):
                    batch = spec.quantization.quantize(batch, spec.dtype)
                raw = session.run({spec.name: batch.astype(spec.dtype, copy=False)})[out.name]
                if out.quantization is not None:
                    raw = out.quantization.dequantize(raw)
                correct += int((np.asarray(raw).argmax(-1) == labels[start : start + 32]).sum())
        return correct / len(tensors)

    return evaluate_file

