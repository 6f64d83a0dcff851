"""Which ops of an NNCF int8 IR lose most to quantization, and which ops run quantized at all.

``sensitive_layers`` compares each quantized op with the fp32 IR on calibration samples; the
budget search keeps the first ones in float through NNCF's ignored scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import library_error, no_telemetry
from converters.quantize import common as qc
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import LayerSensitivity
from converters.quantize.openvino_model import (
    FIX,
    STEP_NAME,
    core,
    dedupe_friendly_names,
    input_spec,
    read_model,
    static_batch,
)
from sdk.errors import ConfigError

# Layout-only ops NNCF may place between a FakeQuantize and the layer it feeds.
_PASS_THROUGH = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Convert"})
# Ops that only carry quantization (dequantizing weights), never a layer of their own.
_QUANT_PLUMBING = frozenset({"FakeQuantize", "Constant", "Convert", "Multiply", "Subtract", "Parameter", "Result"})
_INT_WEIGHTS = frozenset({"i8", "u8", "i4", "u4"})


def sensitive_layers(
    fp32_xml: Path, int8_xml: Path, calibration: CalibrationSet, samples: int = 32
) -> list[LayerSensitivity]:
    """Rank the int8 model's quantized ops: Convolution / GroupConvolution / MatMul layers and
    the weightless ops NNCF quantizes too (pooling, ReduceMean, Add...), as its accuracy control does.

    Both models run on the first ``samples`` calibration tensors with each layer's output, its
    input quantizer's input and output, and its dequantized weights added as model outputs;
    layers are matched by friendly name (deduplicated as NNCF does, so every name is valid in
    ``ignored_scope``).

    Returns:
        Most sensitive first; ``score`` is the relative error of the layer's own quantization
        (activation input + weights), see ``converters.quantize.common.layer_sensitivity``.

    Raises:
        ConfigError: the calibration set does not fit the model, or ``samples`` < 1.
        ConversionError: a model cannot be read or run.
    """
    fp32_xml, int8_xml = Path(fp32_xml), Path(int8_xml)
    where = f"{STEP_NAME}: sensitivity of {int8_xml}"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{where}: samples must be a positive integer, got {samples!r}")
    with no_telemetry():
        reference, quantized = read_model(fp32_xml), read_model(int8_xml)
        calibration = qc.check_calibration(calibration, input_spec(reference, where), where)
        dedupe_friendly_names(reference)
        names = quantized_layers(quantized)
        by_name = {op.get_friendly_name(): op for op in quantized.get_ops() if op.get_friendly_name() in names}
        pairs = [
            (op, by_name[op.get_friendly_name()])
            for op in reference.get_ordered_ops()
            if op.get_friendly_name() in by_name
            and by_name[op.get_friendly_name()].get_type_name() == op.get_type_name()
        ]
        ref_ports: list[Any] = []
        int8_ports: list[Any] = []
        for ref_op, int8_op in pairs:
            ref_ports.append(ref_op.output(0))
            int8_ports.append(int8_op.output(0))
            quantizer = _input_quantizer(int8_op.input(_activation_input(ref_op)).get_source_output())
            if quantizer is not None:
                int8_ports += [quantizer.input(0).get_source_output(), quantizer.output(0)]
            weights = _weight_input(int8_op)
            if weights is not None:
                ref_ports.append(ref_op.input(weights).get_source_output())
                int8_ports.append(int8_op.input(weights).get_source_output())
        batch = calibration.tensors[:samples]
        ref_values = dict(zip(map(_key, ref_ports), _outputs(reference, ref_ports, batch, where), strict=True))
        int8_values = dict(zip(map(_key, int8_ports), _outputs(quantized, int8_ports, batch, where), strict=True))
    layers = []
    for ref_op, int8_op in pairs:
        output = qc.compare(ref_values[_key(ref_op.output(0))], int8_values[_key(int8_op.output(0))])
        quantizer = _input_quantizer(int8_op.input(_activation_input(ref_op)).get_source_output())
        input_error = 0.0
        if quantizer is not None:
            before = int8_values[_key(quantizer.input(0).get_source_output())]
            input_error = qc.compare(before, int8_values[_key(quantizer.output(0))])["relative_error"]
        weights = _weight_input(int8_op)
        weight_error = 0.0
        if weights is not None:
            weight_error = qc.compare(
                ref_values[_key(ref_op.input(weights).get_source_output())],
                int8_values[_key(int8_op.input(weights).get_source_output())],
            )["relative_error"]
        name, kind = ref_op.get_friendly_name(), ref_op.get_type_name()
        layers.append(qc.layer_sensitivity(name, kind, output, input_error, weight_error))
    return qc.ranked(layers)


def quantized_layers(model: Any) -> set[str]:
    """Friendly names of the ops of an ``ov.Model`` that run quantized (fed by FakeQuantize or
    int8 weights), to see what ignored_scope or accuracy control left in float."""
    return {
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() not in _QUANT_PLUMBING | _PASS_THROUGH and _is_quantized(op)
    }


def _source(output: Any) -> Any:
    """The node an output comes from, walking up layout-only ops."""
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH:
        node = node.input(0).get_source_output().get_node()
    return node


def _is_quantized(op: Any) -> bool:
    for port in op.inputs():
        node = _source(port.get_source_output())
        if node.get_type_name() == "FakeQuantize" or _int_weights(node, depth=4):
            return True
    return False


def _int_weights(node: Any, depth: int) -> bool:
    """Whether ``node`` dequantizes integer weights: Constant(i8/u8) -> Convert -> [Subtract] -> Multiply."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _INT_WEIGHTS
    if depth == 0 or kind not in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
        return False
    return any(_int_weights(p.get_source_output().get_node(), depth - 1) for p in node.inputs())


