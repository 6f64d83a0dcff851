"""What every quantize step shares: checks, sensitivity records, attempts, results, step records.

A quantize step (OpenVINO/NNCF, ONNX Runtime, LiteRT) turns an fp32 model file into a lower
precision one. With an accuracy budget it runs the search in ``converters.quantize.budget``;
every try is an ``Attempt``, what was kept and why becomes the manifest's ``kept_in_float``.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import config_record
from converters.quantize.calibration import DTYPES, CalibrationSet
from sdk.enums import Precision
from sdk.errors import ConfigError
from sdk.manifest import KeptInFloat, Step
from sdk.tensors import TensorSpec
from sdk.versions import tool_versions

# A model run in-process: a float32 input batch -> its first output.
Predict = Callable[[np.ndarray], np.ndarray]
# Accuracy (a fraction in [0, 1]) of a model file on the caller's validation data; the caller
# loads the file (through ``sdk``, or a step's ``predictor``). The LiteRT step takes the same.
EvalFn = Callable[[Path], float]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerSensitivity:
    """How much one layer's quantization perturbs the model.

    Attributes:
        name: the layer's name as the quantizer's exclusion list takes it (NNCF IgnoredScope
            names, ONNX Runtime nodes_to_exclude, ...).
        op: the op type (``Convolution``, ``Conv``, ``MatMul``...).
        metrics: measured numbers (``relative_error``, ``cosine``, ``input_quant_error``,
            ``weight_quant_error``...), each over the same calibration samples.
        score: what the layers are ranked by, higher is more sensitive.
    """

    name: str
    op: str
    metrics: Mapping[str, float]
    score: float

    def describe(self) -> str:
        """The measured numbers as one phrase, for a KeptInFloat reason or a log line."""
        shown = ", ".join(f"{k} {v:.4g}" for k, v in self.metrics.items())
        return f"{self.op} {self.name!r}: {shown}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attempt:
    """One quantization tried while looking for a model within the budget.

    ``accuracy`` and ``drop`` are None when the attempt failed before it could be measured
    (``description`` then says why).
    """

    description: str
    kept: tuple[str, ...]
    accuracy: float | None  # fraction in [0, 1]
    drop: float | None  # accuracy points vs fp32, like max_drop (negative: gained)
    met_budget: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantResult:
    """The model a budgeted quantization chose, with the evidence.

    Attributes:
        model_path: the chosen model file (OpenVINO: the .xml, its .bin beside it).
        precision: the precision the bundle records; layers in ``kept_in_float`` are the exceptions.
        kept_in_float: layers left in float and why (the manifest's ``kept_in_float``).
        attempts: every try, in order.
        met_budget: whether the chosen model is within ``max_drop`` of the fp32 accuracy; when no
            attempt is, the most accurate one is chosen and this is false.
        step: the lineage record (config, calibration set, budget, attempts, tool versions).
    """

    model_path: Path
    precision: Precision
    kept_in_float: tuple[KeptInFloat, ...]
    attempts: tuple[Attempt, ...]
    met_budget: bool
    step: Step


@dataclasses.dataclass(frozen=True, kw_only=True)
class Candidate:
    """A quantized model written by one attempt, before it is measured."""

    model_path: Path
    kept: tuple[str, ...]
    description: str
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)


def require_calibration(calibration: CalibrationSet | None, where: str) -> CalibrationSet:
    """Refuse a missing or empty calibration set (the checks that need no model).

    Raises:
        ConfigError: no set, not a CalibrationSet, no samples, or neither float32 nor int32.
    """
    if calibration is None:
        raise ConfigError(
            f"{where}: int8 quantization needs a calibration set; build one with "
            "converters.quantize.calibration.build_calibration_set (or from_arrays)"
        )
    if not isinstance(calibration, CalibrationSet):
        raise ConfigError(f"{where}: calibration must be a CalibrationSet, got {type(calibration).__name__}")
    if len(calibration) == 0:
        raise ConfigError(
            f"{where}: the calibration set is empty; give a dataset with images for the model's classes "
            "or raise the calibration size"
        )
    if calibration.tensors.dtype.name not in DTYPES:
        raise ConfigError(
            f"{where}: calibration tensors are {calibration.tensors.dtype}; models take float32 (images) or "
            "int32 (item ids); convert the set with from_arrays"
        )
    return calibration


def check_calibration(calibration: CalibrationSet | None, spec: TensorSpec, where: str) -> CalibrationSet:
    """Refuse a missing, empty or mismatched calibration set before any quantization work.

    Raises:
        ConfigError: see ``require_calibration``; or samples whose shape or dtype differs from ``spec``.
    """
    calibration = require_calibration(calibration, where)
    calibration.check_matches(spec, where)
    return calibration


def check_budget(fp32_accuracy: float, max_drop: float, max_ignored: int, where: str) -> None:
    """Refuse budget arguments that cannot be honoured.

    ``fp32_accuracy`` is a fraction in [0, 1]; ``max_drop`` is in accuracy points, like the
    profile's ``max_accuracy_drop_pt`` (1.0 = one percentage point).

    Raises:
        ConfigError: an accuracy outside [0, 1], a drop outside [0, 100], or a negative ``max_ignored``.
    """
    check_accuracy(fp32_accuracy, f"{where}: fp32_accuracy")
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not 0.0 <= max_drop <= 100.0:
        raise ConfigError(
            f"{where}: max_drop is in accuracy points (1.0 = 1 pt) and must be in [0, 100], got {max_drop!r}"
        )
    if isinstance(max_ignored, bool) or not isinstance(max_ignored, int) or max_ignored < 0:
        raise ConfigError(f"{where}: max_ignored must be a non-negative integer, got {max_ignored!r}")


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Relative L2 error, cosine similarity and max |difference| of two tensors of one shape."""
    a = np.asarray(reference, np.float64).ravel()
    b = np.asarray(candidate, np.float64).ravel()
    norm_a, norm_b = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a - b))
    relative = diff / norm_a if norm_a > 0 else (0.0 if diff == 0 else math.inf)
    cosine = float(a @ b / (norm_a * norm_b)) if norm_a > 0 and norm_b > 0 else float(norm_a == norm_b)
    return {
        "relative_error": relative,
        "cosine": cosine,
        "max_abs_error": float(np.max(np.abs(a - b))) if a.size else 0.0,
    }


