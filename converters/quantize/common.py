"""What every quantize step shares: sensitivity records, accuracy-control attempts and results.

A quantize step (OpenVINO/NNCF, ONNX Runtime, LiteRT) turns an fp32 model file into a lower
precision one. With an accuracy budget it runs the same search in every format
(``search_budget``): plain post-training quantization; then the library's own accuracy control
where it has one; then the most sensitive layers kept in float, 1, 2, 4, 8 at a time, until the
drop fits. Every try is an ``Attempt``; what was kept and why becomes the manifest's
``kept_in_float``.
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

from converters.quantize.calibration import CalibrationSet
from converters.export.steps import config_record, no_telemetry  # noqa: F401 - re-exported
from sdk.enums import Precision
from sdk.errors import ConfigError, ConversionError
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
        ConfigError: no set, not a CalibrationSet, no samples, or not float32.
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
    if calibration.tensors.dtype != np.float32:
        raise ConfigError(f"{where}: calibration tensors are {calibration.tensors.dtype}, the model takes float32")
    return calibration


def check_calibration(calibration: CalibrationSet | None, spec: TensorSpec, where: str) -> CalibrationSet:
    """Refuse a missing, empty or mismatched calibration set before any quantization work.

    Raises:
        ConfigError: see ``require_calibration``; or samples whose shape differs from ``spec``.
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
        raise ConfigError(f"{where}: max_drop is in accuracy points (1.0 = 1 pt) and must be in [0, 100], got {max_drop!r}")
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


def ranked(layers: Sequence[LayerSensitivity]) -> list[LayerSensitivity]:
    """Most sensitive first; ties keep graph order."""
    return sorted(layers, key=lambda s: -s.score)


def ladder(max_ignored: int, available: int) -> tuple[int, ...]:
    """How many layers each fallback attempt keeps in float: 1, 2, 4, 8... capped at both limits."""
    limit = min(max_ignored, available)
    counts: list[int] = []
    k = 1
    while k < limit:
        counts.append(k)
        k *= 2
    if limit > 0:
        counts.append(limit)
    return tuple(counts)


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


