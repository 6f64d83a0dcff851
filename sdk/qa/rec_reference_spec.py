"""Which evaluation cases a recommendation reference was made on, and the encoder windows they give.

A reference records the dataset as it was asked for (``baskets``, ``movielens``, a CSV path), its
seed, split and case limit, so a comparison elsewhere opens the very same cases again; the
catalogue's sha256 and the per-case hashes (:mod:`sdk.qa.rec_reference`) prove it did.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from sdk._strict import StrictReader, as_bool, as_int, as_str
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases
from sdk.interactions import Kind
from sdk.rec_datasets import NAMED, RecDataset, open_rec_dataset

__all__ = ["SPLITS", "RecDatasetSpec", "case_windows", "catalogue_sha256", "select_cases", "split_name"]

# The split names a reference may be made on (``val`` is accepted for ``valid``).
SPLITS = ("test", "valid")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecDatasetSpec:
    """How to open a reference's cases again. Immutable: safe to share across threads.

    Attributes:
        spec: what ``open_rec_dataset`` was given (a name, a CSV file or a MovieLens folder).
        kind: ``baskets`` or ``sequences``.
        seed: the basket split's seed.
        split: ``test`` or ``valid``.
        limit: the first ``limit`` cases only (0: all).
        synthetic: generated data stood in for ``spec`` (the real data was absent).
        n_items: catalogue size.
        catalogue_sha256: sha256 of the catalogue's ids in order.
        note: where the data came from, in words.
    """

    spec: str
    kind: str
    seed: int
    split: str
    limit: int
    synthetic: bool
    n_items: int
    catalogue_sha256: str
    note: str

    @classmethod
    def of(cls, dataset: RecDataset, spec: str, *, split: str, limit: int, seed: int) -> RecDatasetSpec:
        """The spec of ``dataset`` opened from ``spec`` with ``seed``.

        Raises:
            ConfigError: the split is unknown or the limit negative.
        """
        ids = dataset.interactions.catalogue.ids
        return cls(
            spec=str(spec),
            kind=dataset.interactions.kind,
            seed=int(seed),
            split=split_name(split),
            limit=_limit(limit),
            synthetic=dataset.synthetic,
            n_items=dataset.split.n_items,
            catalogue_sha256=catalogue_sha256(ids),
            note=dataset.note,
        )

    def open(self, root: Path | None = None) -> tuple[RecDataset, EvalCases]:
        """Open the dataset again and select the same cases.

        A reference made on generated data standing in for a named dataset opens the generated
        data again (not the real data, which may have appeared since).

        Raises:
            ConfigError: the data is missing or unreadable, or no longer has this catalogue.
        """
        spec = f"synthetic-{self.kind}" if self.synthetic and self.spec in ("baskets", "movielens") else self.spec
        kind = None if spec in NAMED else cast("Kind", self.kind)
        dataset = open_rec_dataset(spec, root=root, kind=kind, seed=self.seed)
        ids = dataset.interactions.catalogue.ids
        if catalogue_sha256(ids) != self.catalogue_sha256:
            raise ConfigError(
                f"dataset {self.spec!r}: its catalogue ({len(ids):,} items) is not the one the reference was made "
                f"on ({self.n_items:,} items); point --dataset (or $SHELFEDGE_REC_DATA) at the same data"
            )
        return dataset, select_cases(dataset, self.split, self.limit)

    def describe(self) -> str:
        limit = f", first {self.limit:,} cases" if self.limit else ""
        generated = " (generated data)" if self.synthetic else ""
        return f"{self.spec}{generated} {self.split} split, seed {self.seed}{limit}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_reader(cls, r: StrictReader) -> RecDatasetSpec:
        """Parse strictly.

        Raises:
            ManifestError (through ``r``): an unknown or missing key, or a bad value.
        """
        try:
            spec = cls(
                spec=r.required("spec", as_str),
                kind=r.required("kind", as_str),
                seed=r.required("seed", as_int),
                split=r.required("split", split_name),
                limit=r.required("limit", _limit),
                synthetic=r.required("synthetic", as_bool),
                n_items=r.required("n_items", as_int),
                catalogue_sha256=r.required("catalogue_sha256", as_str),
                note=r.required("note", as_str),
            )
        except ConfigError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return spec


def catalogue_sha256(ids: Sequence[str]) -> str:
    """The sha256 of a catalogue's ids in order (NUL-separated UTF-8)."""
    return hashlib.sha256("\0".join(ids).encode("utf-8")).hexdigest()


def split_name(value: Any) -> str:
    """``test`` or ``valid`` (``val`` accepted).

    Raises:
        ConfigError: any other value.
    """
    name = "valid" if value == "val" else value
    if name not in SPLITS:
        raise ConfigError(f"split {value!r} is not one of: {', '.join(SPLITS)}")
    return str(name)


def select_cases(dataset: RecDataset, split: str, limit: int = 0) -> EvalCases:
    """The dataset's ``test`` or ``valid`` cases, the first ``limit`` only when it is positive.

    Raises:
        ConfigError: an unknown split, a negative limit, or a split without cases.
    """
    cases = dataset.split.test if split_name(split) == "test" else dataset.split.valid
    count = _limit(limit)
    if count:
        cases = cases.head(count)
    if not len(cases):
        raise ConfigError(f"dataset {dataset.name!r}: the {split} split has no cases; choose the other split")
    return cases


def case_windows(histories: Sequence[np.ndarray], max_len: int, kind: str) -> np.ndarray:
    """The encoder input of every case, as ``sdk.Recommender`` builds it: (cases, max_len) int32.

    Item index + 1, left-padded with 0, newest last; a basket counts an item once, at its latest
    place; only the most recent ``max_len`` items.
    """
    out = np.zeros((len(histories), max_len), np.int32)
    for i, history in enumerate(histories):
        items = [int(v) for v in history]
        if kind == "baskets":
            items = list(dict.fromkeys(reversed(items)))[::-1]
        window = items[max(0, len(items) - max_len) :]
        if window:
            out[i, max_len - len(window) :] = np.asarray(window, np.int32) + 1
    return out


def _limit(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"limit must be a non-negative integer (0: every case), got {value!r}")
    return value
