"""ONNX as a source model: read an ``.onnx`` file as a lineage root, convert it to OpenVINO IR.

An ONNX model needs no export: ``quantize_onnx`` takes it as it is (ONNX -> ORT int8), and
``onnx_to_openvino`` converts it to an fp32 IR for ``quantize_openvino`` (ONNX -> OpenVINO).
The shelfedge metadata in its ``metadata_props`` (``shelfedge.<key>``) moves into the IR's
rt_info under ``shelfedge``, where the Keras export path puts it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from converters.export.source import SourceModel
from converters.export.steps import METADATA_PREFIX, library_error, no_telemetry
from sdk.bundle import sha256_file
from sdk.enums import ModelFormat
from sdk.errors import ConversionError
from sdk.manifest import Step
from sdk.tensors import TensorSpec
from sdk.versions import tool_versions

STEP_NAME = "onnx_to_openvino"
TOOLS = ("openvino", "onnx")
MODEL_FILE = "model.xml"
_FIX = "re-export the ONNX model (the file is missing, truncated or not ONNX)"


def load_onnx_source(onnx_path: str | Path) -> SourceModel:
    """Describe an ``.onnx`` file as the lineage root of the bundles made from it.

    Raises:
        ConversionError: the file is missing, not a valid ONNX model, or has an input or output
            whose type shelfedge does not handle; the message names the file.
    """
    path = Path(onnx_path)
    model = _check(path)
    try:
        inputs = _specs(model.graph.input, {t.name for t in model.graph.initializer})
        outputs = _specs(model.graph.output, set())
    except (TypeError, ValueError, KeyError) as e:
        raise ConversionError(f"source {path}: unsupported ONNX input or output: {e}") from e
    return SourceModel(
        kind=ModelFormat.ONNX,
        path=path,
        sha256=sha256_file(path),
        description=str(path),
        inputs=inputs,
        outputs=outputs,
        saved_model_dir=None,
    )


def onnx_to_openvino(onnx_path: str | Path, out_dir: str | Path) -> Path:
    """Convert an fp32 ``.onnx`` to ``out_dir/model.xml`` (+ ``.bin``), weights kept fp32.

    Returns:
        The IR; its rt_info carries the ONNX model's ``shelfedge.*`` metadata under ``shelfedge``.

    Raises:
        ConversionError: the file is missing or corrupted, or OpenVINO cannot convert or save it;
            the message names the file and the cause is chained.
    """
    path, out_dir = Path(onnx_path), Path(out_dir)
    model = _check(path)
    metadata = {
        p.key[len(METADATA_PREFIX) + 1 :]: p.value
        for p in model.metadata_props
        if p.key.startswith(f"{METADATA_PREFIX}.")
    }
    with no_telemetry():
        import openvino as ov

        try:
            converted = ov.convert_model(str(path))
            for key, value in metadata.items():
                converted.set_rt_info(value, [METADATA_PREFIX, key])
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / MODEL_FILE
            # compress_to_fp16 off: halving the weights is a precision change the manifest would not record.
            ov.save_model(converted, str(target), compress_to_fp16=False)
        except Exception as e:  # OpenVINO raises OpConversionFailure, RuntimeError, ...
            raise library_error(
                STEP_NAME, path, "openvino.convert_model", e, "replace the ops OpenVINO's ONNX frontend lacks"
            ) from e
    return target


def onnx_to_openvino_step(onnx_path: str | Path, out_dir: str | Path) -> tuple[Path, Step]:
    """``onnx_to_openvino`` with its lineage record.

    Raises:
        ConversionError: see ``onnx_to_openvino``.
    """
    started = time.perf_counter()
    target = onnx_to_openvino(onnx_path, out_dir)
    record = Step(
        name=STEP_NAME,
        config={"compress_to_fp16": False, "source": str(onnx_path)},
        tool_versions=tool_versions(TOOLS),
        seconds=round(time.perf_counter() - started, 3),
    )
    return target, record


def _check(path: Path) -> Any:
    """Load and validate the file, or say which file is wrong."""
    import onnx

    if not path.is_file():
        raise ConversionError(f"source {path}: no such ONNX file; {_FIX}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # protobuf DecodeError, ValidationError, OSError...
        raise ConversionError(f"source {path}: not a valid ONNX model ({type(e).__name__}: {e}); {_FIX}") from e
    return model


def _specs(values: Any, skip: set[str]) -> tuple[TensorSpec, ...]:
    import onnx

    specs = []
    for value in values:
        if value.name in skip:
            continue
        tensor = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs.append(TensorSpec(name=value.name, shape=dims, dtype=dtype))
    if not specs:
        raise ValueError("the graph declares no tensors here")
    return tuple(specs)
