"""Verification of every candidate through ``sdk``: val accuracy, agreement with fp32, the report row."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.convert.choice import budget_misses
from converters.convert.plan import ConvertPlan
from converters.convert.report import Variant
from converters.quantize import common as qc
from converters.training.loop import Log
from sdk.bundle import Bundle
from sdk.data import ImageDataset
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat, Precision
from sdk.qa.evaluation import Evaluation, evaluate
from sdk.runtime import SessionOptions, describe_model, open_session

_BATCH = 32


def verify(bundle: Bundle, val: ImageDataset, plan: ConvertPlan, log: Log) -> Evaluation:
    """Load ``bundle`` through ``sdk`` as the profile says and evaluate it on ``val``.

    Raises:
        BackendUnavailableError: the format's runtime is not installed here.
    """
    # record: a profile for an absent accelerator (NPU, Edge TPU) still verifies accuracy on
    # the host CPU, and the report says where it ran.
    evaluation = evaluate(bundle, val, profile=plan.profile, fallback="record")
    log(
        f"[verify] {bundle.path.name}: val top-1 {evaluation.top1:.4f} on {evaluation.ran.runtime.value} "
        f"{evaluation.ran.actual_device}{' (fell back)' if evaluation.ran.fell_back else ''}"
    )
    return evaluation


def make_variant(
    bundle: Bundle,
    precision: Precision,
    evaluation: Evaluation,
    fp32: Evaluation,
    fp32_size_bytes: int,
    plan: ConvertPlan,
    seconds: float,
) -> Variant:
    """The report row of a verified candidate, judged against the fp32 bundle's accuracy and size."""
    drop = (fp32.top1 - evaluation.top1) * 100.0
    agreement = evaluation.agreement(fp32)
    return Variant(
        name=bundle.path.name,
        bundle=bundle,
        precision=precision,
        evaluation=evaluation,
        drop_pt=drop,
        agreement=agreement,
        misses=budget_misses(plan, precision, drop, evaluation.top1, fp32.top1, agreement),
        kept_in_float=len(bundle.manifest.kept_in_float),
        size_bytes=bundle.size_bytes(),
        fp32_size_bytes=fp32_size_bytes,
        seconds=seconds,
    )


def eval_fn(fmt: ModelFormat, tensors: np.ndarray, labels: np.ndarray) -> qc.EvalFn:
    """Val top-1 of a candidate model file, run through the sdk adapter for its format."""
    runtime = RUNTIMES_FOR_FORMAT[fmt][0]

    def evaluate_file(path: Path) -> float:
        inputs, outputs = describe_model(runtime, path)
        spec, out = inputs[0], outputs[0]
        correct = 0
        with open_session(runtime, path, inputs, outputs, SessionOptions()) as session:
            for start in range(0, len(tensors), _BATCH):
                batch = tensors[start : start + _BATCH]
                if spec.quantization is not None and spec.dtype in ("int8", "uint8", "int16"):
                    batch = spec.quantization.quantize(batch, spec.dtype)
                raw = session.run({spec.name: batch.astype(spec.dtype, copy=False)})[out.name]
                if out.quantization is not None:
                    raw = out.quantization.dequantize(raw)
                correct += int((np.asarray(raw).argmax(-1) == labels[start : start + _BATCH]).sum())
        return correct / len(tensors)

    return evaluate_file
