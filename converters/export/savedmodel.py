"""Step: the TF SavedModel bundle (``saved_model/``), run by the TensorFlow reference adapter.

A ``.keras`` reference bundle needs the model's custom layers importable wherever it is loaded;
a SavedModel needs nothing but TensorFlow: its ``serving_default`` signature is the traced graph.
The step copies the SavedModel the source machinery already traced
(``converters.export.source.load_source(..., saved_model=True)``).

A bundle lists files, each with its sha256, and a SavedModel is a directory (``saved_model.pb``,
``variables/``, ``fingerprint.pb``, ``assets/``), so :func:`package_saved_model` writes every file
of the tree into the manifest and names ``saved_model/saved_model.pb`` as the model file; the
TensorFlow adapter loads the directory holding it.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converters.export.package import IMAGE_TASKS, LABELS_FILE, Lineage, PackageSpec, check_bundle_target
from converters.export.source import SourceModel
from converters.export.steps import ExportStep
from sdk.bundle import Bundle, write_bundle
from sdk.enums import Layout, ModelFormat, Precision, Runtime
from sdk.errors import ConversionError, InferenceError
from sdk.manifest import Manifest, Provenance
from sdk.runtime import describe_model
from sdk.versions import tool_versions

MODEL_DIR = "saved_model"
PB_FILE = "saved_model.pb"
MODEL_FILE = f"{MODEL_DIR}/{PB_FILE}"

__all__ = ["MODEL_DIR", "MODEL_FILE", "STEP", "SavedModelExportConfig", "package_saved_model", "run"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SavedModelExportConfig:
    """The SavedModel is the source model traced as it is: always fp32."""

    precision: Precision = Precision.FP32


def run(source: SourceModel, config: SavedModelExportConfig, out_dir: Path) -> Path:
    """Copy the source's SavedModel to ``out_dir/saved_model``.

    Returns:
        ``out_dir/saved_model/saved_model.pb`` (the model file the bundle names).

    Raises:
        ConfigError: the source was loaded without a SavedModel (see ``STEP``).
        ConversionError: the copy failed, or the SavedModel has no ``saved_model.pb``.
    """
    STEP.check(source, config)
    assert source.saved_model_dir is not None  # STEP.check refuses a source without one
    target = Path(out_dir) / MODEL_DIR
    try:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source.saved_model_dir, target)
    except OSError as e:
        raise ConversionError(f"{STEP.name}: cannot copy {source.saved_model_dir} to {target}: {e}") from e
    if not (target / PB_FILE).is_file():
        raise ConversionError(
            f"{STEP.name}: {source.saved_model_dir} has no {PB_FILE}; pass a SavedModel written by model.export(dir)"
        )
    return target / PB_FILE


STEP = ExportStep(
    name="copy_savedmodel",
    format=ModelFormat.SAVEDMODEL,
    precisions=frozenset({Precision.FP32}),
    source_kinds=frozenset({ModelFormat.KERAS, ModelFormat.SAVEDMODEL}),
    needs_saved_model=True,
    tools=("tensorflow-cpu", "tensorflow", "keras"),
    config_type=SavedModelExportConfig,
    run=run,
)


def package_saved_model(
    model_file: Path,
    *,
    out_dir: Path,
    spec: PackageSpec,
    lineage: Lineage,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    move: bool = False,
    overwrite: bool = True,
) -> Bundle:
    """``converters.export.package.package`` for a SavedModel: the whole directory of ``model_file``.

    The bundle is assembled in a hidden sibling directory and renamed into place.

    Args:
        model_file: the ``saved_model.pb`` of the SavedModel directory to bundle.
        out_dir, spec, lineage, metrics, move, overwrite: as ``package``.

    Returns:
        The bundle, reopened from ``out_dir`` with every hash checked.

    Raises:
        ConfigError: ``out_dir`` is taken (see ``check_bundle_target``).
        ConversionError: ``model_file`` is not a SavedModel's ``saved_model.pb``, or the
            TensorFlow adapter cannot read the SavedModel.
        BackendUnavailableError: TensorFlow is not installed.
    """
    model_file, out_dir = Path(model_file), Path(out_dir)
    check_bundle_target(out_dir, overwrite)
    if model_file.name != PB_FILE or not model_file.is_file():
        raise ConversionError(
            f"package: {model_file} is not a SavedModel's {PB_FILE}; run the savedmodel export step first"
        )
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        (shutil.move if move else shutil.copytree)(str(model_file.parent), str(staging / MODEL_DIR))
        if spec.metadata.labels:
            (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in spec.metadata.labels), "utf-8")
        write_bundle(staging, _manifest(staging, spec, lineage, metrics))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out_dir)


def _manifest(
    staging: Path, spec: PackageSpec, lineage: Lineage, metrics: Mapping[str, Mapping[str, Any]] | None
) -> Manifest:
    """The manifest of a staged SavedModel bundle: specs read by the TensorFlow adapter, every file listed."""
    try:
        inputs, outputs = describe_model(Runtime.TENSORFLOW, staging / MODEL_FILE)
    except InferenceError as e:
        raise ConversionError(
            f"package: the tensorflow adapter cannot read {MODEL_DIR}/: {e}; the export step wrote a "
            "SavedModel TensorFlow cannot load"
        ) from e
    meta = spec.metadata
    if meta.task in IMAGE_TASKS:
        # Keras image models are channels-last; the adapter only guesses from the shape.
        inputs = [dataclasses.replace(s, layout=Layout.NHWC) if len(s.shape) == 4 else s for s in inputs]
    files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    return Manifest(
        name=spec.name,
        task=meta.task,
        format=spec.format,
        precision=spec.precision,
        model_file=MODEL_FILE,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        output_kind=meta.output_kind,
        preprocessing=meta.preprocessing,
        labels_file=LABELS_FILE if meta.labels else None,
        provenance=Provenance(
            source=lineage.source.description,
            source_sha256=lineage.source.sha256,
            created_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            steps=lineage.steps,
            tool_versions=tool_versions(),
            parent=lineage.parent,
        ),
        # write_bundle hashes every file named here; the values are placeholders.
        files=dict.fromkeys(files, ""),
        kept_in_float=lineage.kept_in_float,
        metrics=dict(metrics or {}),
    )
