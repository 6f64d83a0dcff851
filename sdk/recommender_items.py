"""The item files of a recommendation bundle: ``items.npz`` (table, scales, bias) and ``items.json``.

Written by the converters (``converters/export/rec_bundle.py``) and read by the
:class:`~sdk.recommender.Recommender`: the file format is defined once, here.

- ``items.npz``: ``table`` (n_items, dim) int8 | float16 | float32; ``scales`` float32 (n_items,)
  for int8 (symmetric, one per row: ``row = table[i] * scales[i]``), empty otherwise; ``bias``
  float32 (n_items,) when the manifest says ``has_bias``, empty otherwise. Read without pickle.
- ``items.json``: ``{"ids": [...], "names": [...], "popularity": [...]}``, one entry per row, and
  ``"categories": [[...], ...]`` (each item's categories) when the catalogue has them.
- ``items.ivf.npz``, when the manifest has an ``index``: the IVF index over the table as scored
  (dequantized, bias folded in; :mod:`sdk.recommender_index`), built by :func:`write_item_files`.

Everything here is immutable (the arrays are read-only) and safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle
from sdk.enums import Precision, Task
from sdk.errors import BundleError, ConfigError
from sdk.interactions import Catalogue
from sdk.rec_manifest import IndexSpec, RecommendationSpec
from sdk.recommender_index import IvfIndex, build_ivf

_NPZ_KEYS = frozenset({"table", "scales", "bias"})
_CATALOGUE_KEYS = frozenset({"ids", "names", "popularity", "categories"})
_SAMPLE_PER_LIST = 256  # k-means training items per list (build_ivf's default)
_STORED_DTYPE = {Precision.INT8: np.int8, Precision.FP16: np.float16, Precision.FP32: np.float32}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ItemTable:
    """The item side of a recommender, as loaded. Immutable: safe to share across threads.

    Attributes:
        catalogue: item ids and display names, row order.
        popularity: how often each item was seen (float64, read-only): the cold-start ranking.
        table: the table as stored (int8, float16 or float32; read-only).
        scales: int8 per-row scales (float32), None for a float table.
        bias: per-item score bias (float32), None when the bundle has none.
        index: the IVF index over the table, None when the bundle has none.
    """

    catalogue: Catalogue
    popularity: np.ndarray
    table: np.ndarray
    scales: np.ndarray | None
    bias: np.ndarray | None
    index: IvfIndex | None = None

    @property
    def n_items(self) -> int:
        return int(self.table.shape[0])

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def dequantized(self) -> np.ndarray:
        """The table as float32 (n_items, dim): int8 rows times their scales, fp16 widened."""
        return dequantize_table(self.table, self.scales)


def quantize_table(table: np.ndarray, precision: Precision) -> tuple[np.ndarray, np.ndarray]:
    """``(stored table, scales)`` for ``precision``; scales are empty unless int8.

    int8 is symmetric with one scale per row (``max |row| / 127``), so a row's largest entry
    keeps full resolution whatever the other rows' magnitudes; an all-zero row gets scale 1.

    Raises:
        ConfigError: the table is not a finite 2-D float array, or the precision is not one of
            int8, fp16, fp32.
    """
    array = np.asarray(table)
    if array.ndim != 2 or array.dtype.kind != "f" or not np.all(np.isfinite(array)):
        raise ConfigError(
            f"item table: expected a finite float (n_items, dim) array, got {array.dtype} {array.shape}; "
            "pass the item embedding table as float32"
        )
    array = array.astype(np.float32)
    if precision is Precision.INT8:
        peak = np.abs(array).max(axis=1)
        scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
        stored = np.clip(np.rint(array / scales[:, None]), -127, 127).astype(np.int8)
        return stored, scales
    if precision in (Precision.FP16, Precision.FP32):
        return array.astype(_STORED_DTYPE[precision]), np.zeros(0, np.float32)
    raise ConfigError(f"item table precision {precision.value!r} is not one of: int8, fp16, fp32")


def dequantize_table(table: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """The float32 table: int8 rows times their scales; float tables widened."""
    if table.dtype == np.int8:
        if scales is None:
            raise ConfigError("an int8 item table needs its per-row scales")
        return table.astype(np.float32) * scales[:, None].astype(np.float32)
    return table.astype(np.float32)


def write_item_files(
    directory: Path,
    spec: RecommendationSpec,
    *,
    table: np.ndarray,
    bias: np.ndarray | None,
    catalogue: Catalogue,
    popularity: np.ndarray,
) -> tuple[str, ...]:
    """Write ``items.npz``, ``items.json`` (and ``items.ivf.npz`` when ``spec.index``) into ``directory``.

    The index is built on the table as the recommender scores it (quantized, then dequantized)
    with its bias, from ``spec.index``'s lists, seed, iterations and sample. Returns the names.

    Raises:
        ConfigError: the table, bias, catalogue or popularity do not agree with ``spec`` or
            with each other (the message names which and the expected shape).
    """
    n = spec.n_items
    if np.shape(table) != (n, spec.dim):
        raise ConfigError(f"item table is {np.shape(table)}, expected ({n}, {spec.dim}): one row per catalogue item")
    if len(catalogue) != n:
        raise ConfigError(f"catalogue has {len(catalogue)} items but the item table has {n} rows; they must match")
    stored, scales = quantize_table(table, spec.table_precision)
    bias_array = _vector(bias, n, "item bias") if spec.has_bias else np.zeros(0, np.float32)
    counts = _vector(popularity, n, "popularity")
    if np.any(counts < 0):
        raise ConfigError("popularity: counts must be >= 0 (how often each item was seen)")
    directory = Path(directory)
    np.savez(directory / spec.table_file, table=stored, scales=scales, bias=bias_array)
    payload = {
        "ids": list(catalogue.ids),
        "names": list(catalogue.names),
        "popularity": [int(c) if float(c).is_integer() else float(c) for c in counts],
    }
    if catalogue.categories:
        payload["categories"] = [list(c) for c in catalogue.categories]
    (directory / spec.catalogue_file).write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
    if spec.index is not None:
        scored = dequantize_table(stored, scales if spec.table_precision is Precision.INT8 else None)
        index = spec.index
        built = build_ivf(scored, index.n_lists, index.seed, index.iters, bias=bias_array if spec.has_bias else None,
                          sample=index.sample)  # fmt: skip
        built.save(directory / index.file)
    return spec.files


def index_spec(n_items: int, n_lists: int, *, seed: int = 0, iters: int = 10) -> IndexSpec:
    """The manifest entry of an IVF index of ``n_lists`` lists over ``n_items`` items (sample recorded).

    k-means trains on 256 items per list (at most all of them), as :func:`build_ivf` does.

    Raises:
        ConfigError: ``n_lists`` is not an integer in 1..n_items, or seed / iters out of range.
    """
    if isinstance(n_lists, bool) or not isinstance(n_lists, int) or not 1 <= n_lists <= n_items:
        raise ConfigError(
            f"ivf_lists must be an integer in 1..{n_items} (the catalogue size), got {n_lists!r}; "
            f"about sqrt(n_items) = {max(1, round(n_items**0.5))} is the usual choice"
        )
    try:
        return IndexSpec(n_lists=n_lists, seed=seed, iters=iters, sample=min(n_items, _SAMPLE_PER_LIST * n_lists))
    except ValueError as e:
        raise ConfigError(f"IVF index: {e}") from e


def read_item_files(directory: Path, spec: RecommendationSpec) -> ItemTable:
    """Read and check a bundle's item files (and its index) against the manifest's ``recommendation`` section.

    Raises:
        BundleError: a file cannot be read, holds other arrays or keys, or its shapes and
            dtypes disagree with the manifest or with each other; an index that is not for
            this table (items, dim) or not what the manifest records (lists, seed,
            iterations); the message names the file.
    """
    directory = Path(directory)
    npz_path = directory / spec.table_file
    arrays = _read_npz(npz_path)
    table, scales, bias = arrays["table"], arrays["scales"], arrays["bias"]
    where = f"{directory}: {spec.table_file}"
    if table.ndim != 2 or table.dtype != _STORED_DTYPE[spec.table_precision]:
        raise BundleError(
            f"{where}: 'table' is {table.dtype} {table.shape}, the manifest says a 2-D "
            f"{spec.table_precision.value} table; re-package the bundle"
        )
    if table.shape != (spec.n_items, spec.dim):
        raise BundleError(
            f"{where}: the item table is {table.shape[0]} x {table.shape[1]}, the manifest says "
            f"{spec.n_items} items x {spec.dim} dims; re-package the bundle so table and manifest agree"
        )
    int8 = spec.table_precision is Precision.INT8
    if int8 and (scales.shape != (spec.n_items,) or not np.all(np.isfinite(scales)) or np.any(scales <= 0)):
        raise BundleError(f"{where}: an int8 table needs {spec.n_items} positive 'scales', got {scales.shape}")
    if spec.has_bias and bias.shape != (spec.n_items,):
        raise BundleError(f"{where}: 'bias' has shape {bias.shape}, expected ({spec.n_items},)")
    catalogue, popularity = _read_catalogue(directory, spec)
    return ItemTable(
        catalogue=catalogue,
        popularity=_frozen(popularity),
        table=_frozen(table),
        scales=_frozen(scales.astype(np.float32)) if int8 else None,
        bias=_frozen(bias.astype(np.float32)) if spec.has_bias else None,
        index=_read_index(directory, spec),
    )


def _read_index(directory: Path, spec: RecommendationSpec) -> IvfIndex | None:
    if spec.index is None:
        return None
    index = IvfIndex.load(directory / spec.index.file, n_items=spec.n_items, dim=spec.dim)  # BundleError naming it
    problem = index_mismatch(spec, index)
    if problem:
        raise BundleError(f"{directory}: {problem}; re-package the bundle with ivf_lists so index and manifest agree")
    return index


def index_mismatch(spec: RecommendationSpec, index: IvfIndex | None) -> str | None:
    """What differs between a loaded index and the manifest's ``recommendation`` section, or None."""
    recorded = spec.index
    if index is None:
        return None if recorded is None else f"{recorded.file}: the manifest lists an index that was not loaded"
    if recorded is None:
        return "an IVF index was given but the manifest records none"
    found = (index.n_items, index.dim, index.n_lists, index.seed, index.iters)
    expected = (spec.n_items, spec.dim, recorded.n_lists, recorded.seed, recorded.iters)
    if found == expected:
        return None
    what = "{:,} items x {} dims in {} lists (seed {}, {} iterations)"
    return f"{recorded.file} holds {what.format(*found)}, the manifest says {what.format(*expected)}"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if keys != _NPZ_KEYS:
                raise BundleError(
                    f"{path}: holds arrays {sorted(keys)}, expected {sorted(_NPZ_KEYS)}; re-package the bundle"
                )
            return {key: data[key] for key in _NPZ_KEYS}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: cannot read the item table ({e}); re-package the bundle") from e