def search_budget(
    *,
    quantize: Callable[[tuple[str, ...], Path], Candidate],
    evaluate: Callable[[Path], float],
    rank: Callable[[Path], Sequence[LayerSensitivity]],
    fp32_accuracy: float,
    max_drop: float,
    max_ignored: int,
    work_dir: Path,
    accuracy_control: Callable[[Path, Path], Candidate] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Candidate, tuple[KeptInFloat, ...], tuple[Attempt, ...], bool]:
    """Find the least-float quantization within ``max_drop`` of ``fp32_accuracy``.

    Order: plain PTQ; ``accuracy_control`` (the library's own, given the plain model) when
    given; then the layers ``rank`` finds most sensitive in the plain model kept in float,
    1, 2, 4, 8... (``ladder``). A budget of 0 forces the search past plain PTQ: a drop measured
    as 0 on finite validation data does not prove that nothing was lost, so only a result that
    keeps layers in float can meet it.

    Args:
        quantize: ``(extra layers to keep in float, dir) -> Candidate`` written under dir.
        evaluate: accuracy (fraction) of a model file, on the data ``fp32_accuracy`` came from.
        rank: sensitivities of the plain PTQ model, most sensitive first.
        accuracy_control: ``(plain model, dir) -> Candidate``; failures are recorded, not raised.
        work_dir: every candidate is written below it, one directory each.

    Returns:
        The chosen candidate, its KeptInFloat records, all attempts, and whether it met the budget.

    Raises:
        ConversionError: plain quantization or ranking failed (from ``quantize`` / ``rank``).
    """
    say = log or (lambda line: None)
    forced = max_drop <= 0.0
    attempts: list[Attempt] = []
    measured: list[tuple[Candidate, Attempt, dict[str, str]]] = []

    def measure(candidate: Candidate, plain: bool = False) -> Attempt:
        accuracy = check_accuracy(evaluate(candidate.model_path), "eval_fn's result")
        # Points, rounded so 0.90 - 0.89 is a 1.0 pt drop, not 1.0000000000000009.
        drop = round(100.0 * (fp32_accuracy - accuracy), 6)
        attempt = Attempt(
            description=candidate.description,
            kept=candidate.kept,
            accuracy=accuracy,
            drop=drop,
            met_budget=drop <= max_drop and not (forced and (plain or not candidate.kept)),
        )
        attempts.append(attempt)
        say(f"{candidate.description}: accuracy {100 * accuracy:.2f}%, drop {drop:.2f} pt (budget {max_drop:g} pt)")
        return attempt

    plain = quantize((), work_dir / "ptq")
    first = measure(plain, plain=True)
    measured.append((plain, first, {}))
    if first.met_budget:
        return _finish(measured[-1], True, attempts)
    assert first.drop is not None
    miss = f"plain int8 PTQ dropped {first.drop:.2f} pt (budget {max_drop:g} pt" + (
        ", and a budget of 0 forces accuracy control)" if forced else ")"
    )

    if accuracy_control is not None:
        try:
            candidate = accuracy_control(plain.model_path, work_dir / "accuracy_control")
        except Exception as e:  # noqa: BLE001 - any library failure means: use the fallback below
            attempts.append(
                Attempt(
                    description=f"library accuracy control failed ({type(e).__name__}: {_short(e)})",
                    kept=(),
                    accuracy=None,
                    drop=None,
                    met_budget=False,
                )
            )
            say(attempts[-1].description)
        else:
            attempt = measure(candidate)
            reasons = {
                name: f"{miss}; {candidate.reasons.get(name, candidate.description)}; "
                f"the result dropped {attempt.drop:.2f} pt"
                for name in candidate.kept
            }
            measured.append((candidate, attempt, reasons))
            if attempt.met_budget:
                return _finish(measured[-1], True, attempts)

    layers = list(rank(plain.model_path))
    for count in ladder(max_ignored, len(layers)):
        chosen = layers[:count]
        candidate = quantize(tuple(s.name for s in chosen), work_dir / f"keep{count}")
        candidate = dataclasses.replace(
            candidate, description=f"int8 PTQ keeping the {count} most sensitive layer(s) in float"
        )
        attempt = measure(candidate)
        reasons = {
            s.name: f"{miss}; sensitivity rank {i + 1} of {len(layers)} ({s.describe()}); "
            f"keeping the top {count} in float dropped {attempt.drop:.2f} pt"
            for i, s in enumerate(chosen)
        }
        measured.append((candidate, attempt, reasons))
        if attempt.met_budget:
            return _finish(measured[-1], True, attempts)

    # Nothing met the budget: the most accurate try, the fewest float layers on a tie.
    best = max(measured, key=lambda m: (m[1].accuracy, -len(m[1].kept)))
    return _finish(best, False, attempts)


def _finish(
    chosen: tuple[Candidate, Attempt, dict[str, str]],
    met: bool,
    attempts: Sequence[Attempt],
) -> tuple[Candidate, tuple[KeptInFloat, ...], tuple[Attempt, ...], bool]:
    candidate, _, reasons = chosen
    kept = tuple(
        KeptInFloat(layer=name, precision=Precision.FP32, reason=reasons.get(name, candidate.reasons.get(name, "")))
        for name in candidate.kept
    )
    return candidate, kept, tuple(attempts), met


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


def library_error(step: str, subject: Path | str, action: str, error: BaseException, fix: str) -> ConversionError:
    """A ConversionError naming the step, the model, what failed and the library's cause.

    The caller raises it ``from error`` so the library's exception stays attached.
    """
    return ConversionError(f"{step}: {subject}: {action} failed ({type(error).__name__}: {_short(error)}); {fix}")


def _short(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
