"""The ``recommendation`` section of a bundle manifest: what the item files beside the encoder hold.

A recommendation bundle is an **encoder** (``history`` int32 (batch, max_len) of item index + 1,
0 = padding, left-padded, newest last -> ``user`` float32 (batch, dim)) plus two files next to it:
``items.npz`` (the item table, its per-row scales when int8, the item bias) and ``items.json``
(ids, names, popularity counts). Scores are ``user @ table.T + bias``. This section says how many
items and dimensions those files must hold, so a bundle whose files disagree with its model is
refused on load instead of ranking garbage.

Optionally an ``index`` (:class:`IndexSpec`): an IVF index over the table (``items.ivf.npz``,
:mod:`sdk.recommender_index`) that lets recommend() score a few lists of items instead of the
whole catalogue once brute force no longer fits the latency budget. Bundles without one read as
before (the key is simply absent).

Immutable; safe to share across threads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sdk._strict import StrictReader, as_bool, as_int, as_relative_path, as_str
from sdk.enums import Precision

ITEMS_TABLE_FILE = "items.npz"
ITEMS_CATALOGUE_FILE = "items.json"
ITEMS_INDEX_FILE = "items.ivf.npz"
INDEX_KINDS = ("ivf",)
KINDS = ("baskets", "sequences")
TABLE_PRECISIONS = (Precision.INT8, Precision.FP16, Precision.FP32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IndexSpec:
    """How the item index beside the table was built. Immutable: safe to share across threads.

    Attributes:
        kind: ``"ivf"`` (inverted lists from k-means, :func:`sdk.recommender_index.build_ivf`).
        file: the index file, relative to the bundle directory (hashed like every file).
        n_lists: the lists (clusters) the items are split into, 1..n_items.
        seed, iters: k-means' seed and Lloyd iterations.
        sample: the items k-means trained on (``None``: build_ivf's default, 256 per list).

    Raises:
        ValueError: the kind is unknown or a count is out of range.
    """

    kind: str = "ivf"
    file: str = ITEMS_INDEX_FILE
    n_lists: int
    seed: int = 0
    iters: int = 10
    sample: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise ValueError(f"index kind {self.kind!r} is not one of: {', '.join(INDEX_KINDS)}")
        for name, low in (("n_lists", 1), ("seed", 0), ("iters", 1), ("sample", 1)):
            value = getattr(self, name)
            if name == "sample" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"index {name} must be an integer >= {low}, got {value!r}")
        if self.sample is not None and self.sample < self.n_lists:
            raise ValueError(f"index sample ({self.sample}) must be >= n_lists ({self.n_lists})")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "file": self.file,
            "n_lists": self.n_lists,
            "seed": self.seed,
            "iters": self.iters,
        }
        if self.sample is not None:
            data["sample"] = self.sample
        return data

    @classmethod
    def from_reader(cls, r: StrictReader) -> IndexSpec:
        """Parse strictly.

        Raises:
            ManifestError (through ``r``): an unknown or missing key, or an impossible value.
        """
        try:
            value = cls(
                kind=r.required("kind", as_str),
                file=r.required("file", as_relative_path),
                n_lists=r.required("n_lists", as_int),
                seed=r.required("seed", as_int),
                iters=r.required("iters", as_int),
                sample=r.optional("sample", None, as_int),
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecommendationSpec:
    """The item side of a recommendation bundle. Immutable: safe to share across threads.

    Attributes:
        n_items: rows of the item table = items in the catalogue.
        dim: the table's columns = the encoder's output width.
        max_len: the encoder's window: the most recent items it sees.
        kind: ``"baskets"`` (an unordered set; duplicates count once) or ``"sequences"``.
        table_precision: ``int8`` (symmetric, one scale per row), ``fp16`` or ``fp32``.
        has_bias: whether ``items.npz`` holds a per-item bias added to the scores.
        table_file, catalogue_file: the item files, relative to the bundle directory.
        index: the item index beside the table, or None (brute force only).

    Raises:
        ValueError: a count is not positive, the kind or table precision is unknown, or the
            index has more lists than there are items.
    """

    n_items: int
    dim: int
    max_len: int
    kind: str
    table_precision: Precision
    has_bias: bool = False
    table_file: str = ITEMS_TABLE_FILE
    catalogue_file: str = ITEMS_CATALOGUE_FILE
    index: IndexSpec | None = None

    def __post_init__(self) -> None:
        for name in ("n_items", "dim", "max_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of: {', '.join(KINDS)}")
        precision = Precision.parse(self.table_precision, "table_precision")
        if precision not in TABLE_PRECISIONS:
            raise ValueError(
                f"table_precision {precision.value!r} is not one of: {', '.join(p.value for p in TABLE_PRECISIONS)}"
            )
        object.__setattr__(self, "table_precision", precision)
        if self.index is not None and self.index.n_lists > self.n_items:
            raise ValueError(f"index n_lists {self.index.n_lists} exceeds the {self.n_items} items")

    @property
    def files(self) -> tuple[str, ...]:
        """The item files the bundle must hold and hash: table, catalogue, and the index when there is one."""
        index = (self.index.file,) if self.index is not None else ()
        return (self.table_file, self.catalogue_file, *index)

    def to_dict(self) -> dict[str, Any]:
        extra = {"index": self.index.to_dict()} if self.index is not None else {}
        return {
            "n_items": self.n_items,
            "dim": self.dim,
            "max_len": self.max_len,
            "kind": self.kind,
            "table_precision": self.table_precision.value,
            "has_bias": self.has_bias,
            "table_file": self.table_file,
            "catalogue_file": self.catalogue_file,
            **extra,
        }

    @classmethod
    def from_reader(cls, r: StrictReader) -> RecommendationSpec:
        """Parse strictly.

        Raises:
            ManifestError (through ``r``): an unknown or missing key, or an impossible value.
        """
        index_reader = r.child("index", required=False)
        index = IndexSpec.from_reader(index_reader) if index_reader is not None else None
        try:
            value = cls(
                n_items=r.required("n_items", as_int),
                dim=r.required("dim", as_int),
                max_len=r.required("max_len", as_int),
                kind=r.required("kind", as_str),
                table_precision=r.required("table_precision", lambda v: Precision.parse(as_str(v), "table_precision")),
                has_bias=r.optional("has_bias", False, as_bool),
                table_file=r.optional("table_file", ITEMS_TABLE_FILE, as_str),
                catalogue_file=r.optional("catalogue_file", ITEMS_CATALOGUE_FILE, as_str),
                index=index,
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value
