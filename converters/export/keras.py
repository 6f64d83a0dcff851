"""Step: the Keras reference bundle's model (``model.keras``), run by the TensorFlow adapter."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from converters.export.source import SourceModel
from converters.export.steps import ExportStep
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConversionError

MODEL_FILE = "model.keras"


@dataclasses.dataclass(frozen=True, kw_only=True)
class KerasExportConfig:
    """The reference is the server model as trained: always fp32."""

    precision: Precision = Precision.FP32


def run(source: SourceModel, config: KerasExportConfig, out_dir: Path) -> Path:
    """Copy the source ``.keras`` file; the reference must be byte-identical to the source.

    Returns:
        ``out_dir/model.keras``.

    Raises:
        ConfigError: the source is a SavedModel (there is no .keras file to copy).
        ConversionError: the copy failed.
    """
    STEP.check(source, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    try:
        shutil.copyfile(source.path, path)
    except OSError as e:
        raise ConversionError(f"{STEP.name}: cannot copy {source.path} to {path}: {e}") from e
    return path


STEP = ExportStep(
    name="export_keras",
    format=ModelFormat.KERAS,
    precisions=frozenset({Precision.FP32}),
    source_kinds=frozenset({ModelFormat.KERAS}),
    needs_saved_model=False,
    tools=("keras",),
    config_type=KerasExportConfig,
    run=run,
)
