"""Step: SavedModel -> quantized LiteRT model (fp16, dynamic-range int8, full int8, int16x8).

``run`` quantizes once with a config; full int8 can keep chosen ops in float (selective
quantization through TF's QuantizationDebugger, see ``converters.quantize.tflite_debug``).
``sensitive_layers`` ranks the int8 ops by their quantization error; ``quantize_with_budget``
searches for the least-float int8 model within an accuracy budget with the search every format
shares (``quant_common.search_budget``): plain PTQ, then the 1, 2, 4, 8... most sensitive ops
kept in float. LiteRT has no accuracy-control API of its own, so that step of the search is skipped.

``ExportStep.run`` takes no calibration set and returns only a path, so this step declares
itself with a ``QuantizeStep`` of the same shape plus the precisions that need calibration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.quantize import common as qc
from converters.quantize import tflite_debug as dbg
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, QuantResult
from converters.quantize.tflite_debug import TFLiteLayerSensitivity
from converters.export.source import SIGNATURE, SourceModel
from converters.export.steps import conversion_error
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError, ConversionError, ShelfedgeError
from sdk.manifest import KeptInFloat, Step

STEP_NAME = "quantize_tflite"
TOOLS = ("tensorflow-cpu", "tensorflow", "keras")
MODEL_FILE = "model.tflite"
# Model I/O dtypes each precision can have.
IO_DTYPES: dict[Precision, tuple[str, ...]] = {
    Precision.FP16: ("float32",),
    Precision.DYNAMIC_INT8: ("float32",),
    Precision.INT8: ("int8", "uint8", "float32"),
    Precision.INT16X8: ("float32", "int16"),
}
NEEDS_CALIBRATION = frozenset({Precision.INT8, Precision.INT16X8})
_FIX = "replace the layer with TensorFlow ops LiteRT supports, or drop this precision from the profile"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteQuantConfig:
    """How to quantize a SavedModel for LiteRT.

    Attributes:
        precision: ``fp16``, ``dynamic_int8``, ``int8`` or ``int16x8``.
        io_dtype: the model's input/output dtype: ``int8``/``uint8`` only for int8, ``int16``
            only for int16x8, else ``float32``.
        calibration_steps: most calibration samples used (evenly spread over the set).
        denylisted_nodes: int8 only: ops kept in float, by the names ``sensitive_layers``
            reports (record name, tensor name) or by Keras layer name.
        denylisted_ops: int8 only: LiteRT op types kept in float (``CONV_2D``, ``MEAN``).
        per_channel: per-channel weight scales for conv/dense (per-tensor is coarser, smaller).
        allow_float_fallback: int16x8 only: ops without an int16 kernel run in float.

    Raises:
        ConfigError: on construction, a value this step cannot honour.
    """

    precision: Precision
    io_dtype: str = "float32"
    calibration_steps: int = 200
    denylisted_nodes: tuple[str, ...] = ()
    denylisted_ops: tuple[str, ...] = ()
    per_channel: bool = True
    allow_float_fallback: bool = False

    def __post_init__(self) -> None:
        where = "TFLiteQuantConfig"
        # A plain "int8" equals Precision.INT8 but is not it: every later `is` test would miss.
        try:
            precision = Precision.parse(self.precision, "precision")
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
        object.__setattr__(self, "precision", precision)
        # Callers may pass lists; tuples keep the config hashable and its record stable.
        for name in ("denylisted_nodes", "denylisted_ops"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if precision not in IO_DTYPES:
            choices = ", ".join(p.value for p in IO_DTYPES)
            raise ConfigError(
                f"{where}.precision must be one of {choices} (fp32 comes from export_tflite), got {precision.value!r}"
            )
        if self.io_dtype not in IO_DTYPES[precision]:
            raise ConfigError(
                f"{where}.io_dtype {self.io_dtype!r} does not go with {precision.value}; use one of "
                f"{', '.join(IO_DTYPES[precision])}"
            )
        steps = self.calibration_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{where}.calibration_steps must be a positive integer, got {steps!r}")
        if self.selective and precision is not Precision.INT8:
            raise ConfigError(
                f"{where}: denylisted_nodes/ops need precision int8 (LiteRT keeps ops in float only in "
                f"full-integer int8 models), not {precision.value}"
            )
        if self.allow_float_fallback and precision is not Precision.INT16X8:
            raise ConfigError(f"{where}.allow_float_fallback is for int16x8 only")

    @property
    def selective(self) -> bool:
        return bool(self.denylisted_nodes or self.denylisted_ops)


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeStep:
    """The declaration of a quantizing step: ``ExportStep``'s fields, plus calibration.

    A planner asks it before any work whether a request can be honoured.

    Attributes:
        name: the step name recorded in provenance.
        format: the model format it writes.
        precisions: precisions it produces.
        needs_calibration: precisions that need a calibration set.
        source_kinds: source kinds it converts from (through their SavedModel).
        tools: distributions whose versions the step record carries.
        config_type: the frozen dataclass ``run`` takes.
    """

    name: str
    format: ModelFormat
    precisions: frozenset[Precision]
    needs_calibration: frozenset[Precision]
    source_kinds: frozenset[ModelFormat]
    tools: tuple[str, ...]
    config_type: type

    def check(self, source: SourceModel, config: object, calibration: CalibrationSet | None) -> None:
        """Every check ``run`` makes before converting.

        Raises:
            ConfigError: a config of another type, a source without a SavedModel, or for int8 /
                int16x8 a missing, empty or mismatched calibration set or a multi-input model.
        """
        if not isinstance(config, self.config_type):
            raise ConfigError(f"{self.name}: config is a {type(config).__name__}, expected {self.config_type.__name__}")
        if source.kind not in self.source_kinds or source.saved_model_dir is None:
            raise ConfigError(
                f"{self.name}: {source.description} has no SavedModel; load it with load_source(..., saved_model=True)"
            )
        precision: Precision = config.precision  # type: ignore[attr-defined]
        if precision not in self.needs_calibration:
            return
        where = f"{self.name}: {source.description}"
        if calibration is None:
            raise ConfigError(
                f"{where}: {precision.value} needs a calibration set; build one with "
                "converters.quantize.calibration.build_calibration_set (or from_arrays)"
            )
        if len(source.inputs) != 1:
            raise ConfigError(f"{where}: the model has {len(source.inputs)} inputs; calibration sets feed one")
        qc.check_calibration(calibration, source.inputs[0], where)


STEP = QuantizeStep(
    name=STEP_NAME,
    format=ModelFormat.TFLITE,
    precisions=frozenset(IO_DTYPES),
    needs_calibration=NEEDS_CALIBRATION,
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    tools=TOOLS,
    config_type=TFLiteQuantConfig,
)


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
        ConfigError: refused before any work (see ``QuantizeStep.check``); or, after
            calibration, a denylisted name that matches no quantized op, or a denylist of every op.
        ConversionError: the converter failed, naming the step, the op/layer when known, and
            the cause; or the requested I/O dtype cannot be kept with this denylist.
    """
    STEP.check(source, config, calibration)
    out_dir = Path(out_dir)
    kept: list[KeptInFloat] = []
    if config.selective:
        assert calibration is not None  # STEP.check: int8 needs one
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
    ``quantize_tflite_debug.RANKING_METRIC`` for what it does and does not catch.

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
        ConfigError: see ``QuantizeStep.check``; a non-int8 config or ``samples`` < 1.
        ConversionError: calibration failed.
    """
    STEP.check(source, config, calibration)
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
    ``eval_fn`` (``quant_common.search_budget``). A budget of 0 always runs the fallback. One op
    always stays int8: every op in float is the fp32 model, not an int8 candidate.

    Args:
        eval_fn: model file -> accuracy in [0, 1] on the data ``fp32_accuracy`` came from (e.g.
            ``quant_common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
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
    qc.check_budget(fp32_accuracy, max_drop, max_ignored, where)
    session = open_debug_session(source, config, calibration, samples=samples)

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
        return layers[:-1]  # the least sensitive op stays int8 (see the docstring)

    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        candidate, kept, attempts, met = qc.search_budget(
            quantize=quantize,
            evaluate=eval_fn,
            rank=rank,
            fp32_accuracy=fp32_accuracy,
            max_drop=max_drop,
            max_ignored=max_ignored,
            work_dir=Path(work),
            log=log,
        )
        qc.keep_only(candidate.model_path.parent, out_dir)
    kept_nodes = tuple(k.layer for k in kept if not k.layer.startswith("op:"))
    final = dataclasses.replace(config, denylisted_nodes=kept_nodes)
    budget = {
        "fp32_accuracy": fp32_accuracy,
        "max_drop": max_drop,
        "max_ignored": max_ignored,
        "met_budget": met,
        "attempts": attempts,
        "kept_in_float": kept,
    }
    step = qc.step_record(STEP_NAME, final, calibration, TOOLS, time.perf_counter() - started, {"budget": budget})
    return QuantResult(
        model_path=out_dir / MODEL_FILE,
        precision=Precision.INT8,
        kept_in_float=kept,
        attempts=attempts,
        met_budget=met,
        step=step,
    )


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


def _converter(
    source: SourceModel, config: TFLiteQuantConfig, tensors: np.ndarray | None, *, selective: bool
) -> Any:
    """A ``TFLiteConverter`` set up for ``config.precision``.

    ``selective`` leaves the int8 I/O types unset: the debugger only calibrates with this
    converter and ignores them; ``DebugSession.model`` applies the I/O dtype when it quantizes.
    """
    import tensorflow as tf

    c = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir), signature_keys=[SIGNATURE])
    c.optimizations = [tf.lite.Optimize.DEFAULT]
    # A private switch, but the only one: the debugger itself reads it when it re-quantizes.
    c._experimental_disable_per_channel = not config.per_channel  # noqa: SLF001
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
    except Exception as e:  # noqa: BLE001 - the converter raises ConverterError, ValueError, RuntimeError...
        raise conversion_error(STEP_NAME, source, e, fix=_FIX) from e
