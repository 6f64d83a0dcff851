"""The quantization-aware candidate of ``convert``: when to make it, and how (fine-tune, export, quantize)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from converters.convert.config import ConvertConfig
from converters.convert.plan import ConvertPlan
from converters.convert.report import Variant
from converters.convert.variants import make_candidates
from converters.export.pipeline import export
from converters.export.source import load_source
from converters.models.source import ModelSource
from converters.quantize import common as qc
from converters.quantize.calibration import CalibrationSet
from converters.quantize.cpu import CpuInt8, host_cpu
from converters.training import qat
from converters.training.loop import Log
from sdk.bundle import Bundle, sha256_file, write_bundle
from sdk.data import ImageDataset
from sdk.enums import Device, ModelFormat, Precision
from sdk.manifest import Step
from sdk.qa.evaluation import preprocess_dataset
from sdk.versions import tool_versions


def qat_weight_bits(plan: ConvertPlan, cpu: CpuInt8) -> int:
    """The weight bits QAT trains for: those the PTQ that follows will store.

    OpenVINO and ONNX Runtime on an x86 CPU without VNNI keep weights in 7 bits (the ``auto``
    overflow fix and ``reduce_range`` resolve the same way on ``cpu``); everything else 8.
    """
    seven = plan.format in (ModelFormat.OPENVINO, ModelFormat.ONNX) and plan.profile.device is Device.CPU
    return 7 if seven and cpu.needs_seven_bit_weights else 8


def wants_qat(config: ConvertConfig, plan: ConvertPlan, variants: Sequence[Variant]) -> bool:
    """'always' with int8 in the plan, or 'auto' when an int8 candidate missed the budget after PTQ."""
    if config.qat == "off" or Precision.INT8 not in plan.precisions:
        return False
    return config.qat == "always" or any(v.precision is Precision.INT8 and not v.meets_budget for v in variants)


def qat_candidate(
    source: ModelSource,
    plan: ConvertPlan,
    fp32_bundle: Bundle,
    train: ImageDataset,
    work: Path,
    variants_dir: Path,
    calibration: CalibrationSet | None,
    eval_fn: qc.EvalFn,
    fp32_accuracy: float,
    config: ConvertConfig,
    log: Log,
) -> Bundle | None:
    """Fine-tune the Keras source with fake-quantized weights, export it, quantize it under the same budget.

    Returns None (and says why) when the source is not a ``.keras`` file.

    Raises:
        ConfigError: calibration is missing or does not fit the model.
        ConversionError: fine-tuning, export or quantization failed (names the step; cause chained).
    """
    model_path = Path(source.model) if isinstance(source.model, (str, Path)) else None
    if model_path is None or model_path.suffix != ".keras":
        log("[qat] skipped: quantization-aware fine-tuning needs a .keras source model")
        return None
    bits = qat_weight_bits(plan, host_cpu())
    qat_config = qat.QATConfig(
        epochs=config.qat_epochs, per_class=config.qat_per_class, weight_bits=bits, seed=config.seed
    )
    subset = train.balanced(qat_config.per_class, seed=config.seed)
    if config.qat == "always":
        why = "asked for (qat=always)"
    else:
        why = f"int8 missed the {plan.max_drop_pt} pt budget after PTQ"
    log(f"[qat] {why}: quantization-aware fine-tuning on {len(subset)} training photos, {qat_config.epochs} epoch(s)")
    tensors = preprocess_dataset(fp32_bundle, subset).astype(np.float32, copy=False)
    result = qat.fine_tune(
        model_path, tensors, np.asarray(subset.labels), work / "model.keras", qat_config, log=lambda m: log(f"  {m}")
    )
    step = Step(
        name=qat.STEP_NAME,
        config={
            **dataclasses.asdict(qat_config),
            **result.record(),
            "data": f"{subset.root}:{subset.split}",
            "images": len(subset),
            "source_sha256": sha256_file(model_path),
        },
        tool_versions=tool_versions(),
        seconds=round(result.seconds, 3),
    )
    exported = _export_fine_tuned(result.model_path, step, source, plan, fp32_bundle, work, log)
    keras_source = None
    if plan.format is ModelFormat.TFLITE:
        loaded = load_source(result.model_path, work / "source")
        keras_source = dataclasses.replace(loaded, steps=(step, *loaded.steps))
    candidate = next(c for c in make_candidates(plan, exported, keras_source) if c.precision is Precision.INT8)
    return candidate.build(
        work_dir=work / "int8",
        out_dir=variants_dir,
        calibration=calibration,
        eval_fn=eval_fn,
        fp32_accuracy=fp32_accuracy,
        max_drop_pt=plan.max_drop_pt,
        max_ignored=config.max_ignored,
        log=lambda m: log(f"  {m}"),
    )


def _export_fine_tuned(
    model_path: Path, step: Step, source: ModelSource, plan: ConvertPlan, fp32_bundle: Bundle, work: Path, log: Log
) -> Bundle:
    """The fine-tuned model at fp32 in the plan's format; its lineage: the fp32 bundle, then the QAT step."""
    exported = export(
        model_path,
        out_dir=work / "fp32",
        formats=[plan.format],
        name=f"{source.name}-qat",
        labels=source.labels,
        preprocessing=source.preprocessing,
        progress=lambda m: log(f"  [export] {m}"),
    )[plan.format]
    p = exported.manifest.provenance
    lineage = dataclasses.replace(p, parent=fp32_bundle.path.name, steps=(step, *p.steps))
    return write_bundle(exported.path, exported.manifest.with_changes(provenance=lineage))
