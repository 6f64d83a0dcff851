"""Recommendation bundles: an encoder exported per format, with its item table and catalogue beside it.

The encoder (``history`` int32 (batch, max_len) of item index + 1, 0 = padding, left-padded,
newest last -> ``user`` float32 (batch, dim)) goes through the same format steps and the same
``package`` as every model (``converters/export/pipeline.py``); then ``items.npz`` (the table
quantized: int8 with one symmetric scale per row, fp16 or fp32; the item bias) and ``items.json``
(ids, names, popularity) are added and hashed in the manifest, whose ``recommendation`` section
records n_items, dim, max_len, kind and table precision (``sdk/rec_manifest.py``). With
``ivf_lists`` an IVF index over the table as scored (``items.ivf.npz``, ``sdk/recommender_index.py``)
is built once, hashed too and recorded as ``recommendation.index``: ``sdk.Recommender`` then
scores a few lists of items instead of the whole catalogue past the latency budget. A bundle is
assembled in a hidden sibling directory and renamed into place, as ``package`` does.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.export.package import Lineage, PackageSpec, bundle_dir_name, check_bundle_target

# The export driver's helpers: formats are parsed, step configs filled and models packaged as export() does.
from converters.export.pipeline import (
    BUNDLE_NAME,
    DEFAULT_FORMATS,
    EXPORT_STEPS,
    package_model,
    parse_formats,
    step_config,
)
from converters.export.source import OpenedSource, SourceModel, load_source, open_source
from converters.export.steps import ExportStep, ModelMetadata, run_step
from sdk.bundle import Bundle, write_bundle
from sdk.enums import ModelFormat, OutputKind, Precision, Task
from sdk.errors import ConfigError
from sdk.interactions import Catalogue
from sdk.manifest import Step
from sdk.rec_manifest import KINDS, TABLE_PRECISIONS, RecommendationSpec
from sdk.recommender_items import index_spec, write_item_files

if TYPE_CHECKING:
    import keras

__all__ = ["METADATA", "add_items_from", "package_recommender"]

METADATA = ModelMetadata(task=Task.RECOMMENDATION, output_kind=OutputKind.EMBEDDING, preprocessing=None)


def package_recommender(
    encoder: keras.Model | str | os.PathLike,
    item_table: np.ndarray,
    item_bias: np.ndarray | None,
    catalogue: Catalogue,
    popularity: np.ndarray | Sequence[float],
    *,
    out_dir: Path,
    name: str,
    kind: str,
    formats: Iterable[str | ModelFormat] = DEFAULT_FORMATS,
    table_precision: str | Precision = Precision.INT8,
    max_len: int | None = None,
    steps: Sequence[Step] = (),
    configs: Mapping[ModelFormat, Any] | None = None,
    overwrite: bool = True,
    ivf_lists: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Bundle]:
    """Export ``encoder`` to a recommendation bundle per format, ``out_dir/<name>-<format>-fp32``.

    Returns the reopened, hash-checked bundles by format, in the order exported.

    Args:
        encoder: a ``keras.Model``, ``.keras`` file or SavedModel: one (batch, max_len) int32
            input, one (batch, dim) float output.
        item_table: float (n_items, dim), row i the item of catalogue index i.
        item_bias: float (n_items,) added to the scores, or None.
        catalogue: item ids and names, table row order.
        popularity: how often each item was seen (the cold-start ranking), one per item.
        out_dir: where the bundle directories are written.
        name: the bundles' name (letters, digits, ``.``, ``_``, ``-``).
        kind: ``"baskets"`` (order-free sets) or ``"sequences"`` (histories, newest last).
        formats: any of ``tflite``, ``openvino``, ``onnx``, ``keras``, ``savedmodel`` (the
            TensorFlow reference bundle that needs no custom layer classes; not in the default).
        table_precision: ``int8`` (symmetric, one scale per row), ``fp16`` or ``fp32``.
        max_len: the encoder's window; read from the model when None (it must then be static).
        steps: lineage steps that made the encoder (training, distillation), recorded first.
        configs: per-format export step configs replacing the defaults.
        overwrite: replace bundles already at the targets (never a directory that is not one).
        ivf_lists: also build an IVF index of this many lists (1..n_items, about sqrt(n_items);
            k-means seed 0, 10 iterations, 256 items per list): see ``sdk/recommender_search.py``.
        progress: called with one line per stage.

    Raises:
        ConfigError: an argument is wrong or does not fit the encoder or the others (shapes, counts,
            kind, precision, max_len, ivf_lists, target taken), before any bundle is written.
        ConversionError: the encoder cannot be read, or a format step failed.
        BackendUnavailableError: a format's runtime is missing, so its specs cannot be read.
    """
    say = progress or (lambda line: None)
    chosen = [EXPORT_STEPS[f] for f in parse_formats(formats)]
    precision = _check_scalars(name, kind, table_precision)
    table = np.asarray(item_table)
    out_dir = Path(out_dir)
    targets = _targets(chosen, name, configs, out_dir, overwrite)
    say("reading encoder…")
    opened = open_source(encoder)
    for step in chosen:
        step.check_source(opened.kind, True, opened.description)
    spec = RecommendationSpec(
        dim=_check_encoder(opened, table),  # first: it checks the table's shape
        n_items=int(table.shape[0]),
        max_len=_window(opened, max_len),
        kind=kind,
        table_precision=precision,
        has_bias=item_bias is not None,
        index=index_spec(int(table.shape[0]), ivf_lists) if ivf_lists is not None else None,  # after the shape check
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}-work-", dir=out_dir) as work_dir:
        work = Path(work_dir)
        (work / "items").mkdir()
        # Written (and so checked) once, before any export; each bundle gets a copy.
        say("writing the item files" + (f" and a {ivf_lists:,}-list IVF index…" if spec.index else "…"))
        write_item_files(work / "items", spec, table=table, bias=item_bias, catalogue=catalogue, popularity=popularity)
        say("preparing encoder…")
        source = load_source(opened, work / "source", saved_model=any(s.needs_saved_model for s in chosen))
        lineage = {s.format: (*steps, *source.lineage(s.needs_saved_model)) for s in chosen}
        return {s.format: _export_one(s, source, targets[s.format], lineage[s.format], spec, work, say) for s in chosen}


def _export_one(
    step: ExportStep,
    source: SourceModel,
    target: _Target,
    lineage_steps: Sequence[Step],
    spec: RecommendationSpec,
    work: Path,
    say: Callable[[str], None],
) -> Bundle:
    """Run one format step and package its model with the item files written in ``work/items``."""
    say(f"exporting {step.format.value}…")
    model_file, record = run_step(step, source, target.config, work / step.format.value)
    lineage = Lineage(source=source, steps=(*lineage_steps, record))
    bundle = _package_with_items(model_file, target.path, target.spec, lineage, spec, work / "items")
    say(f"{step.format.value}: {bundle.path} ({bundle.size_bytes() / 1024:.0f} KiB, {record.seconds:.1f} s)")
    return bundle


def add_items_from(target: Bundle, source: Bundle) -> Bundle:
    """Give ``target`` (e.g. a quantized copy of an encoder) the item files of recommendation bundle ``source``.

    The IVF index travels with them when ``source`` has one; item files ``target`` had before and
    ``source`` lacks (an old index) are removed, so the manifest lists exactly what is there.

    Raises:
        ConfigError: ``source`` has no item files, or ``target``'s encoder does not fit them
            (input window or output width), or ``target`` is not a recommendation bundle.
        BundleError: a file is missing while re-hashing.
    """
    spec = source.manifest.recommendation
    if spec is None:
        raise ConfigError(f"{source.path}: not a recommendation bundle with item files; pass the fp32 bundle")
    manifest = target.manifest
    if manifest.task is not Task.RECOMMENDATION:
        raise ConfigError(f"{target.path}: a {manifest.task.value} bundle cannot take item files")
    _check_specs(f"{target.path}: {manifest.model_file}", manifest.inputs, manifest.outputs, spec.dim, spec.max_len)
    for file in spec.files:
        shutil.copy2(source.path / file, target.path / file)
    stale = set(manifest.recommendation.files if manifest.recommendation else ()) - set(spec.files)
    for file in stale:
        (target.path / file).unlink(missing_ok=True)
    kept = {name: digest for name, digest in manifest.files.items() if name not in stale}
    files = {**kept, **dict.fromkeys(spec.files, "")}
    return write_bundle(target.path, manifest.with_changes(recommendation=spec, files=files))


def _package_with_items(
    model_file: Path, target: Path, spec: PackageSpec, lineage: Lineage, rec: RecommendationSpec, items_dir: Path
) -> Bundle:
    """``package`` into a hidden sibling, add the item files and their hashes, rename into place."""
    staging = target.parent / f".{target.name}.rec-partial"
    try:
        bundle = package_model(model_file, out_dir=staging, spec=spec, lineage=lineage, move=True, overwrite=True)
        _check_specs(
            f"{target.name}: {bundle.manifest.model_file}",
            bundle.manifest.inputs,
            bundle.manifest.outputs,
            rec.dim,
            rec.max_len,
        )
        for file in rec.files:
            shutil.copy2(items_dir / file, staging / file)
        files = {**bundle.manifest.files, **dict.fromkeys(rec.files, "")}
        write_bundle(staging, bundle.manifest.with_changes(recommendation=rec, files=files))
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Bundle.open(target)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Target:
    """One format's export step config, bundle spec and bundle directory."""

    config: Any
    spec: PackageSpec
    path: Path