def _activation_input(op: Any) -> int:
    """The input that carries activations (MatMul may take its weights first)."""
    for i, port in enumerate(op.inputs()):
        if _source(port.get_source_output()).get_type_name() != "Constant":
            return i
    return 0


def _input_quantizer(output: Any) -> Any | None:
    """The FakeQuantize feeding a layer input (through layout-only ops), if there is one."""
    node = _source(output)
    return node if node.get_type_name() == "FakeQuantize" else None


def _weight_input(op: Any) -> int | None:
    """The input whose weights NNCF stored as integers, if any."""
    for i, port in enumerate(op.inputs()):
        if _int_weights(_source(port.get_source_output()), depth=4):
            return i
    return None


def _outputs(model: Any, ports: Sequence[Any], batch: np.ndarray, where: str) -> list[np.ndarray]:
    """Values of ``ports`` (outputs of ``model``'s nodes) for ``batch``, one array each."""
    try:
        model.add_outputs(list(ports))
        # add_outputs reuses an existing Result for a port that already is a model output (and
        # for repeats), so each port is found by the node output its Result reads.
        where_is = {_key(out.get_node().input(0).get_source_output()): j for j, out in enumerate(model.outputs)}
        # With low-precision transformations on, the CPU plugin (2026.4) returns zeros for every
        # Result downstream of an added intermediate output of an int8 graph; without them it
        # runs FakeQuantize as float simulation, which is what a per-layer error needs anyway.
        config = {"INFERENCE_PRECISION_HINT": "f32", "LP_TRANSFORMS_MODE": False}
        compiled = core().compile_model(model, "CPU", config)
        step = static_batch(model) or len(batch)
        runs = [compiled(batch[i : i + step]) for i in range(0, len(batch), step)]
    except Exception as e:  # the library raises its own types, RuntimeError, ...
        raise library_error(STEP_NAME, where, "running the model with per-layer outputs", e, FIX) from e
    values = []
    for port in ports:
        j = where_is[_key(port)]
        values.append(np.concatenate([np.asarray(r[j], np.float32) for r in runs]))
    return values


def _key(output: Any) -> tuple[str, int]:
    return output.get_node().get_name(), output.get_index()
