"""Plain export: one Keras/SavedModel source -> one fp32 bundle per format.

Every argument is checked against the model before anything is written; then the source is
prepared once (``.keras`` + SavedModel in a work dir under ``out_dir``) and each format step
runs and is packaged into ``out_dir/<name>-<format>-fp32/``.

The recommendation bundles (``converters/export/rec_bundle.py``) drive the same steps with the
public helpers here: :func:`parse_formats`, :func:`step_config`, :func:`package_model` and
:data:`BUNDLE_NAME`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from converters.export import keras as export_keras
from converters.export import onnx as export_onnx
from converters.export import openvino as export_openvino
from converters.export import savedmodel as export_savedmodel
from converters.export import tflite as export_tflite
from converters.export.package import IMAGE_TASKS, Lineage, PackageSpec, bundle_dir_name, check_bundle_target, package
from converters.export.source import OpenedSource, SourceModel, load_source, open_source
from converters.export.steps import ExportStep, ModelMetadata, run_step
from sdk.bundle import Bundle
from sdk.enums import ModelFormat, OutputKind, Task
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing
from sdk.unknown_spec import EMBEDDING_OUTPUT

if TYPE_CHECKING:
    import keras

# The format steps, by format: an explicit table (STYLE.md), in the default export order.
EXPORT_STEPS: dict[ModelFormat, ExportStep] = {
    ModelFormat.TFLITE: export_tflite.STEP,
    ModelFormat.OPENVINO: export_openvino.STEP,
    ModelFormat.ONNX: export_onnx.STEP,
    ModelFormat.KERAS: export_keras.STEP,
    ModelFormat.SAVEDMODEL: export_savedmodel.STEP,
}
# What export() writes unless asked: the SavedModel reference bundle only on request (the
# Keras one is the reference of the image models, whose layers are importable everywhere).
DEFAULT_FORMATS: tuple[str, ...] = tuple(f.value for f in EXPORT_STEPS if f is not ModelFormat.SAVEDMODEL)
# How a bundle's name must look: letters, digits, '.', '_', '-', starting with a letter or digit.
BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Packager(Protocol):
    """``package``'s signature: a step's model file -> a verified bundle directory."""

    def __call__(
        self,
        model_file: Path,
        *,
        out_dir: Path,
        spec: PackageSpec,
        lineage: Lineage,
        metrics: Mapping[str, Mapping[str, Any]] | None = None,
        move: bool = False,
        overwrite: bool = True,
    ) -> Bundle: ...


# How a format's model file becomes a bundle: ``package`` copies a file (and its companions);
# a SavedModel is a directory of files.
PACKAGERS: dict[ModelFormat, Packager] = {ModelFormat.SAVEDMODEL: export_savedmodel.package_saved_model}


def export(
    model: keras.Model | str | os.PathLike,
    *,
    out_dir: Path,
    formats: Iterable[str | ModelFormat] = DEFAULT_FORMATS,
    name: str,
    labels: Sequence[str],
    preprocessing: Preprocessing | None,
    task: Task = Task.IMAGE_CLASSIFICATION,
    output_kind: OutputKind = OutputKind.LOGITS,
    configs: Mapping[ModelFormat, Any] | None = None,
    overwrite: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Bundle]:
    """Export ``model`` to an fp32 bundle per format.

    Args:
        model: a ``keras.Model``, a ``.keras`` file or a SavedModel directory.
        out_dir: where the bundle directories ``<name>-<format>-fp32`` are written.
        formats: any of ``tflite``, ``openvino``, ``onnx``, ``keras`` (the reference bundle;
            it needs a Keras source), ``savedmodel`` (a reference bundle TensorFlow runs without
            the model's custom layer classes); the default leaves out ``savedmodel``.
        name: the bundles' name: letters, digits, ``.``, ``_``, ``-``.
        labels: one label per output class, in output order (empty for embeddings).
        preprocessing: how images become the input tensor; its size must match the model's.
        task, output_kind: recorded in the manifests and the model files' metadata.
        configs: per-format step configs replacing the defaults (e.g. an ONNX opset); a
            config's empty ``metadata`` is filled from the arguments above.
        overwrite: replace bundles already at the target directories (re-running an export
            is the common case; a directory that is not a bundle is never replaced).
        progress: called with one line per stage (``exporting tflite…``).

    Returns:
        The reopened, hash-checked bundles by format, in the order exported.

    Raises:
        ConfigError: an argument is wrong or does not fit the model (unknown format, labels
            count vs output classes, preprocessing size vs input size, target taken); raised
            before anything is written.
        ConversionError: the source cannot be read, or a step failed (the cause is chained).
        BackendUnavailableError: a format's runtime is missing, so its specs cannot be read.
    """
    say = progress or (lambda line: None)
    steps = [EXPORT_STEPS[f] for f in parse_formats(formats)]
    _check_arguments(name, labels, preprocessing, task, output_kind)
    metadata = ModelMetadata(task=task, output_kind=output_kind, preprocessing=preprocessing, labels=tuple(labels))
    step_configs = {s.format: step_config(s, (configs or {}).get(s.format), metadata) for s in steps}
    for step in steps:
        step.check_config(step_configs[step.format])
    out_dir = Path(out_dir)
    specs = {
        s.format: PackageSpec(name=name, format=s.format, precision=step_configs[s.format].precision, metadata=metadata)
        for s in steps
    }
    for spec in specs.values():
        check_bundle_target(out_dir / bundle_dir_name(name, spec.format, spec.precision), overwrite)

    say("reading source…")
    opened = open_source(model)
    for step in steps:
        # load_source below exports a SavedModel whenever a step needs one.
        step.check_source(opened.kind, True, opened.description)
    _check_against_model(opened, labels, preprocessing, task, output_kind)

    out_dir.mkdir(parents=True, exist_ok=True)
    bundles: dict[ModelFormat, Bundle] = {}
    # The work dir lives under out_dir (steps write only there) and goes away at the end.
    with tempfile.TemporaryDirectory(prefix=f".{name}-work-", dir=out_dir) as work:
        say("preparing source…")
        source = load_source(opened, Path(work) / "source", saved_model=any(s.needs_saved_model for s in steps))
        for step in steps:
            say(f"exporting {step.format.value}…")
            bundles[step.format] = _export_one(
                step, source, step_configs[step.format], specs[step.format], out_dir, Path(work), overwrite, say
            )
    return bundles


def _export_one(
    step: ExportStep,
    source: SourceModel,
    config: Any,
    spec: PackageSpec,
    out_dir: Path,
    work: Path,
    overwrite: bool,
    say: Callable[[str], None],
) -> Bundle:
    """Run one format step and package its model as ``out_dir/<name>-<format>-<precision>``."""
    model_file, record = run_step(step, source, config, work / step.format.value)
    bundle = package_model(
        model_file,
        out_dir=out_dir / bundle_dir_name(spec.name, spec.format, spec.precision),
        spec=spec,
        lineage=Lineage(source=source, steps=(*source.lineage(step.needs_saved_model), record)),
        move=True,
        overwrite=overwrite,
    )
    say(f"{step.format.value}: {bundle.path} ({bundle.size_bytes() / 1024:.0f} KiB, {record.seconds:.1f} s)")
    return bundle


def package_model(
    model_file: Path,
    *,
    out_dir: Path,
    spec: PackageSpec,
    lineage: Lineage,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    move: bool = False,
    overwrite: bool = True,
) -> Bundle:
    """Package a format step's model file with the packager of ``spec.format`` (:data:`PACKAGERS`).

    Raises:
        ConfigError, ConversionError, BackendUnavailableError, ManifestError: as
            ``converters.export.package.package``.
    """
    packager = PACKAGERS.get(spec.format, package)
    return packager(
        model_file, out_dir=out_dir, spec=spec, lineage=lineage, metrics=metrics, move=move, overwrite=overwrite
    )


def parse_formats(formats: Iterable[str | ModelFormat]) -> list[ModelFormat]:
    """The formats asked for, parsed, without repeats, in the order given.

    Raises:
        ConfigError: a format is unknown or cannot be exported, or none is given.
    """
    if isinstance(formats, (str, ModelFormat)):
        formats = [formats]
    parsed: list[ModelFormat] = []
    choices = ", ".join(f.value for f in EXPORT_STEPS)
    for value in formats:
        try:
            fmt = ModelFormat.parse(value, "format")
        except ValueError as e:
            raise ConfigError(f"export: {e}; choose from {choices}") from e
        if fmt not in EXPORT_STEPS:
            raise ConfigError(f"export: format {fmt.value!r} cannot be exported; choose from {choices}")
        if fmt not in parsed:
            parsed.append(fmt)
    if not parsed:
        raise ConfigError(f"export: no formats given; choose from {choices}")
    return parsed


def _check_arguments(
    name: str,
    labels: Sequence[str],
    preprocessing: Preprocessing | None,
    task: Task,
    output_kind: OutputKind,
) -> None:
    if not isinstance(name, str) or not BUNDLE_NAME.match(name):
        raise ConfigError(
            f"export: name {name!r} must start with a letter or digit and use only letters, digits, '.', '_', '-'"
        )
    if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
        raise ConfigError("export: labels must be a sequence of strings, one per output class")
    for label in labels:
        # labels.txt is one label a line, stripped on reading: anything else would not round-trip.
        if not label.strip() or label != label.strip() or "\n" in label or "\r" in label:
            raise ConfigError(f"export: label {label!r} must be non-empty, one line, without surrounding spaces")
    duplicates = sorted({label for label in labels if list(labels).count(label) > 1})
    if duplicates:
        raise ConfigError(f"export: labels {duplicates} appear more than once; each class needs its own label")
    if task in IMAGE_TASKS and not isinstance(preprocessing, Preprocessing):
        raise ConfigError(f"export: task {task.value!r} needs preprocessing=Preprocessing(size=(h, w), ...)")
    if (task is Task.IMAGE_EMBEDDING) != (output_kind is OutputKind.EMBEDDING):
        raise ConfigError(
            f"export: task {task.value!r} does not go with output_kind {output_kind.value!r}; "
            "image_embedding models output 'embedding', classifiers 'logits' or 'probabilities'"
        )


def _check_against_model(
    opened: OpenedSource,
    labels: Sequence[str],
    preprocessing: Preprocessing | None,
    task: Task,
    output_kind: OutputKind,
) -> None:
    where = f"export: {opened.description}"
    if task in IMAGE_TASKS and preprocessing is not None:
        image = opened.inputs[0]
        if len(opened.inputs) != 1 or len(image.shape) != 4 or image.shape[-1] not in (3, -1):
            shapes = ", ".join(f"{s.name} {s.shape}" for s in opened.inputs)
            raise ConfigError(
                f"{where}: an image model takes one (N, H, W, 3) channels-last input, this one takes "
                f"{shapes}; export a model with an RGB keras.Input((H, W, 3))"
            )
        model_size = image.shape[1:3]
        if any(want not in (-1, got) for want, got in zip(model_size, preprocessing.size, strict=False)):
            raise ConfigError(
                f"{where}: preprocessing.size is {tuple(preprocessing.size)} but input {image.name!r} "
                f"takes {model_size[0]}x{model_size[1]} images; set Preprocessing(size={tuple(model_size)}, ...)"
            )
    # A classifier exported with its embedding (converters/models/embedding.py): the logits decide.
    output = next((o for o in opened.outputs if o.name != EMBEDDING_OUTPUT), opened.outputs[0])
    if output_kind is OutputKind.EMBEDDING:
        if labels:
            raise ConfigError(f"{where}: an embedding model has no classes; pass labels=()")
        return
    classes = output.shape[-1] if output.shape else -1
    if not labels:
        raise ConfigError(f"{where}: pass labels, one per class of output {output.name!r}")
    if classes > 0 and len(labels) != classes:
        raise ConfigError(
            f"{where}: {len(labels)} labels given but output {output.name!r} has {classes} classes; "
            "pass one label per class, in output order"
        )


def step_config(step: ExportStep, given: Any, metadata: ModelMetadata) -> Any:
    """``given`` (or the step's default config) with an empty ``metadata`` filled from ``metadata``."""
    config = given if given is not None else step.config_type()
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) else set()
    if "metadata" in fields and config.metadata is None:
        config = dataclasses.replace(config, metadata=metadata)
    return config
