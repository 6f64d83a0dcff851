"""The source model every format step converts from: a Keras model or a TF SavedModel.

``open_source`` reads a model and its tensor specs without writing anything, so a driver can
check its arguments against the model before any work; ``load_source`` then writes what the
steps share once (the ``.keras`` file of an in-memory model, one SavedModel) into a work dir.
TensorFlow and Keras are imported on first use: importing ``converters`` stays cheap.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from sdk.bundle import sha256_tree
from sdk.enums import ModelFormat
from sdk.errors import ConversionError
from sdk.manifest import Step
from sdk.tensors import TensorSpec
from sdk.versions import tool_versions

if TYPE_CHECKING:
    import keras

SIGNATURE = "serving_default"
KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
_TF_TOOLS = ("tensorflow-cpu", "tensorflow", "keras")
_FIX = "pass a keras.Model, a .keras file or a TF SavedModel directory"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenedSource:
    """A source model read into memory, with its tensor specs; nothing written yet.

    ``path`` is None for an in-memory ``keras.Model``.
    """

    kind: ModelFormat
    description: str
    path: Path | None
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    layer_names: tuple[str, ...] = ()
    keras_model: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SourceModel:
    """The source as the format steps see it.

    Attributes:
        kind: ``ModelFormat.KERAS`` or ``ModelFormat.SAVEDMODEL``.
        path: the ``.keras`` file or the SavedModel directory (the one ``sha256`` covers).
        sha256: ``sdk.bundle.sha256_tree`` of ``path``: the lineage root of every bundle.
        description: how provenance names the source (the path given, or the in-memory model).
        inputs: input specs, dynamic dims as -1 (batch first).
        outputs: output specs, named as the SavedModel signature names them.
        saved_model_dir: the SavedModel the TFLite/OpenVINO/ONNX steps convert, or None when
            it was not asked for.
        layer_names: Keras layer names, to name the layer in a conversion error.
        steps: what ``load_source`` did to write ``path`` (saving an in-memory model).
        saved_model_steps: what it did to write ``saved_model_dir`` from ``path``.
    """

    kind: ModelFormat
    path: Path
    sha256: str
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    saved_model_dir: Path | None
    layer_names: tuple[str, ...] = ()
    steps: tuple[Step, ...] = ()
    saved_model_steps: tuple[Step, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.inputs[0].shape

    def lineage(self, uses_saved_model: bool) -> tuple[Step, ...]:
        """The steps that made what a format step reads: the model file, then the SavedModel."""
        return self.steps + (self.saved_model_steps if uses_saved_model else ())


SourceLike = Union["keras.Model", str, os.PathLike, OpenedSource]


def open_source(model: keras.Model | str | os.PathLike) -> OpenedSource:
    """Read a source model and its tensor specs, writing nothing.

    Args:
        model: an in-memory functional/Sequential ``keras.Model``, a ``.keras`` file, or a
            SavedModel directory with a ``serving_default`` signature.

    Raises:
        ConversionError: the path is missing or not a model, the model cannot be loaded,
            or its inputs cannot be read; the message names the path and the fix.
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if not path.exists():
            raise ConversionError(f"source {path}: no such file or directory; check the path, or {_FIX}")
        if path.is_dir():
            if not (path / "saved_model.pb").is_file():
                raise ConversionError(
                    f"source {path}: a directory without saved_model.pb is not a SavedModel; "
                    f"export one with model.export('{path}'), or {_FIX}"
                )
            return _open_saved_model(path)
        if path.suffix.lower() in (".h5", ".hdf5"):
            raise ConversionError(
                f"source {path}: legacy HDF5 files are not read; load it in Keras and "
                "model.save('model.keras'), then pass the .keras file"
            )
        if path.suffix.lower() != ".keras":
            raise ConversionError(f"source {path}: not a .keras file or a SavedModel directory; {_FIX}")
        return _open_keras_file(path)
    import keras

    if not isinstance(model, keras.Model):
        raise ConversionError(f"source is a {type(model).__name__}, not a model; {_FIX}")
    where = f"keras.Model {model.name!r} (in memory)"
    inputs, outputs = _keras_specs(model, where)
    return OpenedSource(
        kind=ModelFormat.KERAS,
        description=where,
        path=None,
        inputs=inputs,
        outputs=outputs,
        layer_names=tuple(layer.name for layer in model.layers),
        keras_model=model,
    )


def load_source(model: SourceLike, work_dir: Path, *, saved_model: bool = True) -> SourceModel:
    """Write what the format steps share into ``work_dir`` once, and describe the source.

    An in-memory model is saved to ``work_dir/model.keras``; a Keras source is exported to
    ``work_dir/saved_model`` (its signature names outputs like the Keras outputs) when
    ``saved_model`` is true. A SavedModel source is used where it lies.

    Args:
        model: what ``open_source`` takes, or its result.
        work_dir: created if missing; nothing is written outside it.
        saved_model: export a SavedModel (needed by the TFLite, OpenVINO and ONNX steps).

    Raises:
        ConversionError: the source cannot be read, saved or exported, naming the step and cause.
    """
    opened = model if isinstance(model, OpenedSource) else open_source(model)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    saved_model_steps: list[Step] = []
    if opened.kind is ModelFormat.SAVEDMODEL:
        assert opened.path is not None
        path, saved_model_dir = opened.path, opened.path
    else:
        path = opened.path if opened.path is not None else work_dir / KERAS_FILE
        if opened.path is None:
            steps.append(_timed("save_keras", lambda: _save_keras(opened, path), {"file": KERAS_FILE}))
        saved_model_dir = None
        if saved_model:
            saved_model_dir = work_dir / SAVED_MODEL_DIR
            saved_model_steps.append(
                _timed(
                    "export_savedmodel",
                    lambda: _export_saved_model(opened, saved_model_dir),
                    {"signature": SIGNATURE, "endpoint": "serve"},
                )
            )
    return SourceModel(
        kind=opened.kind,
        path=path,
        sha256=sha256_tree(path),
        description=opened.description,
        inputs=opened.inputs,
        outputs=opened.outputs,
        saved_model_dir=saved_model_dir,
        layer_names=opened.layer_names,
        steps=tuple(steps),
        saved_model_steps=tuple(saved_model_steps),
    )