def layer_sensitivity(
    name: str, op: str, output: Mapping[str, float], input_error: float, weight_error: float
) -> LayerSensitivity:
    """A layer's record: its accumulated output error vs fp32, and the noise its own quantizers add.

    The score is the layer's own noise: the relative error of quantizing its activation input
    (``||q(x) - x|| / ||x||`` on the int8 path) plus that of its weights. That is what keeping it
    in float removes; the accumulated error vs fp32 (``relative_error``, ``cosine``) grows along
    the graph and saturates once an early layer breaks, so it would rank the last layers first.
    """
    metrics = {
        "relative_error": output["relative_error"],
        "cosine": output["cosine"],
        "input_quant_error": input_error,
        "weight_quant_error": weight_error,
    }
    return LayerSensitivity(name=name, op=op, metrics=metrics, score=input_error + weight_error)


# A tensor whose int8 step is too coarse for its values: more than COARSE_SHARE of its nonzero
# float values are below half a step, so they round to the zero point. Rounding-noise rankings miss
# it (the error, however large, is far below one huge step): a ``(mask - 1) * 1e9`` padding term
# stretches a logits tensor's range to 1e9, and the small learned logits added to it all become 0.
# Each format's sensitivity puts the ops around such a tensor first (keeping it float needs its
# producer and its consumers in float: a consumer's input would be re-quantized at the same scale).
COARSE_METRIC = "share below half a step"
COARSE_SHARE = 0.5


def lost_share(values: np.ndarray, scale: float) -> float:
    """The share of the nonzero ``values`` smaller than half of the int8 step ``scale`` (NaN: none nonzero)."""
    magnitudes = np.abs(np.asarray(values, np.float64)).ravel()
    magnitudes = magnitudes[magnitudes > 0]
    if not magnitudes.size or not scale > 0:
        return float("nan")
    return float(np.mean(magnitudes < scale / 2))


def ranked(layers: Sequence[LayerSensitivity]) -> list[LayerSensitivity]:
    """Most sensitive first; ties keep graph order."""
    return sorted(layers, key=lambda s: -s.score)


def check_accuracy(value: object, what: str) -> float:
    """An accuracy as a finite fraction in [0, 1].

    Raises:
        ConfigError: anything else (a percentage, NaN, not a number), naming ``what``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{what} must be an accuracy fraction in [0, 1] (not a percentage), got {value!r}")
    return float(value)


def top1_eval(
    tensors: np.ndarray, labels: np.ndarray, predictor: Callable[[Path], Predict], batch_size: int = 64
) -> EvalFn:
    """An EvalFn: top-1 accuracy of a model file on ``tensors`` against ``labels`` (e.g. the fp32
    model's top-1, which makes it top-1 agreement with fp32), run with ``predictor(path)``.

    Raises:
        ConfigError: tensors and labels differ in length, or there are none.
    """
    tensors = np.asarray(tensors, np.float32)
    labels = np.asarray(labels).reshape(-1)
    if len(tensors) == 0 or len(tensors) != len(labels):
        raise ConfigError(f"top1_eval: {len(tensors)} tensors and {len(labels)} labels; give one label per tensor")

    def evaluate(path: Path) -> float:
        predict = predictor(path)
        correct = 0
        for start in range(0, len(tensors), batch_size):
            logits = predict(tensors[start : start + batch_size])
            correct += int(np.sum(np.argmax(logits, axis=-1) == labels[start : start + batch_size]))
        return correct / len(tensors)

    return evaluate


def step_record(
    name: str,
    config: object,
    calibration: CalibrationSet | None,
    tools: tuple[str, ...],
    seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> Step:
    """The provenance record of a quantize step: config, calibration set, extras, tool versions."""
    record = config_record(config)
    if calibration is not None:
        record["calibration"] = calibration.record()
    record.update(config_record(dict(extra or {})))
    return Step(name=name, config=record, tool_versions=tool_versions(tools), seconds=round(seconds, 3))


def keep_only(candidate_dir: Path, out_dir: Path) -> None:
    """Move a chosen candidate's files into ``out_dir`` (replacing same-named files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for file in sorted(candidate_dir.iterdir()):
        if file.is_file():
            target = out_dir / file.name
            if target.exists():
                target.unlink()
            shutil.move(str(file), str(target))


def scratch_dir(out_dir: Path, prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A scratch directory under ``out_dir`` (steps write nowhere else), removed on exit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryDirectory(prefix=f".{prefix}-", dir=out_dir)
