"""OpenVINO's :attr:`sdk.runtime.Capability.LAYER_OUTPUTS`: every activation of an IR, for
localising a parity failure (``sdk.qa.localize`` reaches it through the adapter table)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtimes._openvino_core import NAME, compile_model, core, read
from sdk.errors import InferenceError
from sdk.runtime import LayerOutput

# Ops that carry no activation of their own: plumbing, and the weight-side decompression
# subgraphs of fp16/int8 IRs (caught below as ops fed by constants only).
_NOT_LAYERS = frozenset({"Parameter", "Result", "Constant", "Convert", "FakeQuantize", "ShapeOf"})


def layer_outputs(model_path: Path, feed: Mapping[str, np.ndarray]) -> list[LayerOutput]:
    """Every activation of the IR on ``feed``: (name, op type, value), in topological order.

    The IR is compiled on CPU with every layer's output added as a model output and f32
    inference precision, so values compare with an fp32 model's.

    Raises:
        InferenceError: the IR cannot be read, compiled or run on ``feed``.
    """
    model = read(Path(model_path))
    weight_side: set[str] = set()
    layers = []
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        sources = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if kind == "Constant" or (sources and all(s.get_friendly_name() in weight_side for s in sources)):
            weight_side.add(name)
            continue
        if kind in _NOT_LAYERS or op.get_output_size() != 1 or not op.get_output_element_type(0).is_real():
            continue
        layers.append(op)
    model.add_outputs([op.output(0) for op in layers])
    compiled = compile_model(core(), model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}, Path(model_path))
    try:
        results = compiled(dict(feed))
    except RuntimeError as e:
        raise InferenceError(f"{NAME}: {model_path} failed on the localisation inputs: {e}") from e
    values: dict[str, np.ndarray] = {}
    for port in compiled.outputs:
        node = port.get_node()
        if node.get_type_name() == "Result":
            node = node.input_value(0).get_node()
        values.setdefault(node.get_friendly_name(), np.asarray(results[port]))
    # Named by the output tensor where the model has tensor names (ONNX): an optimizer that fuses
    # BatchNorm into a convolution keeps the node's name but gives it the fused tensor's name.
    return [
        (
            min(op.output(0).get_names(), default=op.get_friendly_name()),
            op.get_type_name(),
            values[op.get_friendly_name()],
        )
        for op in layers
        if op.get_friendly_name() in values
    ]
