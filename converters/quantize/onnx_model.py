"""The ONNX models a quantize step reads: loading, the image input, running them on ORT's CPU provider.

Shared by the quantizer (``converters.quantize.onnx``) and its sensitivity analysis
(``converters.quantize.onnx_sensitivity``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import library_error
from converters.quantize.common import Predict
from sdk.errors import ConfigError, ConversionError
from sdk.tensors import TensorSpec

STEP_NAME = "quantize_onnx"
TOOLS = ("onnxruntime", "onnx")
MODEL_FILE = "model.onnx"
# Ops with weights: the layers sensitivity ranks and the fallback keeps in float.
LAYER_TYPES = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
CPU_PROVIDER = "CPUExecutionProvider"
FIX = "check that the file is an fp32 ONNX model (opset >= 13) that onnxruntime can run"


def predictor(model_onnx: Path) -> Predict:
    """``predict(batch) -> first output`` for an ONNX model on ORT's CPU provider.

    Raises:
        ConversionError: onnxruntime cannot load the model.
    """
    import onnxruntime as ort

    model_onnx = Path(model_onnx)
    try:
        session = ort.InferenceSession(str(model_onnx), providers=[CPU_PROVIDER])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        raise library_error(STEP_NAME, model_onnx, "loading it in onnxruntime", e, FIX) from e
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else None

    def predict(tensors: np.ndarray) -> np.ndarray:
        step = batch or len(tensors)
        parts = [session.run(None, {feed.name: tensors[i : i + step]})[0] for i in range(0, len(tensors), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return predict


def load_model(path: Path) -> Any:
    import onnx

    if not path.is_file():
        raise ConversionError(f"{STEP_NAME}: {path} does not exist; export the fp32 ONNX model first")
    try:
        return onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise library_error(STEP_NAME, path, "reading the ONNX model", e, "re-export it; the file is corrupted") from e


def input_spec(model: Any, where: str) -> TensorSpec:
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ConfigError(f"{where}: the model has {len(inputs)} inputs; calibration sets feed one input")
    import onnx

    tensor_type = inputs[0].type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim)
    # float32 for an image model, int32 for a recommendation encoder's item ids.
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    return TensorSpec(name=inputs[0].name, shape=shape, dtype=dtype)


def tensor_values(
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
        session = ort.InferenceSession(augmented.SerializeToString(), providers=[CPU_PROVIDER])
        feed = session.get_inputs()[0]
        step = feed.shape[0] if isinstance(feed.shape[0], int) else len(batch)
        starts = [0] if once else range(0, len(batch), step)
        runs = [session.run(wanted, {input_name: batch[i : i + step]}) for i in starts]
    except Exception as e:  # the library raises its own types, RuntimeError, ...
        raise library_error(STEP_NAME, where, "running the model with per-node outputs", e, FIX) from e
    return {name: np.concatenate([np.asarray(r[k], np.float32) for r in runs]) for k, name in enumerate(wanted)}
