"""Step: fp32 ONNX -> static int8 ONNX (QDQ) with onnxruntime.quantization.

``run`` pre-processes the model (``quant_pre_process``: shape inference and graph
optimization, the form ORT's quantizer expects) and quantizes it with ``quantize_static`` over
the calibration tensors. ``quantize_with_budget`` searches for the least-float int8 model
within an accuracy budget (``quant_common.search_budget``): plain PTQ, then the layers
``sensitive_layers`` ranks first kept in float through ``nodes_to_exclude``. The fp32 model's
``metadata_props`` are carried into every model written here.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.quantize import common as qc
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, LayerSensitivity, QuantResult
from sdk.enums import Precision
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import KeptInFloat
from sdk.tensors import TensorSpec

STEP_NAME = "quantize_onnx"
TOOLS = ("onnxruntime", "onnx")
MODEL_FILE = "model.onnx"
QUANT_FORMATS = ("QDQ",)
ACTIVATION_TYPES = ("QInt8", "QUInt8")
WEIGHT_TYPES = ("QInt8",)
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")
# Ops with weights: the layers sensitivity ranks and the fallback keeps in float.
LAYER_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
_CPU = "CPUExecutionProvider"
_FIX = "check that the file is an fp32 ONNX model (opset >= 13) that onnxruntime can run"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ONNXQuantConfig:
    """How to quantize an ONNX model with onnxruntime.quantization.

    Attributes:
        precision: ``INT8`` (the only one: static QDQ quantization).
        quant_format: ``QDQ`` (QuantizeLinear/DequantizeLinear pairs every EP understands).
        activation_type: ``QInt8`` (symmetric-friendly, ORT's x86 default for QDQ) or ``QUInt8``.
        weight_type: ``QInt8``.
        per_channel: one weight scale per output channel (better for depthwise convolutions).
        calibrate_method: ``MinMax``, ``Entropy`` or ``Percentile``.
        nodes_to_exclude: node names left in float (names of the pre-processed model, as
            ``sensitive_layers`` reports them).
        op_types_to_quantize: only these op types (None: every op type ORT can quantize).
        reduce_range: 7-bit weights, so that x86 CPUs without VNNI (AVX2's ``vpmaddubsw`` sums
            ``u8 x s8`` pairs in int16 and saturates) compute what VNNI CPUs do; ``convert`` sets
            it for CPU profiles.
    """

    precision: Precision = Precision.INT8
    quant_format: str = "QDQ"
    activation_type: str = "QInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] | None = None
    reduce_range: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if self.op_types_to_quantize is not None:
            object.__setattr__(self, "op_types_to_quantize", tuple(self.op_types_to_quantize))
        where = "ONNXQuantConfig"
        if self.precision is not Precision.INT8:
            raise ConfigError(f"{where}.precision must be int8 (static QDQ), got {self.precision!r}")
        for name, allowed in (
            ("quant_format", QUANT_FORMATS),
            ("activation_type", ACTIVATION_TYPES),
            ("weight_type", WEIGHT_TYPES),
            ("calibrate_method", CALIBRATE_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not all(isinstance(n, str) and n for n in self.nodes_to_exclude):
            raise ConfigError(f"{where}.nodes_to_exclude must be node names (strings), got {self.nodes_to_exclude!r}")
        if self.op_types_to_quantize is not None and not self.op_types_to_quantize:
            raise ConfigError(f"{where}.op_types_to_quantize must be None (all) or name at least one op type")


def run(
    fp32_onnx: Path,
    config: ONNXQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet | None,
) -> tuple[Path, list[KeptInFloat]]:
    """Write ``out_dir/model.onnx``, statically quantized to int8 in QDQ format.

    Returns:
        The model and the layers left in float (``config.nodes_to_exclude``).

    Raises:
        ConfigError: wrong config; a missing, empty or mismatched calibration set; or a
            ``nodes_to_exclude`` name that is not a node of the pre-processed model.
        ConversionError: the model cannot be read, or pre-processing / quantization failed.
    """
    if not isinstance(config, ONNXQuantConfig):
        raise ConfigError(f"{STEP_NAME}: config is a {type(config).__name__}, expected ONNXQuantConfig")
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_onnx}"
    qc.require_calibration(calibration, where)
    model = _load(fp32_onnx)
    spec = _input_spec(model, where)
    calibration = qc.check_calibration(calibration, spec, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{STEP_NAME}-", dir=out_dir) as work:
        prepared = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")
        return _quantize(prepared, model, spec, config, out_dir, calibration), [
            KeptInFloat(layer=n, precision=Precision.FP32, reason="listed in ONNXQuantConfig.nodes_to_exclude")
            for n in config.nodes_to_exclude
        ]


def sensitive_layers(
    fp32_onnx: Path, int8_onnx: Path, calibration: CalibrationSet, samples: int = 32
) -> list[LayerSensitivity]:
    """Rank the int8 model's quantized Conv / MatMul / Gemm nodes.

    On the first ``samples`` calibration tensors: each node's output as its consumers see it
    (dequantized) vs the same fp32 tensor, its activation input before vs after Q/DQ, and its
    dequantized weights vs the fp32 ones. ORT's QDQ quantizer keeps node names and folds a
    following Relu into the node's output name; both are followed here. Excluding a node keeps
    its weights and output in float; its input stays quantized when its producer is.

    Returns:
        Most sensitive first, named as ``nodes_to_exclude`` takes them; ``score`` is the
        relative error of the node's own quantization (see ``quant_common.layer_sensitivity``).

    Raises:
        ConfigError: the calibration set does not fit the model, or ``samples`` < 1.
        ConversionError: a model cannot be read or run.
    """
    fp32_onnx, int8_onnx = Path(fp32_onnx), Path(int8_onnx)
    where = f"{STEP_NAME}: sensitivity of {int8_onnx}"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{where}: samples must be a positive integer, got {samples!r}")
    reference, quantized = _load(fp32_onnx), _load(int8_onnx)
    spec = _input_spec(reference, where)
    calibration = qc.check_calibration(calibration, spec, where)
    import onnx

    ref_tensors = {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}
    ref_nodes = {n.name: n for n in reference.graph.node}
    ref_weights = {t.name: t for t in reference.graph.initializer}
    ref_producer = {o: n for n in reference.graph.node for o in n.output}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in quantized.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    pairs: list[dict[str, Any]] = []
    for node in quantized.graph.node:
        if node.op_type not in LAYER_TYPES or not node.name or not _is_quantized(node, producer):
            continue
        if node.output[0] in ref_tensors:
            ref_output = node.output[0]
        elif node.name in ref_nodes:
            ref_output = ref_nodes[node.name].output[0]
        else:
            continue
        index = _activation_input(node, producer)
        weights = next((i for i in range(len(node.input)) if i != index and _is_weight(node.input[i], producer)), None)
        ref_weight = None
        if weights is not None and node.name in ref_nodes and len(ref_nodes[node.name].input) > weights:
            ref_weight = ref_weights.get(ref_nodes[node.name].input[weights])
        pairs.append(
            {
                "node": node,
                "output": _dequantized(node.output[0], consumers),
                "ref_output": ref_output,
                "input": node.input[index],
                "float_input": _float_source(node.input[index], producer),
                "weights": node.input[weights] if ref_weight is not None else None,
                "ref_weights": onnx.numpy_helper.to_array(ref_weight) if ref_weight is not None else None,
            }
        )
    batch = calibration.tensors[:samples]
    ref_values = _outputs(reference, spec.name, [p["ref_output"] for p in pairs], batch, where)
    names = [n for p in pairs for n in (p["output"], p["input"], p["float_input"])]
    int8_values = _outputs(quantized, spec.name, names, batch, where)
    # Weights are the same for every batch: one run only, so they keep the initializer's shape.
    weight_values = _outputs(quantized, spec.name, [p["weights"] for p in pairs if p["weights"]], batch, where, once=True)
    layers = []
    for p in pairs:
        compared = qc.compare(ref_values[p["ref_output"]], int8_values[p["output"]])
        before = _activation(int8_values[p["float_input"]], ref_producer.get(p["float_input"]), ref_weights)
        input_error = qc.compare(before, int8_values[p["input"]])["relative_error"]
        weight_error = 0.0
        if p["weights"] and weight_values[p["weights"]].size == p["ref_weights"].size:
            weight_error = qc.compare(p["ref_weights"], weight_values[p["weights"]])["relative_error"]
        layers.append(qc.layer_sensitivity(p["node"].name, p["node"].op_type, compared, input_error, weight_error))
    return qc.ranked(layers)


def quantize_with_budget(
    fp32_onnx: Path,
    calibration: CalibrationSet,
    eval_fn: EvalFn,
    fp32_accuracy: float,
    *,
    max_drop: float,
    out_dir: Path,
    max_ignored: int = 8,
    config: ONNXQuantConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> QuantResult:
    """Quantize to int8 QDQ within ``max_drop`` of ``fp32_accuracy``, excluding nodes if needed.

    Tries plain static quantization, then the 1, 2, 4... ``max_ignored`` most sensitive nodes
    in ``nodes_to_exclude`` (ORT has no accuracy-aware quantizer of its own). Each result is
    judged by ``eval_fn`` against ``fp32_accuracy``. A budget of 0 always runs the fallback.

    Args:
        eval_fn: model file -> accuracy in [0, 1], on the data ``fp32_accuracy`` came from (e.g.
            ``quant_common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
        fp32_accuracy: the fp32 model's accuracy, a fraction in [0, 1].
        max_drop: allowed drop in accuracy points (1.0 = one point), as profiles state it.
        out_dir: receives ``model.onnx``; scratch work happens below it.
        config: the settings (default ``ONNXQuantConfig()``); its nodes_to_exclude are kept.

    Raises:
        ConfigError: bad budget arguments or config, or an unusable calibration set (before
            work); ``eval_fn`` returned something that is not an accuracy in [0, 1].
        ConversionError: quantization or sensitivity analysis failed (the cause is chained).
    """
    started = time.perf_counter()
    config = config if config is not None else ONNXQuantConfig()
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_onnx}"
    if not isinstance(config, ONNXQuantConfig):
        raise ConfigError(f"{where}: config is a {type(config).__name__}, expected ONNXQuantConfig")
    qc.check_budget(fp32_accuracy, max_drop, max_ignored, where)
    qc.require_calibration(calibration, where)
    model = _load(fp32_onnx)
    spec = _input_spec(model, where)
    qc.check_calibration(calibration, spec, where)

    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        prepared = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")

        def quantize(extra: tuple[str, ...], directory: Path) -> Candidate:
            names = config.nodes_to_exclude + tuple(n for n in extra if n not in config.nodes_to_exclude)
            path = _quantize(prepared, model, spec, dataclasses.replace(config, nodes_to_exclude=names), directory, calibration)
            reasons = {n: "listed in ONNXQuantConfig.nodes_to_exclude" for n in config.nodes_to_exclude}
            return Candidate(model_path=path, kept=names, description="int8 static QDQ PTQ", reasons=reasons)

        candidate, kept, attempts, met = qc.search_budget(
            quantize=quantize,
            evaluate=eval_fn,
            rank=lambda path: sensitive_layers(prepared, path, calibration),
            fp32_accuracy=fp32_accuracy,
            max_drop=max_drop,
            max_ignored=max_ignored,
            work_dir=Path(work),
            log=log,
        )
        qc.keep_only(candidate.model_path.parent, out_dir)
    budget = {
        "fp32_accuracy": fp32_accuracy,
        "max_drop": max_drop,
        "max_ignored": max_ignored,
        "met_budget": met,
        "attempts": attempts,
        "kept_in_float": kept,
    }
    step = qc.step_record(STEP_NAME, config, calibration, TOOLS, time.perf_counter() - started, {"budget": budget})
    return QuantResult(
        model_path=out_dir / MODEL_FILE,
        precision=Precision.INT8,
        kept_in_float=kept,
        attempts=attempts,
        met_budget=met,
        step=step,
    )


def predictor(model_onnx: Path) -> qc.Predict:
    """``predict(batch) -> first output`` for an ONNX model on ORT's CPU provider.

    Raises:
        ConversionError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    model_onnx = Path(model_onnx)
    try:
        session = ort.InferenceSession(str(model_onnx), providers=[_CPU])
    except Exception as e:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
        raise qc.library_error(STEP_NAME, model_onnx, "loading it in onnxruntime", e, _FIX) from e
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else None

    def predict(tensors: np.ndarray) -> np.ndarray:
        step = batch or len(tensors)
        parts = [session.run(None, {feed.name: tensors[i : i + step]})[0] for i in range(0, len(tensors), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return predict


class _Reader:
    """ORT's CalibrationDataReader over the calibration tensors, one sample per batch.

    ORT accepts any object with ``get_next`` (its ABC has a ``__subclasshook__``), so
    onnxruntime need not be imported to define it.
    """

    def __init__(self, name: str, tensors: np.ndarray) -> None:
        self._name = name
        self._tensors = tensors
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._tensors):
            return None
        self._next += 1
        return {self._name: self._tensors[self._next - 1 : self._next]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._tensors)


def _quantize(
    prepared: Path, fp32_model: Any, spec: TensorSpec, config: ONNXQuantConfig, out_dir: Path, calibration: CalibrationSet
) -> Path:
    import onnx
    from onnxruntime import quantization as q

    known = {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    unknown = [n for n in config.nodes_to_exclude if n not in known]
    if unknown:
        layers = sorted(n.name for n in fp32_model.graph.node if n.op_type in LAYER_TYPES)
        raise ConfigError(
            f"{STEP_NAME}: nodes_to_exclude {unknown} are not nodes of the pre-processed model; use names "
            f"from sensitive_layers(), e.g. {layers[:8]}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    reader = _Reader(spec.name, calibration.tensors)
    try:
        q.quantize_static(
            str(prepared),
            str(path),
            reader,
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types_to_quantize) if config.op_types_to_quantize else None,
            per_channel=config.per_channel,
            activation_type=getattr(q.QuantType, config.activation_type),
            weight_type=getattr(q.QuantType, config.weight_type),
            nodes_to_exclude=list(config.nodes_to_exclude),
            calibrate_method=getattr(q.CalibrationMethod, config.calibrate_method),
            reduce_range=config.reduce_range,
        )
        quantized = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - ORT's quantizer raises ValueError, RuntimeError, ORT Fail...
        raise qc.library_error(STEP_NAME, prepared, "onnxruntime.quantization.quantize_static", e, _FIX) from e
    # quantize_static keeps metadata_props today; the bundle's embedded metadata must not depend on that.
    props = {p.key: p.value for p in quantized.metadata_props}
    missing = {p.key: p.value for p in fp32_model.metadata_props if props.get(p.key) != p.value}
    if missing:
        onnx.helper.set_model_props(quantized, {**props, **missing})
        onnx.save(quantized, str(path))
    return path


def _pre_process(fp32_onnx: Path, path: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(fp32_onnx), str(path))
    except Exception as e:  # noqa: BLE001 - shape inference and the optimizer raise many types
        raise qc.library_error(STEP_NAME, fp32_onnx, "quant_pre_process (shape inference / optimization)", e, _FIX) from e
    return path


def _load(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ConversionError(f"{STEP_NAME}: {path} does not exist; export the fp32 ONNX model first")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
        raise qc.library_error(STEP_NAME, path, "reading the ONNX model", e, "re-export it; the file is corrupted") from e


def _input_spec(model: Any, where: str) -> TensorSpec:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{where}: the model has {len(inputs)} inputs; calibration sets feed one image input")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
    return TensorSpec(name=inputs[0].name, shape=shape, dtype="float32")


def _is_quantized(node: Any, producer: dict[str, Any]) -> bool:
    return any(getattr(producer.get(name), "op_type", None) == "DequantizeLinear" for name in node.input[1:])


def _activation_input(node: Any, producer: dict[str, Any]) -> int:
    """The input carrying activations: the first one that is not dequantized weights."""
    for index, name in enumerate(node.input[:2]):
        if not _is_weight(name, producer):
            return index
    return 0


def _is_weight(name: str, producer: dict[str, Any]) -> bool:
    """Whether a tensor is an initializer dequantized by DequantizeLinear (ORT stores int8 weights so)."""
    dequantize = producer.get(name)
    return dequantize is not None and dequantize.op_type == "DequantizeLinear" and dequantize.input[0] not in producer


def _float_source(name: str, producer: dict[str, Any]) -> str:
    """The float tensor an input was quantized from (tensor -> Q -> DQ -> node), or the input."""
    dequantize = producer.get(name)
    if dequantize is None or dequantize.op_type != "DequantizeLinear":
        return name
    quantize = producer.get(dequantize.input[0])
    return quantize.input[0] if quantize is not None and quantize.op_type == "QuantizeLinear" else name


def _activation(values: np.ndarray, ref_node: Any | None, initializers: dict[str, Any]) -> np.ndarray:
    """A quantizer's float input with the activation ORT folded into the quantizer reapplied.

    The QDQ quantizer removes a Relu or Clip after a Conv and lets the QuantizeLinear range clip
    instead, so the tensor before Q is pre-activation; without this, the Relu itself would count
    as quantization noise.
    """
    import onnx

    if ref_node is None or ref_node.op_type not in ("Relu", "Clip"):
        return values
    if ref_node.op_type == "Relu":
        return np.maximum(values, 0.0)
    bounds = [
        float(onnx.numpy_helper.to_array(initializers[name])) if name in initializers else None
        for name in list(ref_node.input[1:3]) + [None] * (3 - len(ref_node.input))
    ]
    for attribute in ref_node.attribute:  # opset < 11 keeps the bounds as attributes
        if attribute.name in ("min", "max"):
            bounds[0 if attribute.name == "min" else 1] = attribute.f
    return np.clip(values, bounds[0], bounds[1]) if bounds[0] is not None or bounds[1] is not None else values


def _dequantized(name: str, consumers: dict[str, list[Any]]) -> str:
    """The node output as its consumers see it: after its Q -> DQ pair when it has one.

    ORT's QDQ quantizer drops a Relu after a Conv and lets the output QuantizeLinear clip
    instead, so only the dequantized tensor compares with the fp32 (post-Relu) one.
    """
    for quantize in consumers.get(name, []):
        if quantize.op_type == "QuantizeLinear":
            for dequantize in consumers.get(quantize.output[0], []):
                if dequantize.op_type == "DequantizeLinear":
                    return dequantize.output[0]
    return name


def _outputs(
    model: Any, input_name: str, names: list[str], batch: np.ndarray, where: str, *, once: bool = False
) -> dict[str, np.ndarray]:
    """Values of the named tensors for ``batch`` (its first model-sized chunk when ``once``),
    made graph outputs of a copy of ``model``."""
    import onnx
    import onnxruntime as ort

    wanted = list(dict.fromkeys(names))
    if not wanted:
        return {}
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in wanted:
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    try:
        session = ort.InferenceSession(augmented.SerializeToString(), providers=[_CPU])
        feed = session.get_inputs()[0]
        step = feed.shape[0] if isinstance(feed.shape[0], int) else len(batch)
        starts = [0] if once else range(0, len(batch), step)
        runs = [session.run(wanted, {input_name: batch[i : i + step]}) for i in starts]
    except Exception as e:  # noqa: BLE001
        raise qc.library_error(STEP_NAME, where, "running the model with per-node outputs", e, _FIX) from e
    return {name: np.concatenate([np.asarray(r[k], np.float32) for r in runs]) for k, name in enumerate(wanted)}