def _open_keras_file(path: Path) -> OpenedSource:
    import keras

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file
        raise ConversionError(
            f"source {path}: Keras cannot load it ({type(e).__name__}: {e}); if it uses custom layers, "
            "register them with @keras.saving.register_keras_serializable and import them first, "
            "or pass the keras.Model itself"
        ) from e
    inputs, outputs = _keras_specs(model, str(path))
    return OpenedSource(
        kind=ModelFormat.KERAS,
        description=str(path),
        path=path,
        inputs=inputs,
        outputs=outputs,
        layer_names=tuple(layer.name for layer in model.layers),
        keras_model=model,
    )


def _open_saved_model(path: Path) -> OpenedSource:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TF raises many types for a bad SavedModel
        raise ConversionError(f"source {path}: TensorFlow cannot load the SavedModel: {e}") from e
    signatures = dict(loaded.signatures)
    if SIGNATURE not in signatures:
        raise ConversionError(
            f"source {path}: the SavedModel has no {SIGNATURE!r} signature (it has "
            f"{sorted(signatures) or 'none'}); re-export it with model.export(dir)"
        )
    function = signatures[SIGNATURE]
    _, kwargs = function.structured_input_signature
    where = str(path)
    return OpenedSource(
        kind=ModelFormat.SAVEDMODEL,
        description=where,
        path=path,
        inputs=_tf_specs(kwargs, where, "input"),
        outputs=_tf_specs(function.structured_outputs, where, "output"),
    )


def _keras_specs(model: keras.Model, where: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    try:
        inputs = list(model.inputs)
        outputs = list(model.outputs)
        output_names = list(model.output_names)
    except (AttributeError, ValueError) as e:
        raise ConversionError(
            f"source {where}: the model has no defined inputs (a subclassed model that was never "
            "built); build it from keras.Input, or export it with model.export(dir) and pass the "
            "SavedModel directory"
        ) from e
    try:
        return (
            tuple(_spec(t.name, t.shape, t.dtype) for t in inputs),
            tuple(_spec(n, t.shape, t.dtype) for n, t in zip(output_names, outputs, strict=False)),
        )
    except (TypeError, ValueError) as e:
        raise ConversionError(f"source {where}: unsupported model input or output: {e}") from e


def _tf_specs(specs: Mapping[str, Any] | Any, where: str, what: str) -> tuple[TensorSpec, ...]:
    if not isinstance(specs, Mapping) or not specs:
        raise ConversionError(
            f"source {where}: the {SIGNATURE!r} signature has no named {what}s; re-export it with model.export(dir)"
        )
    try:
        return tuple(_spec(name, spec.shape.as_list(), spec.dtype.name) for name, spec in specs.items())
    except (TypeError, ValueError) as e:
        raise ConversionError(f"source {where}: unsupported {what}: {e}") from e


def _spec(name: str, shape: Sequence[int | None], dtype: Any) -> TensorSpec:
    dims = tuple(-1 if d is None else int(d) for d in shape)
    return TensorSpec(name=name, shape=dims, dtype=str(getattr(dtype, "name", dtype)))


def _timed(name: str, action: Callable[[], None], config: dict[str, Any]) -> Step:
    started = time.perf_counter()
    action()
    return Step(
        name=name,
        config=config,
        tool_versions=tool_versions(_TF_TOOLS),
        seconds=round(time.perf_counter() - started, 3),
    )


def _save_keras(opened: OpenedSource, path: Path) -> None:
    try:
        opened.keras_model.save(path)
    except Exception as e:
        raise ConversionError(
            f"save_keras: {opened.description}: Keras cannot save it ({type(e).__name__}: {e}); "
            "give custom layers a get_config() and register them with "
            "@keras.saving.register_keras_serializable"
        ) from e


def _export_saved_model(opened: OpenedSource, directory: Path) -> None:
    import keras
    import tensorflow as tf

    model = opened.keras_model
    signature = [
        tf.TensorSpec([None if d < 0 else d for d in s.shape], tf.as_dtype(s.dtype), name=s.name) for s in opened.inputs
    ]
    names = [s.name for s in opened.outputs]

    # A dict result names the signature outputs like the Keras outputs ('logits'), so every
    # format's output tensor carries that name instead of 'output_0'.
    def serve(*args: Any) -> dict[str, Any]:
        result = model(args[0] if len(args) == 1 else list(args), training=False)
        if isinstance(result, Mapping):
            return dict(result)
        if not isinstance(result, (list, tuple)):
            result = [result]
        return dict(zip(names, result, strict=False))

    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name="serve", fn=serve, input_signature=signature)
        archive.write_out(str(directory), verbose=False)
    except Exception as e:
        raise ConversionError(
            f"export_savedmodel: {opened.description}: cannot trace the model into a SavedModel "
            f"({type(e).__name__}: {e}); every layer's call() must be traceable by tf.function"
        ) from e
