"""Step: SavedModel -> LiteRT flatbuffer (``model.tflite``), fp32, builtin ops only."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from converters.export.source import SIGNATURE, SourceModel
from converters.export.steps import ExportStep, conversion_error
from sdk.enums import ModelFormat, Precision

MODEL_FILE = "model.tflite"


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteExportConfig:
    """fp32 for now; the quantize step reuses this converter for int8 and fp16."""

    precision: Precision = Precision.FP32


def run(source: SourceModel, config: TFLiteExportConfig, out_dir: Path) -> Path:
    """Convert ``source``'s SavedModel with ``tf.lite.TFLiteConverter`` (no optimizations).

    Only builtin ops are allowed: Select-TF ops need the Flex delegate, which LiteRT on the
    edge devices does not ship.

    Returns:
        ``out_dir/model.tflite``.

    Raises:
        ConfigError: the source or config is not accepted (see ``STEP``).
        ConversionError: the converter failed, naming the op and Keras layer when it says which.
    """
    STEP.check(source, config)
    import tensorflow as tf

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(source.saved_model_dir), signature_keys=[SIGNATURE])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    except Exception as e:  # the converter raises ConverterError, ValueError, ...
        raise conversion_error(
            STEP.name,
            source,
            e,
            fix="replace the layer with TensorFlow ops LiteRT supports, or drop 'tflite' from formats",
        ) from e
    path = out_dir / MODEL_FILE
    path.write_bytes(flatbuffer)
    return path


STEP = ExportStep(
    name="export_tflite",
    format=ModelFormat.TFLITE,
    precisions=frozenset({Precision.FP32}),
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    needs_saved_model=True,
    tools=("tensorflow-cpu", "tensorflow", "keras"),
    config_type=TFLiteExportConfig,
    run=run,
)
