"""Scoring and top-k inside the model graph: ``user @ table^T + bias + mask -> TopK(k)``, per format.

The numpy path of ``sdk.Recommender`` runs the encoder on a runtime and scores in numpy; this
module builds the other candidate, where the runtime does the scoring, the filtering and the
top-k itself, so they can be timed side by side (``shelfedge rec-cost --in-graph``):

- inputs: ``user`` float32 (batch, dim) -- or, with an encoder fused in, its ``history`` int32
  (batch, max_len) -- and ``mask`` float32 (batch, n_items), 0 for an item that may be
  returned and a large negative number (e.g. -1e9) for one that may not (history, exclude list,
  items outside an allow-list);
- outputs: ``top_scores`` float32 (batch, k) best first, ``top_indices`` int32 (batch, k).

The table and bias are a ``Dense(n_items)`` (FullyConnected / MatMul in every format), the mask an
Add, the top-k ``keras.ops.top_k`` (TFLite TOPK_V2, ONNX TopK, OpenVINO TopK). The model goes
through the same format steps and ``package`` as every model (``converters/export/pipeline.py``),
as a recommendation-task bundle without item files: the catalogue stays in the encoder's bundle.
Keras is imported with this module: the CLI imports it only when a command runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from converters.export.package import Lineage, PackageSpec, bundle_dir_name, check_bundle_target

# The export driver's helpers: formats are parsed, step configs filled and models packaged as export() does.
from converters.export.pipeline import BUNDLE_NAME, EXPORT_STEPS, package_model, parse_formats, step_config
from converters.export.rec_bundle import METADATA
from converters.export.source import load_source, open_source
from converters.export.steps import run_step
from sdk.bundle import Bundle
from sdk.enums import ModelFormat
from sdk.errors import ConfigError

__all__ = ["INDICES_NAME", "MASK_NAME", "SCORES_NAME", "USER_NAME", "build_scoring_model", "export_scoring"]

USER_NAME = "user"
MASK_NAME = "mask"
SCORES_NAME = "top_scores"
INDICES_NAME = "top_indices"
FORMATS = ("tflite", "openvino", "onnx")


def build_scoring_model(
    table: np.ndarray, bias: np.ndarray | None, *, k: int, encoder: keras.Model | None = None
) -> keras.Model:
    """A Keras model ``(user | history, mask) -> (top_scores, top_indices)`` over ``table``.

    Args:
        table: float (n_items, dim), row i the item of catalogue index i (e.g. the bundle's
            table dequantized: the scores then equal the numpy path's).
        bias: float (n_items,) added to every user's scores, or None.
        k: how many items the graph returns (at most n_items).
        encoder: a history encoder (``(batch, max_len)`` int32 -> ``(batch, dim)``) to fuse in
            front, so one runtime call goes from history to top-k; None: the input is ``user``.

    Raises:
        ConfigError: the table, bias, k or encoder do not fit together (naming which).
    """
    array = _check_table(table, bias, k)
    n_items, dim = array.shape
    mask = keras.Input((n_items,), dtype="float32", name=MASK_NAME)
    if encoder is None:
        head = keras.Input((dim,), dtype="float32", name=USER_NAME)
        user = head
    else:
        head, user = _encoder_head(encoder, dim)
    scoring = keras.layers.Dense(n_items, name="item_scores", dtype="float32")
    scores = keras.layers.Add(name="masked_scores")([scoring(user), mask])
    top_scores, top_indices = TopK(k, name="top_k")(scores)
    outputs = [
        keras.layers.Identity(name=SCORES_NAME)(top_scores),
        keras.layers.Identity(name=INDICES_NAME)(top_indices),
    ]
    model = keras.Model([head, mask], outputs, name=f"score_top{k}_{n_items}")
    kernel_bias = np.zeros(n_items, np.float32) if bias is None else np.asarray(bias, np.float32)
    scoring.set_weights([np.ascontiguousarray(array.T), kernel_bias])
    return model


def export_scoring(
    table: np.ndarray,
    bias: np.ndarray | None,
    *,
    k: int,
    out_dir: Path,
    name: str,
    encoder: keras.Model | None = None,
    formats: Iterable[str | ModelFormat] = FORMATS,
    overwrite: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Bundle]:
    """Build the scoring model and export it to a bundle per format, ``out_dir/<name>-<format>-fp32``.

    Raises:
        ConfigError: an argument is wrong (table, k, name, format, target taken), before any work.
        ConversionError: a format step failed (e.g. a runtime's converter rejected TopK).
        BackendUnavailableError: a format's runtime is missing, so its specs cannot be read.
    """
    say = progress or (lambda line: None)
    if not isinstance(name, str) or not BUNDLE_NAME.match(name):
        raise ConfigError(f"export_scoring: name {name!r} must use only letters, digits, '.', '_', '-'")
    steps = [EXPORT_STEPS[f] for f in parse_formats(formats)]
    out_dir = Path(out_dir)
    configs = {s.format: step_config(s, None, METADATA) for s in steps}
    specs = {
        s.format: PackageSpec(name=name, format=s.format, precision=configs[s.format].precision, metadata=METADATA)
        for s in steps
    }
    for step in steps:
        step.check_config(configs[step.format])
        check_bundle_target(out_dir / bundle_dir_name(name, step.format, specs[step.format].precision), overwrite)
    say(f"building the scoring model ({len(table):,} items, top {k})…")
    opened = open_source(build_scoring_model(table, bias, k=k, encoder=encoder))
    out_dir.mkdir(parents=True, exist_ok=True)
    bundles: dict[ModelFormat, Bundle] = {}
    with tempfile.TemporaryDirectory(prefix=f".{name}-work-", dir=out_dir) as work:
        source = load_source(opened, Path(work) / "source", saved_model=True)
        for step in steps:
            say(f"exporting {step.format.value}…")
            model_file, record = run_step(step, source, configs[step.format], Path(work) / step.format.value)
            spec = specs[step.format]
            bundles[step.format] = package_model(
                model_file,
                out_dir=out_dir / bundle_dir_name(name, step.format, spec.precision),
                spec=spec,
                lineage=Lineage(source=source, steps=(*source.lineage(True), record)),
                move=True,
                overwrite=overwrite,
            )
            say(f"{step.format.value}: {bundles[step.format].path} ({record.seconds:.1f} s)")
    return bundles


def _check_table(table: np.ndarray, bias: np.ndarray | None, k: int) -> np.ndarray:
    array = np.asarray(table)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1 or array.dtype.kind != "f":
        raise ConfigError(f"scoring model: table must be a float (n_items, dim) array, got {array.dtype} {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ConfigError("scoring model: the table holds NaN or inf; pass the dequantized float32 item table")
    n_items = array.shape[0]
    if bias is not None and np.shape(bias) != (n_items,):
        raise ConfigError(f"scoring model: bias has shape {np.shape(bias)}, expected ({n_items},): one per item")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n_items:
        raise ConfigError(f"scoring model: k must be an integer in 1..{n_items} (the items), got {k!r}")
    return array.astype(np.float32, copy=False)


def _encoder_head(encoder: Any, dim: int) -> tuple[Any, Any]:
    """The encoder's history input and its user output, after checking they fit the table."""
    inputs, outputs = list(encoder.inputs), list(encoder.outputs)
    if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 2 or len(outputs[0].shape) != 2:
        raise ConfigError(
            f"scoring model: encoder {encoder.name!r} must map one (batch, max_len) history to one (batch, dim) "
            "user vector"
        )
    if outputs[0].shape[-1] != dim:
        raise ConfigError(
            f"scoring model: encoder {encoder.name!r} outputs {outputs[0].shape[-1]}-dim users, the table is {dim}-dim"
        )
    history = keras.Input(tuple(inputs[0].shape[1:]), dtype=inputs[0].dtype, name=inputs[0].name)
    return history, encoder(history)


@keras.saving.register_keras_serializable(package="shelfedge")
class TopK(keras.layers.Layer):
    """(batch, n) scores -> ((batch, k) values best first, (batch, k) int32 indices)."""

    def __init__(self, k: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.k = k

    def call(self, scores: Any) -> Any:
        values, indices = keras.ops.top_k(scores, self.k, sorted=True)
        return values, keras.ops.cast(indices, "int32")

    def compute_output_spec(self, scores: Any) -> Any:
        shape = (scores.shape[0], self.k)
        return keras.KerasTensor(shape, dtype="float32"), keras.KerasTensor(shape, dtype="int32")

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"k": self.k}
