"""ONNX Runtime's :attr:`sdk.runtime.Capability.LAYER_OUTPUTS`: every activation of a graph, for
localising a parity failure (``sdk.qa.localize`` reaches it through the adapter table)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from runtimes._common import load_failed, require_file
from sdk.errors import InferenceError
from sdk.runtime import LayerOutput

_NAME = "onnxruntime"
_CPU = "CPUExecutionProvider"
_NOT_LAYERS = frozenset({"QuantizeLinear", "DequantizeLinear", "Shape", "Constant", "Cast"})
_FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def layer_outputs(model_path: Path, feed: Mapping[str, np.ndarray]) -> list[LayerOutput]:
    """Every float activation of the graph on ``feed``: (tensor name, op type, value), in graph order.

    For localising a parity failure: the model's node outputs are added as graph outputs and
    it runs on the CPU provider. Q/DQ plumbing and weight-only subgraphs are left out.

    Raises:
        InferenceError: the model cannot be read or run on ``feed``.
    """
    import onnx

    require_file(Path(model_path), _NAME)
    try:
        model = onnx.load(str(model_path))
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:
        raise load_failed(Path(model_path), _NAME, e) from e
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    constant = {t.name for t in model.graph.initializer}
    existing = {o.name for o in model.graph.output}
    layers = []
    for node in model.graph.node:
        if all(i in constant for i in node.input if i):
            constant.update(node.output)  # weight-side (e.g. DequantizeLinear of int8 weights)
            continue
        if node.op_type in _NOT_LAYERS or not node.output:
            continue
        name = node.output[0]
        if types.get(name) not in _FLOAT_TYPES:
            continue
        layers.append((name, node.op_type))
        if name not in existing:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=[_CPU])
        values = session.run([n for n, _ in layers], dict(feed))
    except Exception as e:
        raise InferenceError(f"{_NAME}: {model_path} failed on the localisation inputs: {e}") from e
    return [(name, kind, np.asarray(v)) for (name, kind), v in zip(layers, values, strict=True)]