def _targets(
    chosen: Sequence[ExportStep], name: str, configs: Mapping[ModelFormat, Any] | None, out_dir: Path, overwrite: bool
) -> dict[ModelFormat, _Target]:
    """Each step's config (checked), bundle spec and target directory (checked free or replaceable)."""
    targets = {}
    for step in chosen:
        config = step_config(step, (configs or {}).get(step.format), METADATA)
        step.check_config(config)
        spec = PackageSpec(name=name, format=step.format, precision=config.precision, metadata=METADATA)
        path = out_dir / bundle_dir_name(name, step.format, spec.precision)
        check_bundle_target(path, overwrite)
        targets[step.format] = _Target(config=config, spec=spec, path=path)
    return targets


def _check_scalars(name: str, kind: str, table_precision: str | Precision) -> Precision:
    """The table precision, after checking the bundle name, the kind and the precision."""
    if not isinstance(name, str) or not BUNDLE_NAME.match(name):
        raise ConfigError(
            f"package_recommender: name {name!r} must start with a letter or digit and use only letters, "
            "digits, '.', '_', '-'"
        )
    if kind not in KINDS:
        raise ConfigError(f"package_recommender: kind {kind!r} is not one of: {', '.join(KINDS)}")
    return _table_precision(table_precision)


def _table_precision(value: str | Precision) -> Precision:
    choices = ", ".join(p.value for p in TABLE_PRECISIONS)
    try:
        precision = Precision.parse(value, "table_precision")
    except ValueError as e:
        raise ConfigError(f"package_recommender: {e}; choose {choices}") from e
    if precision not in TABLE_PRECISIONS:
        raise ConfigError(f"package_recommender: table_precision {precision.value!r} is not one of: {choices}")
    return precision


