"""LiteRT selective quantization: per-layer sensitivity and keep-in-float through TF's debugger.

``tf.lite.experimental.QuantizationDebugger`` calibrates a converter once, then re-quantizes the
calibrated model on demand (``mlir_quantize``, milliseconds) with any set of nodes or op types
left in float, so an accuracy-control loop tries many denylists for the price of one calibration.

What was verified with TensorFlow 2.21 (tiny CNN, see tests/converters/test_quantize_tflite.py):

- ``denylisted_nodes`` matches the quantized op's *output tensor name* exactly as the debugger's
  ``layer_statistics_dump`` reports it (``functional_1/dw_1/depthwise1``); the Keras-looking
  prefix (``functional_1/dw_1/depthwise``) names the weights and silently matches nothing, so
  names are resolved here and unknown ones refused.
- ``denylisted_ops`` takes LiteRT builtin op names (``CONV_2D``, ``MEAN``).
- ``get_nondebug_quantized_model`` has float32 I/O unless ``fully_quantize=True``, which gives
  int8 I/O even when the first or last layer stays in float (a DEQUANTIZE / QUANTIZE sits at
  the edge). uint8 I/O comes from ``modify_model_io_type`` (what TFLiteConverter itself uses),
  which needs a QUANTIZE right after the input and a DEQUANTIZE right before the output: it
  cannot give uint8 I/O when an edge layer stays in float, so that case is refused.
- Selective quantization only exists for int8 activations (int16x8 and dynamic range have none).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from converters.export.steps import layers_for_nodes
from converters.quantize import common as qc

# The metric the ranking uses: RMSE of (float op output - dequantized int8 op output), in units
# of the op's output quantization step. Pure rounding noise of a uniform quantizer is
# 1/sqrt(12) = 0.289 steps; values well above it mean the op loses more than rounding (int8
# weights of a layer whose channels span very different ranges, saturation, an accumulation the
# int8 kernel rounds differently). Dividing by the scale makes layers with different value ranges
# comparable; raw MSE would rank wide-range layers first.
# What it misses: the step itself being too coarse. An activation whose range is stretched by a
# few outlier channels rounds the other channels to a handful of levels while rmse/scale stays
# ~0.29, and the consumer of that tensor shows no error of its own (it is fed the rounded input).
# The budget search measures every candidate end to end, so a ranking miss costs attempts, not
# correctness; the output ``scale`` is kept in each record to spot such wide ranges.
RANKING_METRIC = "rmse/scale"

# The extreme of that miss is caught (``common.COARSE_METRIC``): the share of the op's nonzero float
# outputs (the float model run on the debug samples) smaller than half its int8 step. Above
# ``common.COARSE_SHARE`` the op's output is mostly lost while rmse/scale reads ~0. Seen in the
# recommendation student: ``(mask - 1) * 1e9`` padding logits share one int8 scale of 3.9e6 with the
# learned recency logits they are added to, so ``mask - 1`` (-1 or 0) becomes 0 and the recency
# weights vanish: the pool is a plain mean. Such an op ranks first, followed by the ops that read
# its output (in float, the tensor would be re-quantized at the same scale on their input).
COARSE_METRIC = qc.COARSE_METRIC
_MAGNITUDES_PER_SAMPLE = 64  # nonzero |values| kept per tensor and sample, evenly strided

# Added to the debugger's defaults (num_elements, stddev, mean_error, max_abs_error,
# mean_squared_error). Each receives one sample's NumericVerify output: the per-element
# difference between the float op run on the quantized op's own (dequantized) inputs and the
# quantized op, so it is the op's local error, not the error accumulated from earlier layers.
_EXTRA_METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "mean_abs_error": lambda diffs: float(np.mean(np.abs(diffs))),
}
_IO_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteLayerSensitivity(qc.LayerSensitivity):
    """How much one quantized LiteRT op loses to int8, measured over the debug samples.

    Attributes:
        name: the Keras layer(s) the op comes from (``relu+bn+conv`` for a fused op, the
            signature output name for the last op), else the tensor name; unique, and accepted
            by ``TFLiteQuantConfig.denylisted_nodes``.
        op: the LiteRT builtin op (``CONV_2D``).
        metrics: ``rmse/scale`` plus the debugger's per-layer metrics, averaged over samples.
        score: ``rmse/scale``, the ranking metric.
        tensor: the op's output tensor in the converted model, as the debugger's denylist takes it.
        layers: the Keras layer names the tensor maps to, possibly empty.
        scale: the int8 scale of the op's output.
        coarse: the output's step is too coarse for its values (``COARSE_METRIC`` > ``common.COARSE_SHARE``).
    """

    tensor: str
    layers: tuple[str, ...]
    scale: float
    coarse: bool = False

    @property
    def rmse_per_scale(self) -> float:
        return self.score

    def describe(self) -> str:
        keys = (RANKING_METRIC, COARSE_METRIC, "mean_squared_error", "max_abs_error")
        shown = ", ".join(f"{k} {self.metrics[k]:.4g}" for k in keys if k in self.metrics)
        return f"{self.op} {self.name!r} (tensor {self.tensor!r}): {shown}, output scale {self.scale:.4g}"


def representative(tensors: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """A representative-dataset factory: one sample a step, batch of one, in the set's dtype.

    float32 for images; int32 item ids stay int32 (the converter feeds them to the id input as they are).
    """

    def generate() -> Iterator[list[np.ndarray]]:
        for sample in tensors:
            yield [np.ascontiguousarray(sample[None])]

    return generate


def spread(tensors: np.ndarray, count: int | None) -> np.ndarray:
    """Up to ``count`` samples evenly spread over the set.

    Calibration sets are stored class by class, so the first N samples would cover only the
    first classes; evenly spaced indices keep every class represented.
    """
    total = len(tensors)
    if count is None or count >= total:
        return tensors
    return tensors[np.unique(np.linspace(0, total - 1, count).round().astype(int))]


@dataclasses.dataclass(frozen=True, kw_only=True)
class FloatGraph:
    """What the float (calibrated) model tells the ranking and the I/O check. Immutable.

    Attributes:
        io_dtypes: its input and output dtypes; empty: every tensor is float32.
        consumers: tensor name -> the output tensors of the ops that read it.
        magnitudes: tensor name -> a strided sample of its nonzero float |values| over the debug samples.
    """

    io_dtypes: tuple[Sequence[str], Sequence[str]] | tuple[()] = ()
    consumers: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    magnitudes: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)


class IODtypeError(ValueError):
    """The model cannot have the requested I/O dtype with this denylist."""


class DebugSession:
    """A converter calibrated once, re-quantized on demand; built by ``calibrate``."""

    def __init__(
        self,
        debugger: Any,
        output_names: Mapping[str, str],
        layer_names: Sequence[str],
        graph: FloatGraph | None = None,
    ) -> None:
        self._debugger = debugger
        self._output_names = dict(output_names)
        self._layer_names = tuple(layer_names)
        self._graph = graph or FloatGraph()
        self._layers: list[TFLiteLayerSensitivity] | None = None

    def layers(self) -> list[TFLiteLayerSensitivity]:
        """Every quantized op with its metrics, most sensitive first (runs the debug samples once)."""
        if self._layers is None:
            with _quiet():
                self._debugger.run()
            dump = io.StringIO()
            self._debugger.layer_statistics_dump(dump)
            rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
            records = _unique_names([self._record(row) for row in rows])
            self._layers = _ranked(records, self._graph.consumers)
        return list(self._layers)

    def resolve(self, names: Sequence[str]) -> list[str]:
        """Tensor names for ``names``: record names, tensor names or Keras layer names.

        Raises:
            KeyError: a name matches no quantized op; the message lists the known ones.
        """
        layers = self.layers()
        tensors: list[str] = []
        for name in names:
            matches = [r.tensor for r in layers if name in (r.name, r.tensor)] or [
                r.tensor for r in layers if name in r.layers
            ]
            if not matches:
                known = ", ".join(f"{r.tensor!r} ({r.name})" for r in layers[:12])
                raise KeyError(f"{name!r} names no quantized op; known tensors (layers): {known}")
            tensors.extend(t for t in matches if t not in tensors)
        return tensors

    def model(self, *, nodes: Sequence[str], ops: Sequence[str], io_dtype: str) -> bytes:
        """The non-debug quantized model with ``nodes`` and ``ops`` kept in float.

        Raises:
            IODtypeError: the requested I/O dtype cannot be produced for this denylist.
        """
        import tensorflow as tf

        # The ranking comes from the debug model without a denylist: compute it before changing it.
        self.layers()
        # fully_quantize gives int8 I/O even with an edge layer in float; uint8 is converted below.
        options = tf.lite.experimental.QuantizationDebugOptions(
            layer_debug_metrics=_EXTRA_METRICS,
            denylisted_nodes=list(nodes) or None,
            denylisted_ops=list(ops) or None,
            fully_quantize=io_dtype == "int8",
        )
        with _quiet():
            self._debugger.options = options
            flatbuffer = self._debugger.get_nondebug_quantized_model()
            if io_dtype == "uint8":
                from tensorflow.lite.python.util import modify_model_io_type

                flatbuffer = modify_model_io_type(flatbuffer, tf.uint8, tf.uint8)
        got_in, got_out = io_dtypes(flatbuffer)
        want = np.dtype(_IO_DTYPES[io_dtype]).name
        # Only tensors that are float32 in the float model take the int8/uint8 I/O dtype; integer
        # inputs (a recommender's int32 item ids) keep theirs.
        was_in, was_out = self._graph.io_dtypes or (("float32",) * len(got_in), ("float32",) * len(got_out))
        wrong = [f"input {d}" for d, w in zip(got_in, was_in, strict=False) if d != want and w == "float32"]
        wrong += [f"output {d}" for d, w in zip(got_out, was_out, strict=False) if d != want and w == "float32"]
        if wrong:
            raise IODtypeError(
                f"{io_dtype} I/O is not possible with {', '.join(nodes) or ', '.join(ops)} kept in float "
                f"(the model would have {', '.join(wrong)}): LiteRT converts I/O to {io_dtype} only "
                "where a quantized op sits at the model's edge; use io_dtype='int8' or 'float32'"
            )
        return bytes(flatbuffer)

    def _record(self, row: Mapping[str, str]) -> TFLiteLayerSensitivity:
        tensor = row["tensor_name"]
        scale = float(row["scale"])
        skip = {"op_name", "tensor_idx", "tensor_name", "scale", "zero_point"}
        metrics = {k: float(v) for k, v in row.items() if k not in skip and v not in ("", None)}
        mse = metrics.get("mean_squared_error", math.nan)
        metrics[RANKING_METRIC] = math.sqrt(mse) / scale if scale > 0 else math.nan
        magnitudes = self._graph.magnitudes.get(tensor)
        metrics[COARSE_METRIC] = qc.lost_share(magnitudes, scale) if magnitudes is not None else math.nan
        if tensor in self._output_names:
            layers: tuple[str, ...] = (self._output_names[tensor],)
        else:
            # Fused ops name every folded node, separated by ';' (Relu;convolution).
            layers = tuple(layers_for_nodes(tensor.split(";"), self._layer_names))
        return TFLiteLayerSensitivity(
            name="+".join(layers) or tensor,
            op=row["op_name"],
            metrics=metrics,
            score=metrics[RANKING_METRIC],
            tensor=tensor,
            layers=layers,
            scale=scale,
            coarse=metrics[COARSE_METRIC] > qc.COARSE_SHARE,
        )


def calibrate(converter: Any, debug_tensors: np.ndarray, layer_names: Sequence[str]) -> DebugSession:
    """Calibrate ``converter`` (int8, representative dataset set) once for selective quantization.

    Raises:
        Exception: whatever the converter raises; the caller wraps it in a ConversionError.
    """
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(layer_debug_metrics=_EXTRA_METRICS)
    with _quiet():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative(debug_tensors), debug_options=options
        )
    calibrated = debugger.calibrated_model
    return DebugSession(debugger, _signature_outputs(calibrated), layer_names, float_graph(calibrated, debug_tensors))


def float_graph(flatbuffer: bytes, samples: np.ndarray) -> FloatGraph:
    """The float model's I/O dtypes, op graph and each tensor's nonzero magnitudes over ``samples`` (one input)."""
    interpreter = _interpreter(flatbuffer, preserve=True)
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    consumers: dict[str, list[str]] = {}
    # A private call, as the debugger itself makes: the public API lists tensors, not ops.
    for op in interpreter._get_ops_details():
        outputs = [names[i] for i in op["outputs"] if i in names]
        for i in op["inputs"]:
            if i in names:
                consumers.setdefault(names[i], []).extend(outputs)
    magnitudes: dict[str, list[np.ndarray]] = {}
    feed = interpreter.get_input_details()[0]
    floats = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    for sample in samples:
        batch = np.ascontiguousarray(sample[None])
        if tuple(feed["shape"]) != batch.shape:
            interpreter.resize_tensor_input(feed["index"], batch.shape, strict=False)
        interpreter.allocate_tensors()
        interpreter.set_tensor(feed["index"], batch)
        interpreter.invoke()
        for d in floats:
            values = np.abs(np.asarray(interpreter.get_tensor(d["index"]), np.float32).ravel())
            values = values[values > 0]
            step = max(1, values.size // _MAGNITUDES_PER_SAMPLE)
            magnitudes.setdefault(d["name"], []).append(values[::step])
    return FloatGraph(
        io_dtypes=io_dtypes(flatbuffer),
        consumers={name: tuple(dict.fromkeys(outputs)) for name, outputs in consumers.items()},
        magnitudes={name: np.concatenate(parts) for name, parts in magnitudes.items()},
    )


def io_dtypes(flatbuffer: bytes) -> tuple[list[str], list[str]]:
    """numpy dtype names of a LiteRT model's inputs and outputs."""
    interpreter = _interpreter(flatbuffer)
    return (
        [np.dtype(d["dtype"]).name for d in interpreter.get_input_details()],
        [np.dtype(d["dtype"]).name for d in interpreter.get_output_details()],
    )


