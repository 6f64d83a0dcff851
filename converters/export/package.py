"""Step: turn a converted model file into a bundle (model file(s), labels.txt, manifest.json).

The tensor specs come from the model file itself, read through the runtime adapter that will
run it (``sdk.runtime.describe_model``), never from what the converter meant to write.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converters.export.source import SourceModel
from converters.export.steps import ModelMetadata
from sdk.bundle import Bundle, write_bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, Layout, ModelFormat, Precision, Task
from sdk.errors import ConfigError, ConversionError, InferenceError
from sdk.manifest import MANIFEST_NAME, KeptInFloat, Manifest, Provenance, Step
from sdk.runtime import describe_model
from sdk.tensors import TensorSpec
from sdk.unknown_spec import EMBEDDING_OUTPUT
from sdk.versions import tool_versions

LABELS_FILE = "labels.txt"
# Files that travel with a model file, by format (same stem, other suffix). Explicit: OpenVINO's
# reader finds the weights by replacing .xml with .bin.
COMPANIONS: dict[ModelFormat, tuple[str, ...]] = {ModelFormat.OPENVINO: (".bin",)}
IMAGE_TASKS = frozenset({Task.IMAGE_CLASSIFICATION, Task.IMAGE_EMBEDDING})


def bundle_dir_name(name: str, format: ModelFormat, precision: Precision) -> str:
    """``<name>-<format>-<precision>``: the directory name of a bundle."""
    return f"{name}-{format.value}-{precision.value}"


def check_bundle_target(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write over something that is not a bundle, or over a bundle unless asked.

    Raises:
        ConfigError: ``out_dir`` is a file, a non-empty directory without a manifest, or a
            bundle while ``overwrite`` is false.
    """
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is a file; choose another output directory")
    if (out_dir / MANIFEST_NAME).is_file():
        if not overwrite:
            raise ConfigError(f"{out_dir}: already holds a bundle; remove it or pass overwrite=True")
        return
    if any(out_dir.iterdir()):
        # Only a directory holding a manifest is ever deleted: never someone else's files.
        raise ConfigError(f"{out_dir}: exists, is not empty and is not a bundle; choose another directory")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PackageSpec:
    """What a bundle holds: its name, the model file's format and precision, how the model is used.

    Immutable: safe to share across threads.

    Attributes:
        name: the bundle's name.
        format, precision: what the model file is.
        metadata: task, output kind, preprocessing and labels (one per output class, in output
            order; they go to ``labels.txt``).
    """

    name: str
    format: ModelFormat
    precision: Precision
    metadata: ModelMetadata

    @classmethod
    def derived(cls, bundle: Bundle, precision: Precision) -> PackageSpec:
        """The spec of a bundle made from ``bundle``'s model at another precision."""
        m = bundle.manifest
        metadata = ModelMetadata(
            task=m.task, output_kind=m.output_kind, preprocessing=m.preprocessing, labels=tuple(bundle.labels)
        )
        return cls(name=m.name, format=m.format, precision=precision, metadata=metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lineage:
    """Where a bundle's model came from. Immutable: safe to share across threads.

    Attributes:
        source: the source model, the root of the lineage.
        steps: every step that led to the model file, in order.
        parent: the bundle this one was derived from (a quantized bundle's fp32 bundle).
        kept_in_float: layers accuracy control left in higher precision, and why.
    """

    source: SourceModel
    steps: tuple[Step, ...]
    parent: str | None = None
    kept_in_float: tuple[KeptInFloat, ...] = ()

    def __post_init__(self) -> None:
        # Callers pass lists; tuples keep the record immutable.
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "kept_in_float", tuple(self.kept_in_float))


def package(
    model_file: Path,
    *,
    out_dir: Path,
    spec: PackageSpec,
    lineage: Lineage,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    move: bool = False,
    overwrite: bool = True,
) -> Bundle:
    """Write a verified bundle directory for ``model_file``.

    The bundle is assembled in a hidden sibling directory and renamed into place, so a
    failure never leaves a half-written ``out_dir``.

    Args:
        model_file: the converted model (OpenVINO: the .xml, with the .bin beside it).
        out_dir: the bundle directory to create.
        spec: name, format, precision and how the model is used.
        lineage: source, steps, parent bundle and layers kept in float.
        metrics: measured results to record, keyed by hardware profile id (or "host").
        move: move the model file(s) instead of copying (for files in a step's work dir).
        overwrite: replace an existing bundle at ``out_dir`` (never a directory that is not one).

    Returns:
        The bundle, reopened from ``out_dir`` with every hash checked.

    Raises:
        ConfigError: ``out_dir`` is taken (see ``check_bundle_target``).
        ConversionError: a model file is missing or the adapter cannot read it.
        BackendUnavailableError: the format's runtime is not installed.
        ManifestError: the labels do not match the model's output.
    """
    model_file, out_dir = Path(model_file), Path(out_dir)
    check_bundle_target(out_dir, overwrite)
    files = [model_file, *(model_file.with_suffix(s) for s in COMPANIONS.get(spec.format, ()))]
    for file in files:
        if not file.is_file():
            raise ConversionError(f"package: {file} does not exist; run the {spec.format.value} export step first")
    staging = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for file in files:
            (shutil.move if move else shutil.copy2)(file, staging / file.name)
        labels = spec.metadata.labels
        if labels:
            (staging / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels), encoding="utf-8")
        write_bundle(staging, _manifest(staging, model_file.name, spec, lineage, metrics))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(out_dir)


def _manifest(
    staging: Path,
    model_name: str,
    spec: PackageSpec,
    lineage: Lineage,
    metrics: Mapping[str, Mapping[str, Any]] | None,
) -> Manifest:
    meta = spec.metadata
    inputs, outputs = _describe(spec.format, staging / model_name, meta.task)
    return Manifest(
        name=spec.name,
        task=meta.task,
        format=spec.format,
        precision=spec.precision,
        model_file=model_name,
        inputs=inputs,
        outputs=outputs,
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
        files={p.name: "" for p in sorted(staging.iterdir())},
        kept_in_float=lineage.kept_in_float,
        metrics=dict(metrics or {}),
    )


def _describe(
    format: ModelFormat, model_file: Path, task: Task
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    runtime = RUNTIMES_FOR_FORMAT[format][0]
    try:
        inputs, outputs = describe_model(runtime, model_file)
    except InferenceError as e:
        raise ConversionError(
            f"package: the {runtime.value} adapter cannot read {model_file.name}: {e}; the export step "
            "wrote a model its runtime cannot load"
        ) from e
    if task in IMAGE_TASKS:
        # Keras image models are channels-last; the adapter only guesses from the shape.
        inputs = [dataclasses.replace(s, layout=Layout.NHWC) if len(s.shape) == 4 else s for s in inputs]
        # A classifier with an embedding output lists its logits first whatever order the format
        # keeps (TFLite sorts by name): readers of one output take outputs[0].
        if task is Task.IMAGE_CLASSIFICATION:
            outputs = sorted(outputs, key=lambda s: s.name == EMBEDDING_OUTPUT)
    return tuple(inputs), tuple(outputs)