def _read_catalogue(directory: Path, spec: RecommendationSpec) -> tuple[Catalogue, np.ndarray]:
    path = directory / spec.catalogue_file
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path}: cannot read the item catalogue ({e}); re-package the bundle") from e
    if not isinstance(data, dict) or not {"ids", "names", "popularity"} <= set(data) <= _CATALOGUE_KEYS:
        raise BundleError(f"{path}: expected an object with 'ids', 'names', 'popularity' and optionally 'categories'")
    ids, names, popularity = data["ids"], data["names"], data["popularity"]
    categories = _categories(data.get("categories"), spec.n_items, path)
    lengths = {len(v) if isinstance(v, list) else -1 for v in (ids, names, popularity)}
    if lengths != {spec.n_items}:
        raise BundleError(
            f"{path}: 'ids', 'names' and 'popularity' must each list {spec.n_items} items (the item "
            f"table's rows); got {[len(v) if isinstance(v, list) else None for v in (ids, names, popularity)]}"
        )
    if not all(isinstance(v, str) for v in (*ids, *names)):
        raise BundleError(f"{path}: item ids and names must be strings")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in popularity):
        raise BundleError(f"{path}: popularity must be counts >= 0")
    try:
        catalogue = Catalogue(ids=tuple(ids), names=tuple(names), categories=categories)
    except ConfigError as e:
        raise BundleError(f"{path}: {e}") from e
    return catalogue, np.asarray(popularity, np.float64)


