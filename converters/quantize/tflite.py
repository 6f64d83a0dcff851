"""Step: SavedModel -> quantized LiteRT model (fp16, dynamic-range int8, full int8, int16x8).

``run`` quantizes once with a config; full int8 can keep chosen ops in float (selective
quantization through TF's QuantizationDebugger, see ``converters.quantize.tflite_debug``).
``sensitive_layers`` ranks the int8 ops by their quantization error; ``quantize_with_budget``
searches for the least-float int8 model within an accuracy budget with the search every format
shares (``converters.quantize.budget``): plain PTQ, then the 1, 2, 4, 8... most sensitive ops
kept in float. LiteRT has no accuracy-control API of its own, so that step of the search is skipped.

The step declares itself with a ``QuantizeStep`` (``converters.quantize.steps``): the
precisions it writes, those that need calibration and those the budget search produces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.source import SIGNATURE, SourceModel
from converters.export.steps import conversion_error
from converters.quantize import common as qc
from converters.quantize import tflite_debug as dbg
from converters.quantize.budget import Budget, BudgetSearch, budget_result, search_budget
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, QuantResult
from converters.quantize.steps import QuantizeStep
from converters.quantize.tflite_config import IO_DTYPES, NEEDS_CALIBRATION, TFLiteQuantConfig
from converters.quantize.tflite_debug import TFLiteLayerSensitivity
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError, ConversionError, ShelfedgeError
from sdk.manifest import KeptInFloat, Step

STEP_NAME = "quantize_tflite"
TOOLS = ("tensorflow-cpu", "tensorflow", "keras")
MODEL_FILE = "model.tflite"
__all__ = [
    "IO_DTYPES",
    "MODEL_FILE",
    "NEEDS_CALIBRATION",
    "STEP",
    "STEP_NAME",
    "TOOLS",
    "TFLiteQuantConfig",
    "check",
    "open_debug_session",
    "quantize_with_budget",
    "run",
    "run_step",
    "sensitive_layers",
]
_FIX = "replace the layer with TensorFlow ops LiteRT supports, or drop this precision from the profile"


def check(source: SourceModel, config: object, calibration: CalibrationSet | None) -> None:
    """Every check ``run`` makes before converting.

    Raises:
        ConfigError: a config of another type, a source without a SavedModel, or for int8 /
            int16x8 a missing, empty or mismatched calibration set or a multi-input model.
    """
    precision = STEP.check_config(config)
    if source.kind not in STEP.source_kinds or source.saved_model_dir is None:
        raise ConfigError(
            f"{STEP_NAME}: {source.description} has no SavedModel; load it with load_source(..., saved_model=True)"
        )
    where = f"{STEP_NAME}: {source.description}"
    STEP.check_calibration_given(precision, calibration, where)
    if calibration is None:
        return
    if precision in NEEDS_CALIBRATION:
        if len(source.inputs) != 1:
            raise ConfigError(f"{where}: the model has {len(source.inputs)} inputs; calibration sets feed one")
        qc.check_calibration(calibration, source.inputs[0], where)


def run(
    source: SourceModel,
    config: TFLiteQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet | None,
) -> tuple[Path, list[KeptInFloat]]:
    """Quantize ``source``'s SavedModel with ``tf.lite.TFLiteConverter``.

    int8 with a denylist goes through ``QuantizationDebugger``: calibrate, then quantize with the
    denylisted ops left in float (weights included).

    Returns:
        ``out_dir/model.tflite`` and the ops kept in float (empty without a denylist).

    Raises:
        ConfigError: refused before any work (see ``check``); or, after
            calibration, a denylisted name that matches no quantized op, or a denylist of every op.
        ConversionError: the converter failed, naming the step, the op/layer when known, and
            the cause; or the requested I/O dtype cannot be kept with this denylist.
    """
    check(source, config, calibration)
    out_dir = Path(out_dir)
    kept: list[KeptInFloat] = []
    if config.selective:
        assert calibration is not None  # check(): int8 needs one
        # A few debug samples suffice: the session is only asked for its op names here.
        session = open_debug_session(source, config, calibration, samples=4)
        flatbuffer, kept = _denylisted(session, source, config, ())
    else:
        tensors = None if calibration is None else dbg.spread(calibration.tensors, config.calibration_steps)
        with _converting(source):
            flatbuffer = _converter(source, config, tensors, selective=False).convert()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    path.write_bytes(flatbuffer)
    return path, kept


STEP = QuantizeStep(
    name=STEP_NAME,
    format=ModelFormat.TFLITE,
    precisions=frozenset(IO_DTYPES),
    needs_calibration=NEEDS_CALIBRATION,
    budgeted=frozenset({Precision.INT8}),
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    tools=TOOLS,
    config_type=TFLiteQuantConfig,
    run=run,
)


def run_step(
    source: SourceModel, config: TFLiteQuantConfig, out_dir: Path, calibration: CalibrationSet | None
) -> tuple[Path, list[KeptInFloat], Step]:
    """``run``, timed, with its provenance record (config, calibration set, tool versions).

    Raises:
        ConfigError, ConversionError: see ``run``.
    """
    started = time.perf_counter()
    path, kept = run(source, config, out_dir, calibration)
    used = calibration if config.precision in NEEDS_CALIBRATION else None
    return path, kept, qc.step_record(STEP_NAME, config, used, TOOLS, time.perf_counter() - started)


def sensitive_layers(
    source: SourceModel,
    calibration: CalibrationSet,
    *,
    top_k: int | None = None,
    samples: int = 32,
    config: TFLiteQuantConfig | None = None,
) -> list[TFLiteLayerSensitivity]:
    """Rank the ops of the int8 model by how much each loses to int8.

    The model is calibrated like ``run`` with ``config`` (default: int8, 200 steps); then each
    op's float and int8 outputs are compared on ``samples`` samples spread over the set. The
    score is ``rmse/scale``: the op's own error in units of its output's quantization step
    (~0.29 is plain rounding; much more means the op loses more than rounding), see
    ``converters.quantize.tflite_debug.RANKING_METRIC`` for what it does and does not catch.

    Returns:
        One record per quantized op (the ``top_k`` most sensitive when given), most sensitive first.

    Raises:
        ConfigError: a non-int8 config, or an empty or mismatched calibration set.
        ConversionError: calibration or the debug run failed.
    """
    config = config if config is not None else TFLiteQuantConfig(precision=Precision.INT8)
    session = open_debug_session(source, config, calibration, samples=samples)
    with _converting(source):
        layers = session.layers()
    return layers[:top_k] if top_k is not None else layers


def open_debug_session(
    source: SourceModel, config: TFLiteQuantConfig, calibration: CalibrationSet, *, samples: int
) -> dbg.DebugSession:
    """An int8 debug session for ``source``, calibrated once (checked first, like ``run``).

    Raises:
        ConfigError: see ``check``; a non-int8 config or ``samples`` < 1.
        ConversionError: calibration failed.
    """
    check(source, config, calibration)
    if config.precision is not Precision.INT8:
        raise ConfigError(f"{STEP_NAME}: only int8 models can be debugged per layer, not {config.precision.value}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{STEP_NAME}: samples must be a positive integer, got {samples!r}")
    tensors = dbg.spread(calibration.tensors, config.calibration_steps)
    with _converting(source):
        return dbg.calibrate(
            _converter(source, config, tensors, selective=True),
            dbg.spread(calibration.tensors, samples),
            source.layer_names,
        )


def quantize_with_budget(
    source: SourceModel,
    calibration: CalibrationSet,
    eval_fn: EvalFn,
    fp32_accuracy: float,
    *,
    max_drop: float,
    out_dir: Path,
    max_ignored: int = 8,
    config: TFLiteQuantConfig | None = None,
    samples: int = 32,
    log: Callable[[str], None] | None = None,
) -> QuantResult:
    """Quantize to int8 within ``max_drop`` of ``fp32_accuracy``, keeping ops in float if needed.

    Calibrates once; tries plain int8, then the 1, 2, 4... ``max_ignored`` ops ``sensitive_layers``
    ranks first kept in float, each re-quantized from the same calibration and judged by
    ``eval_fn`` (``converters.quantize.budget``). A budget of 0 always runs the fallback. One op
    always stays int8: every op in float is the fp32 model, not an int8 candidate.

    Args:
        eval_fn: model file -> accuracy in [0, 1] on the data ``fp32_accuracy`` came from (e.g.
            ``converters.quantize.common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
        fp32_accuracy: the fp32 model's accuracy, a fraction in [0, 1].
        max_drop: allowed drop in accuracy points (1.0 = one point), as profiles state it.
        out_dir: receives ``model.tflite``; scratch work happens below it.
        config: int8 settings (default: int8 with int8 I/O); its denylist is always kept.
        samples: debug samples the sensitivity ranking runs.

    Raises:
        ConfigError: bad budget arguments, a non-int8 config or an unusable calibration set
            (before work); ``eval_fn`` returned something that is not an accuracy in [0, 1].
        ConversionError: calibration or quantization failed, or uint8 I/O cannot be kept with an
            edge op in float (use int8 I/O).
    """
    started = time.perf_counter()
    config = config if config is not None else TFLiteQuantConfig(precision=Precision.INT8, io_dtype="int8")
    out_dir = Path(out_dir)
    where = f"{STEP_NAME}: {source.description}"
    if not isinstance(config, TFLiteQuantConfig) or config.precision is not Precision.INT8:
        raise ConfigError(
            f"{where}: quantize_with_budget needs an int8 TFLiteQuantConfig (LiteRT keeps ops in float only "
            f"in int8 models; try int16x8 as a whole-model candidate), got {config!r}"
        )
    budget = Budget.checked(fp32_accuracy, max_drop, max_ignored, where)
    session = open_debug_session(source, config, calibration, samples=samples)
    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        outcome = search_budget(
            _search(session, source, config, eval_fn, log), budget, work_dir=Path(work), out_dir=out_dir
        )
    # The record's config is the one that rebuilds the chosen model: its denylist names every kept op.
    kept_nodes = tuple(k.layer for k in outcome.kept_in_float if not k.layer.startswith("op:"))
    final = dataclasses.replace(config, denylisted_nodes=kept_nodes)
    return budget_result(
        outcome, budget, step=STEP_NAME, tools=TOOLS, config=final, calibration=calibration, started=started
    )


def _search(
    session: dbg.DebugSession,
    source: SourceModel,
    config: TFLiteQuantConfig,
    eval_fn: EvalFn,
    log: Callable[[str], None] | None,
) -> BudgetSearch:
    """The LiteRT parts of the budget search: re-quantize from one calibrated debug session."""

    def quantize(extra: tuple[str, ...], directory: Path) -> Candidate:
        flatbuffer, kept = _denylisted(session, source, config, extra)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MODEL_FILE
        path.write_bytes(flatbuffer)
        return Candidate(
            model_path=path,
            kept=tuple(k.layer for k in kept),
            description="int8 LiteRT PTQ",
            reasons={k.layer: k.reason for k in kept if k.layer not in extra},
        )

    def rank(plain: Path) -> list[TFLiteLayerSensitivity]:
        # The ranking comes from the session's calibration, which made the plain model too.
        with _converting(source):
            layers = session.layers()
        already = set(session.resolve(config.denylisted_nodes))
        layers = [r for r in layers if r.tensor not in already and r.op not in config.denylisted_ops]
        return layers[:-1]  # the least sensitive op stays int8 (see quantize_with_budget)

    # LiteRT has no accuracy-control API of its own: that step of the search is skipped.
    return BudgetSearch(quantize=quantize, evaluate=eval_fn, rank=rank, log=log)


def _denylisted(
    session: dbg.DebugSession, source: SourceModel, config: TFLiteQuantConfig, extra: Sequence[str]
) -> tuple[bytes, list[KeptInFloat]]:
    """The int8 model with the config's denylist plus ``extra`` (record names) in float."""
    with _converting(source):
        layers = session.layers()
    names = list(dict.fromkeys([*config.denylisted_nodes, *extra]))
    try:
        nodes = session.resolve(names)
    except KeyError as e:
        raise ConfigError(f"{STEP_NAME}: denylisted_nodes: {e.args[0]}") from e
    present = {r.op for r in layers}
    unknown_ops = sorted(set(config.denylisted_ops) - present)
    if unknown_ops:
        raise ConfigError(
            f"{STEP_NAME}: denylisted_ops {unknown_ops} are not in the quantized model "
            f"(it has {', '.join(sorted(present))})"
        )
    if all(r.tensor in nodes or r.op in config.denylisted_ops for r in layers):
        raise ConfigError(
            f"{STEP_NAME}: the denylist keeps every quantized op in float; that is the fp32 model (export_tflite)"
        )
    with _converting(source):
        try:
            flatbuffer = session.model(nodes=nodes, ops=config.denylisted_ops, io_dtype=config.io_dtype)
        except dbg.IODtypeError as e:
            raise ConversionError(f"{STEP_NAME}: {source.description}: {e}") from e
    kept = [
        KeptInFloat(layer=r.name, precision=Precision.FP32, reason=f"{r.describe()}; listed in denylisted_nodes")
        for r in layers
        if r.tensor in nodes
    ]
    kept += [
        KeptInFloat(layer=f"op:{op}", precision=Precision.FP32, reason="every op of this type; in denylisted_ops")
        for op in config.denylisted_ops
    ]
    return flatbuffer, kept


def _converter(source: SourceModel, config: TFLiteQuantConfig, tensors: np.ndarray | None, *, selective: bool) -> Any:
    """A ``TFLiteConverter`` set up for ``config.precision``.

    ``selective`` leaves the int8 I/O types unset: the debugger only calibrates with this
    converter and ignores them; ``DebugSession.model`` applies the I/O dtype when it quantizes.
    """
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir), signature_keys=[SIGNATURE])
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    # A private switch, but the only one: the debugger itself reads it when it re-quantizes.
    c._experimental_disable_per_channel = not config.per_channel
    precision = config.precision
    if precision is Precision.FP16:
        c.target_spec.supported_types = [tf.float16]
    elif precision is Precision.INT8:
        c.representative_dataset = dbg.representative(tensors)
        c.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not selective and config.io_dtype != "float32":
            c.inference_input_type = c.inference_output_type = tf.as_dtype(config.io_dtype)
    elif precision is Precision.INT16X8:
        c.representative_dataset = dbg.representative(tensors)
        ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        if config.allow_float_fallback:
            ops.append(tf.lite.OpsSet.TFLITE_BUILTINS)
        c.target_spec.supported_ops = ops
        if config.io_dtype == "int16":
            c.inference_input_type = c.inference_output_type = tf.int16
    # DYNAMIC_INT8: DEFAULT without a representative dataset is dynamic-range quantization.
    return c


@contextlib.contextmanager
def _converting(source: SourceModel) -> Iterator[None]:
    """Turn a library failure into a ConversionError naming this step, the layer and the cause."""
    try:
        yield
    except ShelfedgeError:
        raise
    except Exception as e:  # the converter raises ConverterError, ValueError, RuntimeError...
        raise conversion_error(STEP_NAME, source, e, fix=_FIX) from e
