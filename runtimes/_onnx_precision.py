"""ONNX Runtime adapter plumbing: the precision a model computes in, read from its graph.

Private to ``runtimes``; imports ``onnx`` only when called, and runs without it (input dtypes then).
"""

from __future__ import annotations

from pathlib import Path

from sdk.enums import Precision
from sdk.tensors import TensorSpec


def graph_precision(model_path: Path, inputs: list[TensorSpec], content: bytes | None = None) -> tuple[Precision, str]:
    """(precision, where it was read from): the graph's ops when onnx imports, else the input dtypes.

    ``content``: the model's bytes (a decrypted bundle's) to read instead of ``model_path``.
    """
    try:
        import onnx
    except ImportError:
        dtypes, source = {s.dtype for s in inputs}, "input dtypes (onnx not installed)"
        if dtypes & {"int8", "uint8"}:
            return Precision.INT8, source
        return (Precision.FP16 if "float16" in dtypes else Precision.FP32), source
    if content is not None:
        model = onnx.load_model_from_string(content)
    else:
        model = onnx.load(str(model_path), load_external_data=False)
    ops = {node.op_type for node in model.graph.node}
    if ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"}:
        return Precision.DYNAMIC_INT8, "graph ops"
    if ops & {"QuantizeLinear", "DequantizeLinear"} or any(op.startswith("QLinear") for op in ops):
        return Precision.INT8, "graph ops"
    fp16 = onnx.TensorProto.FLOAT16
    if any(t.data_type == fp16 for t in model.graph.initializer) or any(
        i.type.tensor_type.elem_type == fp16 for i in model.graph.input
    ):
        return Precision.FP16, "graph initializers"
    return Precision.FP32, "graph ops"
