"""Which nodes of a static int8 ONNX (QDQ) model lose most to quantization.

``sensitive_layers`` compares each quantized Conv / MatMul / Gemm node with the fp32 model on
calibration samples; the budget search keeps the first ones in float through ``nodes_to_exclude``.
Before them come the nodes around an activation whose int8 step is too coarse for its values
(``common.COARSE_METRIC``: a padding mask's ``* 1e9`` in the logits), whatever their op type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converters.quantize import common as qc
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import LayerSensitivity
from converters.quantize.onnx_model import LAYER_TYPES, STEP_NAME, input_spec, load_model, tensor_values
from sdk.errors import ConfigError


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
        Named as ``nodes_to_exclude`` takes them: first the producer and consumers of each
        activation whose step is too coarse (``score``: the share of its values lost, most first;
        see :func:`coarse_nodes`), then the layers most sensitive first, ``score`` the relative
        error of the node's own quantization (see ``converters.quantize.common.layer_sensitivity``).

    Raises:
        ConfigError: the calibration set does not fit the model, or ``samples`` < 1.
        ConversionError: a model cannot be read or run.
    """
    fp32_onnx, int8_onnx = Path(fp32_onnx), Path(int8_onnx)
    where = f"{STEP_NAME}: sensitivity of {int8_onnx}"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{where}: samples must be a positive integer, got {samples!r}")
    reference, quantized = load_model(fp32_onnx), load_model(int8_onnx)
    spec = input_spec(reference, where)
    calibration = qc.check_calibration(calibration, spec, where)
    pairs = _pairs(reference, quantized)
    ref_weights = {t.name: t for t in reference.graph.initializer}
    ref_producer = {o: n for n in reference.graph.node for o in n.output}
    batch = calibration.tensors[:samples]
    ref_values = tensor_values(reference, spec.name, [p["ref_output"] for p in pairs], batch, where)
    names = [n for p in pairs for n in (p["output"], p["input"], p["float_input"])]
    int8_values = tensor_values(quantized, spec.name, names, batch, where)
    # Weights are the same for every batch: one run only, so they keep the initializer's shape.
    weight_values = tensor_values(
        quantized, spec.name, [p["weights"] for p in pairs if p["weights"]], batch, where, once=True
    )
    layers = []
    for p in pairs:
        compared = qc.compare(ref_values[p["ref_output"]], int8_values[p["output"]])
        before = _activation(int8_values[p["float_input"]], ref_producer.get(p["float_input"]), ref_weights)
        input_error = qc.compare(before, int8_values[p["input"]])["relative_error"]
        weight_error = 0.0
        if p["weights"] and weight_values[p["weights"]].size == p["ref_weights"].size:
            weight_error = qc.compare(p["ref_weights"], weight_values[p["weights"]])["relative_error"]
        layers.append(qc.layer_sensitivity(p["node"].name, p["node"].op_type, compared, input_error, weight_error))
    coarse = coarse_nodes(reference, quantized, spec.name, batch, where)
    first = {c.name for c in coarse}
    return [*coarse, *(layer for layer in qc.ranked(layers) if layer.name not in first)]


def coarse_nodes(
    reference: Any, quantized: Any, input_name: str, batch: np.ndarray, where: str
) -> list[LayerSensitivity]:
    """The producer and consumers of every activation whose int8 step is too coarse for its values.

    Each QuantizeLinear of ``quantized`` that reads a float activation of ``reference`` is checked:
    when more than ``common.COARSE_SHARE`` of that activation's nonzero values (on ``batch``) are
    below half its scale, the nodes writing and reading it are returned, most lost first. Keeping
    them in float keeps the tensor in float; the consumers alone would re-quantize it.
    """
    import onnx

    initializers = {t.name: t for t in quantized.graph.initializer}
    producer = {o: n for n in reference.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in reference.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    scales = {
        node.input[0]: float(np.max(onnx.numpy_helper.to_array(initializers[node.input[1]])))
        for node in quantized.graph.node
        if node.op_type == "QuantizeLinear" and node.input[0] in producer and node.input[1] in initializers
    }
    values = tensor_values(reference, input_name, list(scales), batch, where)
    lost = {name: qc.lost_share(values[name], scale) for name, scale in scales.items()}
    records: dict[str, LayerSensitivity] = {}
    for name in sorted((n for n in lost if lost[n] > qc.COARSE_SHARE), key=lambda n: -lost[n]):
        metrics = {qc.COARSE_METRIC: lost[name], "scale": scales[name]}
        for node in (producer[name], *consumers.get(name, [])):
            if node.name and node.name not in records:
                records[node.name] = LayerSensitivity(
                    name=node.name, op=node.op_type, metrics=metrics, score=lost[name]
                )
    return list(records.values())


def _pairs(reference: Any, quantized: Any) -> list[dict[str, Any]]:
    """Each quantized layer of ``quantized`` with the tensors to compare against ``reference``."""
    import onnx

    ref_tensors = {o for n in reference.graph.node for o in n.output} | {i.name for i in reference.graph.input}
    ref_nodes = {n.name: n for n in reference.graph.node}
    ref_weights = {t.name: t for t in reference.graph.initializer}
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
    return pairs


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
