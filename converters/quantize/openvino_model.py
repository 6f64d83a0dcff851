"""The OpenVINO IRs a quantize step reads: reading, the image input, metadata, running them on the CPU.

Shared by the quantizer (``converters.quantize.openvino``), its NNCF calls
(``converters.quantize.openvino_nncf``) and its sensitivity analysis
(``converters.quantize.openvino_sensitivity``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import METADATA_PREFIX, library_error, no_telemetry
from converters.quantize.common import Predict
from sdk.errors import ConfigError, ConversionError
from sdk.tensors import TensorSpec

STEP_NAME = "quantize_openvino"
TOOLS = ("openvino", "nncf")
MODEL_FILE = "model.xml"
# Ops whose weights NNCF quantizes (weightless quantized ops are ranked too).
LAYER_TYPES = frozenset({"Convolution", "GroupConvolution", "MatMul"})
FIX = "check that the IR is an fp32 model exported by shelfedge and that openvino and nncf are installed"


def predictor(model_xml: Path) -> Predict:
    """``predict(batch) -> first output`` for an IR on the CPU in f32 (how the adapter runs it).

    Raises:
        ConversionError: the IR cannot be read or compiled.
    """
    model_xml = Path(model_xml)
    with no_telemetry():
        model = read_model(model_xml)
        try:
            compiled = core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            raise library_error(STEP_NAME, model_xml, "compiling for the CPU", e, FIX) from e
    batch = static_batch(model)

    def predict(tensors: np.ndarray) -> np.ndarray:
        step = batch or len(tensors)
        parts = [compiled(tensors[i : i + step])[0] for i in range(0, len(tensors), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return predict


@functools.lru_cache(maxsize=1)
def core() -> Any:
    import openvino as ov

    # One Core per process: it owns the device plugins, costly to load twice.
    return ov.Core()


def read_model(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"{STEP_NAME}: {path} does not exist; export the fp32 OpenVINO IR first")
    try:
        return core().read_model(str(path))
    except Exception as e:  # the library raises its own types, RuntimeError, ...
        raise library_error(
            STEP_NAME, path, "reading the IR", e, "re-export it; the .xml/.bin pair is corrupted"
        ) from e


def input_spec(model: Any, where: str) -> TensorSpec:
    if len(model.inputs) != 1:
        raise ConfigError(f"{where}: the model has {len(model.inputs)} inputs; calibration sets feed one input")
    port = model.inputs[0]
    shape = port.get_partial_shape()
    dims = () if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else -1 for d in shape)
    # float32 for an image model, int32 for a recommendation encoder's item ids.
    dtype = np.dtype(port.get_element_type().to_dtype()).name
    return TensorSpec(name=port.get_any_name(), shape=dims, dtype=dtype)


def static_batch(model: Any) -> int | None:
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or not shape[0].is_static:
        return None
    return shape[0].get_length()


def read_metadata(model: Any) -> dict[str, str]:
    if not model.has_rt_info([METADATA_PREFIX]):
        return {}
    keys = model.get_rt_info()[METADATA_PREFIX]
    return {key: model.get_rt_info([METADATA_PREFIX, key]).astype(str) for key in keys}


def restore_metadata(model: Any, metadata: dict[str, str]) -> None:
    # NNCF keeps rt_info today; the bundle's embedded metadata must not depend on that.
    for key, value in metadata.items():
        if not model.has_rt_info([METADATA_PREFIX, key]):
            model.set_rt_info(value, [METADATA_PREFIX, key])


def dedupe_friendly_names(model: Any) -> set[str]:
    """Rename duplicate friendly names exactly as NNCF does before quantizing (``name`` + "0"),
    so names read here are the names NNCF's IgnoredScope and its output use."""
    names: set[str] = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in names:
            name += "0"
            op.set_friendly_name(name)
        names.add(name)
    return names


def layer_names(model: Any) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in LAYER_TYPES}