def _categories(value: Any, n: int, path: Path) -> tuple[tuple[str, ...], ...]:
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(isinstance(c, list) and all(isinstance(x, str) for x in c) for c in value)
    ):
        raise BundleError(f"{path}: 'categories' must list {n} lists of strings (one per item); re-package the bundle")
    return tuple(tuple(c) for c in value)


def _vector(values: object, n: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64) if values is not None else None
    if array is None or array.shape != (n,) or not np.all(np.isfinite(array)):
        shape = None if array is None else array.shape
        raise ConfigError(f"{what}: expected {n} finite numbers (one per item), got shape {shape}")
    return array.astype(np.float32) if what != "popularity" else array


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array


def check_encoder(bundle: Bundle) -> RecommendationSpec:
    """The bundle's recommendation section, after checking its encoder's tensors fit it.

    Raises:
        ConfigError: the bundle is not a recommendation bundle with item files.
        BundleError: the encoder's input is not (batch, max_len) int32 or its output width is
            not the item table's dim (naming the model file and the table file).
    """
    manifest = bundle.manifest
    spec = manifest.recommendation
    if manifest.task is not Task.RECOMMENDATION or spec is None:
        raise ConfigError(
            f"bundle {bundle.path} is a {manifest.task.value} bundle without item files; Recommender needs a "
            "recommendation bundle (converters.export.rec_bundle.package_recommender writes one)"
        )
    where = f"{bundle.path}: {manifest.model_file}"
    history = manifest.inputs[0]
    if len(manifest.inputs) != 1 or history.dtype != "int32" or len(history.shape) != 2:
        raise BundleError(f"{where}: the encoder must take one (batch, max_len) int32 input, it takes {history}")
    if history.shape[1] not in (-1, spec.max_len):
        raise BundleError(
            f"{where}: input {history.name!r} holds {history.shape[1]} items but the manifest says max_len "
            f"{spec.max_len}; re-package the bundle"
        )
    user = manifest.outputs[0]
    if len(user.shape) != 2 or user.shape[-1] != spec.dim:
        raise BundleError(
            f"{where}: output {user.name!r} has shape {user.shape} but {spec.table_file} holds {spec.dim}-dim "
            f"item vectors; the table does not belong to this model: re-package the bundle"
        )
    return spec


def check_items(bundle: Bundle, spec: RecommendationSpec, items: ItemTable) -> None:
    """Refuse an item table (or its index) that does not match the manifest (already read: a defensive recheck).

    Raises:
        BundleError: naming the table, catalogue or index file and the sizes that differ.
    """
    if (items.n_items, items.dim, len(items.catalogue)) != (spec.n_items, spec.dim, spec.n_items):
        raise BundleError(
            f"{bundle.path}: {spec.table_file} is {items.n_items} x {items.dim} with {len(items.catalogue)} "
            f"catalogue items in {spec.catalogue_file}, the manifest says {spec.n_items} x {spec.dim}; "
            "re-package the bundle"
        )
    problem = index_mismatch(spec, items.index)
    if problem:
        raise BundleError(f"{bundle.path}: {problem}; re-package the bundle with ivf_lists")
