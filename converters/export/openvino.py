"""Step: SavedModel -> OpenVINO IR (``model.xml`` + ``model.bin``), fp32 weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from converters.export.source import SourceModel
from converters.export.steps import METADATA_PREFIX, ExportStep, ModelMetadata, conversion_error, no_telemetry
from sdk.enums import ModelFormat, Precision

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenVINOExportConfig:
    """``metadata`` is embedded in the IR's rt_info under ``shelfedge``."""

    precision: Precision = Precision.FP32
    metadata: ModelMetadata | None = None


def run(source: SourceModel, config: OpenVINOExportConfig, out_dir: Path) -> Path:
    """Convert ``source``'s SavedModel with ``openvino.convert_model`` and save the IR.

    ``compress_to_fp16`` is off: OpenVINO's default halves the weights, which is a
    precision change the manifest would not record.

    Returns:
        ``out_dir/model.xml`` (``model.bin`` beside it).

    Raises:
        ConfigError: the source or config is not accepted (see ``STEP``).
        ConversionError: conversion or saving failed, naming the op and Keras layer when known.
    """
    STEP.check(source, config)
    import openvino as ov

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    try:
        with no_telemetry():
            model = ov.convert_model(str(source.saved_model_dir))
        # OpenVINO records the path it converted: a temporary work dir. Name the real source.
        if model.has_rt_info(["conversion_parameters", "input_model"]):
            model.set_rt_info(source.description, ["conversion_parameters", "input_model"])
        if config.metadata is not None:
            for key, value in config.metadata.as_properties().items():
                model.set_rt_info(value, [METADATA_PREFIX, key])
        ov.save_model(model, str(path), compress_to_fp16=False)
    except Exception as e:  # OpenVINO raises OpConversionFailure, RuntimeError, ...
        raise conversion_error(
            STEP.name,
            source,
            e,
            fix="replace the layer with ops OpenVINO's TensorFlow frontend supports, or drop 'openvino' from formats",
        ) from e
    return path


STEP = ExportStep(
    name="export_openvino",
    format=ModelFormat.OPENVINO,
    precisions=frozenset({Precision.FP32}),
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    needs_saved_model=True,
    tools=("openvino", "tensorflow-cpu", "tensorflow"),
    config_type=OpenVINOExportConfig,
    run=run,
)