def _check_encoder(opened: OpenedSource, table: np.ndarray) -> int:
    """The table's dim, after checking the encoder's tensors against the recommender contract."""
    if table.ndim != 2 or table.shape[0] < 1 or table.shape[1] < 1:
        raise ConfigError(
            f"package_recommender: item_table must be a float (n_items, dim) array, got shape {table.shape}"
        )
    _check_specs(f"package_recommender: {opened.description}", opened.inputs, opened.outputs, table.shape[1], None)
    return int(table.shape[1])


def _check_specs(where: str, inputs: Sequence[Any], outputs: Sequence[Any], dim: int, max_len: int | None) -> None:
    history = inputs[0]
    if len(inputs) != 1 or len(history.shape) != 2 or history.dtype != "int32":
        shapes = ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in inputs)
        raise ConfigError(
            f"{where}: a recommender encoder takes one (batch, max_len) int32 input of item index + 1, "
            f"this one takes {shapes}; build it on keras.Input((max_len,), dtype='int32')"
        )
    if max_len is not None and history.shape[1] not in (-1, max_len):
        raise ConfigError(f"{where}: input {history.name!r} holds {history.shape[1]} items, expected {max_len}")
    user = outputs[0]
    if len(outputs) != 1 or len(user.shape) != 2 or user.shape[1] != dim:
        shapes = ", ".join(f"{s.name} {s.shape}" for s in outputs)
        raise ConfigError(
            f"{where}: the encoder must output one (batch, {dim}) user vector to score a {dim}-dim item "
            f"table; it outputs {shapes}"
        )


def _window(opened: OpenedSource, max_len: int | None) -> int:
    model_len = opened.inputs[0].shape[1]
    if max_len is None:
        if model_len < 1:
            raise ConfigError(f"package_recommender: {opened.description} takes histories of any length; pass max_len")
        return int(model_len)
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ConfigError(f"package_recommender: max_len must be a positive integer, got {max_len!r}")
    if model_len not in (-1, max_len):
        raise ConfigError(
            f"package_recommender: max_len is {max_len} but {opened.description} takes {model_len} items; "
            f"pass max_len={model_len} or None"
        )
    return max_len