def _signature_outputs(flatbuffer: bytes) -> dict[str, str]:
    """Output tensor name -> signature output name ('StatefulPartitionedCall_1:0' -> 'logits')."""
    interpreter = _interpreter(flatbuffer)
    names: dict[str, str] = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        names.update({d["name"]: name for name, d in runner.get_output_details().items()})
    return names


def _ranked(
    records: list[TFLiteLayerSensitivity], consumers: Mapping[str, Sequence[str]]
) -> list[TFLiteLayerSensitivity]:
    """Coarse-step ops first (most lost first), each followed by the ops that read it; then by ``rmse/scale``."""
    by_tensor = {r.tensor: r for r in records}
    first: dict[str, TFLiteLayerSensitivity] = {}
    for record in sorted((r for r in records if r.coarse), key=lambda r: -r.metrics[COARSE_METRIC]):
        for tensor in (record.tensor, *consumers.get(record.tensor, ())):
            if tensor in by_tensor and tensor not in first:
                first[tensor] = by_tensor[tensor]
    rest = sorted((r for r in records if r.tensor not in first), key=_rank_key)
    return [*first.values(), *rest]


def _interpreter(flatbuffer: bytes, *, preserve: bool = False) -> Any:
    import tensorflow as tf

    with _quiet():
        # Details (or a float run, every intermediate kept with ``preserve``) of the calibrated model.
        return tf.lite.Interpreter(model_content=flatbuffer, experimental_preserve_all_tensors=preserve)


def _unique_names(records: list[TFLiteLayerSensitivity]) -> list[TFLiteLayerSensitivity]:
    # Two ops of one Keras layer would share a name; the tensor name tells them apart.
    names = [r.name for r in records]
    return [dataclasses.replace(r, name=r.tensor) if names.count(r.name) > 1 else r for r in records]


def _rank_key(record: TFLiteLayerSensitivity) -> tuple[bool, float]:
    # Most sensitive first; a NaN score (an op without a scale) last; ties keep graph order.
    value = record.score
    return (math.isnan(value), -value if not math.isnan(value) else 0.0)


class _quiet(warnings.catch_warnings):
    """TF's own Interpreter warns that it is deprecated on every use inside the debugger."""

    def __enter__(self) -> Any:
        result = super().__enter__()
        warnings.simplefilter("ignore", UserWarning)
        return result
