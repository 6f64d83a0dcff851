"""Step: SavedModel -> ONNX (``model.onnx``) with tf2onnx, fp32, dynamic batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from converters.export.source import SIGNATURE, SourceModel
from converters.export.steps import METADATA_PREFIX, ExportStep, ModelMetadata, conversion_error
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError

MODEL_FILE = "model.onnx"
BATCH_DIM = "batch"
# Below 13, ONNX lacks per-axis QuantizeLinear, which the quantize step will need.
MIN_OPSET = 13
DEFAULT_OPSET = 17


@dataclasses.dataclass(frozen=True, kw_only=True)
class ONNXExportConfig:
    """``metadata`` is embedded as the model's ``metadata_props`` (``shelfedge.<key>``)."""

    precision: Precision = Precision.FP32
    opset: int = DEFAULT_OPSET
    metadata: ModelMetadata | None = None

    def __post_init__(self) -> None:
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise ConfigError(f"ONNXExportConfig.opset must be an integer >= {MIN_OPSET}, got {self.opset!r}")


def run(source: SourceModel, config: ONNXExportConfig, out_dir: Path) -> Path:
    """Convert ``source``'s SavedModel with tf2onnx and write ``model.onnx``.

    tf2onnx does not fail on an op it cannot map: it leaves the TensorFlow op in the graph
    and logs an error. Such a graph is refused here, so no unloadable model is packaged.

    Returns:
        ``out_dir/model.onnx``; its batch dimension is the symbolic ``batch``.

    Raises:
        ConfigError: the source or config is not accepted, or the opset is newer than the
            installed tf2onnx knows.
        ConversionError: tf2onnx failed or left unconvertible ops, naming op, layer and node.
    """
    STEP.check(source, config)
    import onnx
    import tf2onnx
    from tf2onnx import tf_loader

    max_opset = max(tf2onnx.constants.OPSET_TO_IR_VERSION)
    if config.opset > max_opset:
        raise ConfigError(
            f"{STEP.name}: opset {config.opset} is newer than tf2onnx {tf2onnx.__version__} supports "
            f"(up to {max_opset}); lower ONNXExportConfig.opset"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fix = "replace the layer with ops tf2onnx can map to ONNX, or drop 'onnx' from formats"
    try:
        graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
            str(source.saved_model_dir),
            None,
            None,
            tag=["serve"],
            signatures=[SIGNATURE],
            return_tensors_to_rename=True,
        )
        model, _ = tf2onnx.convert.from_graph_def(
            graph_def,
            input_names=inputs,
            output_names=outputs,
            tensors_to_rename=renames,
            opset=config.opset,
        )
    except Exception as e:  # tf2onnx raises ValueError, KeyError, RuntimeError, ...
        raise conversion_error(STEP.name, source, e, fix=fix) from e
    left = [n for n in model.graph.node if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise conversion_error(
            STEP.name,
            source,
            e,
            fix=fix,
            ops=[n.op_type for n in left],
            nodes=[n.name for n in left],
        ) from e
    _name_batch_dim(model)
    if config.metadata is not None:
        onnx.helper.set_model_props(
            model, {f"{METADATA_PREFIX}.{k}": v for k, v in config.metadata.as_properties().items()}
        )
    path = out_dir / MODEL_FILE
    onnx.save(model, str(path))
    return path


def _name_batch_dim(model: Any) -> None:
    """Rename tf2onnx's generated batch dim (``unk__12``) to ``batch`` wherever it appears."""
    generated = set()
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            generated.add(dims[0].dim_param)
    for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in generated:
                dim.dim_param = BATCH_DIM


STEP = ExportStep(
    name="export_onnx",
    format=ModelFormat.ONNX,
    precisions=frozenset({Precision.FP32}),
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    needs_saved_model=True,
    tools=("tf2onnx", "onnx", "tensorflow-cpu", "tensorflow"),
    config_type=ONNXExportConfig,
    run=run,
)
