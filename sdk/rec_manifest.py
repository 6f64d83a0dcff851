"""The ``recommendation`` section of a bundle manifest: what the item files beside the encoder hold.

A recommendation bundle is an **encoder** (``history`` int32 (batch, max_len) of item index + 1,
0 = padding, left-padded, newest last -> ``user`` float32 (batch, dim)) plus two files next to it:
``items.npz`` (the item table, its per-row scales when int8, the item bias) and ``items.json``
(ids, names, popularity counts). Scores are ``user @ table.T + bias``. This section says how many
items and dimensions those files must hold, so a bundle whose files disagree with its model is
refused on load instead of ranking garbage.

Immutable; safe to share across threads.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sdk._strict import StrictReader, as_bool, as_int, as_str
from sdk.enums import Precision

ITEMS_TABLE_FILE = "items.npz"
ITEMS_CATALOGUE_FILE = "items.json"
KINDS = ("baskets", "sequences")
TABLE_PRECISIONS = (Precision.INT8, Precision.FP16, Precision.FP32)


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

    Raises:
        ValueError: a count is not positive, or the kind or table precision is unknown.
    """

    n_items: int
    dim: int
    max_len: int
    kind: str
    table_precision: Precision
    has_bias: bool = False
    table_file: str = ITEMS_TABLE_FILE
    catalogue_file: str = ITEMS_CATALOGUE_FILE

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

    @property
    def files(self) -> tuple[str, str]:
        return (self.table_file, self.catalogue_file)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "dim": self.dim,
            "max_len": self.max_len,
            "kind": self.kind,
            "table_precision": self.table_precision.value,
            "has_bias": self.has_bias,
            "table_file": self.table_file,
            "catalogue_file": self.catalogue_file,
        }

    @classmethod
    def from_reader(cls, r: StrictReader) -> RecommendationSpec:
        """Parse strictly.

        Raises:
            ManifestError (through ``r``): an unknown or missing key, or an impossible value.
        """
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
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value
