"""How :class:`~sdk.recommender.Recommender` finds the k best items: brute force, or an IVF index past the budget.

Brute force scores every item (``table @ user + bias``): its cost grows with the catalogue. On
the 2-core x86 development host (numpy BLAS 1 thread) recommend()'s p99 crossed 5 ms at about
150-180k items and 10 ms at about 330-370k (``shelfedge rec-cost``, 64-dim tables). A bundle
packaged with ``ivf_lists`` carries an IVF index (:mod:`sdk.recommender_index`); with it the
scorer keeps the dequantized table **in list order** (``IvfIndex.grouped``, the same memory as
the table in catalogue order, plus one int32 position per item), so each opened list is one
contiguous block: scoring it is a plain matrix-vector product, no gather.

Which search runs (:func:`plan_search`):

- ``exact``: every eligible item is scored;
- ``ivf``: the ``n_probe`` lists closest to the user are scored; when fewer than k items in
  them pass the filters, twice as many lists are opened, up to all of them (then it is exact);
- ``auto``: IVF when the bundle has an index **and** brute force is estimated to exceed the
  profile's ``budgets.p99_recommend_ms``. The estimate is ``n_items x dim / ITEM_DIMS_PER_MS``,
  a fixed throughput derived from the measured crossings above (150k x 64 items at 5 ms and
  330k x 64 at 10 ms are 1.9 and 2.1 M item-dims per ms; the lower is used). Why a fixed
  rule and not a measurement: the bundle is packaged on one machine and run on another, and
  the scoring product's cost is the table's size streamed through memory, which the rule
  states in the numbers the bundle already has. Without a profile budget, ``DEFAULT_BUDGET_MS``
  (10 ms, the budget of most built-in profiles) applies.

An allow-list (or category) shorter than ``1 / GATHER_COST`` of the items to be scored is
scored directly: exact, and cheaper than scanning lists, although a gathered row costs about
``GATHER_COST`` contiguous ones (65k sorted rows out of 1M x 64: 6.3 ms gathered vs 0.63 ms
contiguous on the development host).

Ties are broken by the lower catalogue index. Everything here is immutable after
construction: a scorer may be shared across threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile
from sdk.recommender_index import IvfIndex
from sdk.recommender_items import ItemTable, dequantize_table

__all__ = [
    "DEFAULT_BUDGET_MS",
    "GATHER_COST",
    "ITEM_DIMS_PER_MS",
    "Filters",
    "Found",
    "ItemScorer",
    "SearchPlan",
    "brute_force_ms",
    "budget_of",
    "limit_blas",
    "plan_search",
]

ITEM_DIMS_PER_MS = 1.9e6
DEFAULT_BUDGET_MS = 10.0
GATHER_COST = 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """What a recommender's options resolved to for its bundle. Immutable.

    Attributes:
        search: ``"exact"`` or ``"ivf"``.
        n_probe: IVF lists opened first (capped at ``n_lists``); None for exact.
        n_lists: the index's lists; None without an index.
        reason: one sentence: why this search (for what-ran-where).
    """

    search: str
    n_probe: int | None
    n_lists: int | None
    reason: str


def brute_force_ms(n_items: int, dim: int) -> float:
    """Estimated p99 of scoring every item, in ms (module doc: the development host's throughput)."""
    return n_items * dim / ITEM_DIMS_PER_MS


def budget_of(profile: HardwareProfile | None) -> tuple[float, str]:
    """The recommend() p99 budget ``auto`` compares with, and where it came from."""
    if profile is not None and profile.budgets.p99_recommend_ms is not None:
        return float(profile.budgets.p99_recommend_ms), f"profile {profile.id}'s p99_recommend_ms"
    return DEFAULT_BUDGET_MS, "the default budget (no profile p99_recommend_ms)"


def plan_search(
    search: str,
    n_probe: int,
    *,
    n_items: int,
    dim: int,
    index: IvfIndex | None,
    budget: tuple[float, str],
    where: str,
) -> SearchPlan:
    """Resolve ``search`` (``exact`` | ``ivf`` | ``auto``) for a bundle of ``n_items`` x ``dim``.

    Raises:
        ConfigError: ``search`` is ``"ivf"`` but the bundle has no index (naming ``where``), or
            ``search`` is none of the three.
    """
    n_lists = index.n_lists if index is not None else None
    if search == "exact":
        return SearchPlan(search="exact", n_probe=None, n_lists=n_lists, reason="exact: asked for")
    if search not in ("ivf", "auto"):
        raise ConfigError(f"search {search!r} is not one of 'exact', 'ivf', 'auto'")
    if index is None:
        if search == "ivf":
            raise ConfigError(
                f"{where}: search='ivf' needs an IVF index and this bundle has none; package it with "
                "package_recommender(..., ivf_lists=N) (shelfedge rec-distill --ivf-lists N, about sqrt(items)), "
                "or use search='exact' or 'auto'"
            )
        return SearchPlan(search="exact", n_probe=None, n_lists=None, reason="exact: the bundle has no IVF index")
    probe = min(n_probe, index.n_lists)
    capped = f" (n_probe {n_probe} capped at the {index.n_lists} lists: exact)" if n_probe > index.n_lists else ""
    if search == "ivf":
        return SearchPlan(search="ivf", n_probe=probe, n_lists=n_lists, reason=f"ivf: asked for{capped}")
    limit, source = budget
    estimate = brute_force_ms(n_items, dim)
    sizes = f"{n_items:,} items x {dim} dims ≈ {estimate:.2f} ms brute force"
    if estimate <= limit:
        return SearchPlan(
            search="exact", n_probe=None, n_lists=n_lists, reason=f"auto: exact, {sizes} <= {limit:g} ms ({source})"
        )
    reason = f"auto: ivf, {sizes} > {limit:g} ms ({source}){capped}"
    return SearchPlan(search="ivf", n_probe=probe, n_lists=n_lists, reason=reason)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Filters:
    """Which rows (the scorer's row order) may be returned. Immutable.

    Attributes:
        blocked: sorted unique rows never returned (history, ``exclude``).
        allowed: sorted unique rows that alone may be returned (``allow`` and ``category``
            intersected), or None for every row.
        eligible: how many rows pass both.
    """

    blocked: np.ndarray
    allowed: np.ndarray | None
    eligible: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Found:
    """The best items, best first, and how they were found. Immutable.

    ``indices`` are catalogue indices; ``candidates`` the items scored.
    """

    indices: np.ndarray
    scores: np.ndarray
    search: str
    n_probe: int | None = None
    n_lists: int | None = None
    candidates: int = 0
    widened: bool = False

    def fields(self) -> dict[str, Any]:
        """The search fields of :class:`~sdk.recommender_result.Recommendations`."""
        return {
            "search": self.search,
            "n_probe": self.n_probe,
            "n_lists": self.n_lists,
            "candidates": self.candidates,
            "widened": self.widened,
        }


class ItemScorer:
    """The item side as the search reads it: the float32 table (in IVF list order when indexed).

    Built once per recommender from its :class:`~sdk.recommender_items.ItemTable`; immutable
    afterwards (read-only arrays), so safe to share across threads.
    """

    def __init__(self, items: ItemTable) -> None:
        """Dequantize the table (in list order when the items have an index); no file I/O."""
        self.index = items.index
        self.n_items = items.n_items
        order = self.index.order if self.index is not None else None
        scales = items.scales
        if order is None:
            table, bias, popularity = dequantize_table(items.table, scales), items.bias, items.popularity
            self._position: np.ndarray | None = None
        else:
            # Dequantized after the int8 gather: the float table exists once, already grouped.
            table = dequantize_table(items.table[order], None if scales is None else scales[order])
            bias = None if items.bias is None else items.bias[order]
            popularity = items.popularity[order]
            self._position = _frozen(_inverse(order))
        self._order = order
        self._table = _frozen(table)
        self._bias = _frozen(bias) if bias is not None else None
        self._popularity = _frozen(np.asarray(popularity, np.float64))
        self._bounds: list[int] = self.index.offsets.tolist() if self.index is not None else [0, self.n_items]

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue indices -> the rows where this scorer keeps those items (int64)."""
        array = np.asarray(indices, np.int64)
        return array if self._position is None else self._position[array].astype(np.int64)

    def filters(self, blocked: Sequence[int] | np.ndarray, allowed: np.ndarray | None) -> Filters:
        """:class:`Filters` from catalogue indices: ``blocked`` never returned, only ``allowed`` (None: all)."""
        blocked_rows = np.unique(self.rows(blocked))
        if allowed is None:
            return Filters(blocked=blocked_rows, allowed=None, eligible=self.n_items - len(blocked_rows))
        allowed_rows = np.unique(self.rows(allowed))
        return Filters(
            blocked=blocked_rows,
            allowed=allowed_rows,
            eligible=len(allowed_rows) - len(_found_at(blocked_rows, allowed_rows)),
        )

    def scores(self, user: np.ndarray) -> np.ndarray:
        """Every item's score (float32), in catalogue order: exact, for parity and evaluation."""
        values = self._values(user, None)
        if self._order is None:
            return values
        scores = np.empty(self.n_items, np.float32)
        scores[self._order] = values
        return scores

    def exact(self, user: np.ndarray | None, filters: Filters, k: int) -> Found:
        """The ``k`` best eligible items by score (``user`` None: by popularity), every eligible item scored."""
        allowed = filters.allowed
        if allowed is not None and len(allowed) * GATHER_COST <= self.n_items:
            values = self._values(user, allowed)
            values[_found_at(filters.blocked, allowed)] = -np.inf
            picked = _best(values, min(k, filters.eligible))
            indices, scores = self._ranked(allowed[picked], values[picked], k)
            return Found(indices=indices, scores=scores, search="exact", candidates=len(allowed))
        values = self._values(user, None)
        if allowed is not None:
            keep = np.zeros(self.n_items, bool)
            keep[allowed] = True
            values[~keep] = -np.inf
        values[filters.blocked] = -np.inf
        picked = _best(values, min(k, filters.eligible))
        indices, scores = self._ranked(picked, values[picked], k)
        return Found(indices=indices, scores=scores, search="exact", candidates=self.n_items)

    def ivf(self, user: np.ndarray, filters: Filters, k: int, n_probe: int) -> Found:
        """The ``k`` best eligible items among the lists closest to ``user`` (module doc).

        Raises:
            ConfigError: this scorer has no index.
            InputError: ``user`` is not a finite vector of the table's width.
        """
        index = self.index
        if index is None:
            raise ConfigError("ItemScorer.ivf: these items have no IVF index; use exact()")
        u = np.ascontiguousarray(user, np.float32).reshape(-1)
        ranked = index.lists(u, index.n_lists)
        sizes = np.diff(index.offsets)
        want = min(k, filters.eligible)
        probe, widened = min(n_probe, index.n_lists), False
        while True:
            chosen = ranked[:probe]
            candidates = int(sizes[chosen].sum())
            if filters.allowed is not None and len(filters.allowed) * GATHER_COST <= candidates:
                return self.exact(u, filters, k)  # the allowed rows alone: exact, and cheaper
            values, firsts = self._score_lists(u, chosen, candidates)
            self._filter_lists(values, chosen, firsts, filters)
            if probe == index.n_lists or np.count_nonzero(values > -np.inf) >= want:
                break
            probe, widened = min(2 * probe, index.n_lists), True
        picked = _best(values, want)
        lists = np.searchsorted(firsts, picked, side="right") - 1
        rows = index.offsets[chosen[lists]] + (picked - firsts[lists])
        indices, scores = self._ranked(rows, values[picked], k)
        return Found(
            indices=indices, scores=scores, search="ivf", n_probe=probe, n_lists=index.n_lists,
            candidates=candidates, widened=widened,
        )  # fmt: skip

    def _values(self, user: np.ndarray | None, rows: np.ndarray | None) -> np.ndarray:
        """Fresh scores of ``rows`` (None: all, in row order); popularity (float64) when ``user`` is None."""
        if user is None:
            return self._popularity.copy() if rows is None else self._popularity[rows]
        table = self._table if rows is None else self._table[rows]
        values = table @ np.asarray(user, np.float32)
        if self._bias is not None:
            values += self._bias if rows is None else self._bias[rows]
        return values

    def _score_lists(self, user: np.ndarray, chosen: np.ndarray, total: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the chosen lists' items, list after list, and where each list starts in them."""
        values = np.empty(total, np.float32)
        firsts = np.empty(len(chosen), np.int64)
        bounds, table, bias = self._bounds, self._table, self._bias
        at = 0
        for j, lst in enumerate(chosen.tolist()):
            start, stop = bounds[lst], bounds[lst + 1]
            firsts[j] = at
            block = values[at : at + stop - start]
            np.dot(table[start:stop], user, out=block)  # a contiguous block: no gather (module doc)
            if bias is not None:
                np.add(block, bias[start:stop], out=block)
            at += stop - start
        return values, firsts

    def _filter_lists(self, values: np.ndarray, chosen: np.ndarray, firsts: np.ndarray, filters: Filters) -> None:
        """Set the scores of the rows the filters refuse to -inf, in place."""
        assert self.index is not None  # ivf() checked
        offsets, bounds = self.index.offsets, self._bounds
        if filters.allowed is not None:
            keep = np.zeros(self.n_items, bool)
            keep[filters.allowed] = True
            values[~np.concatenate([keep[bounds[lst] : bounds[lst + 1]] for lst in chosen.tolist()])] = -np.inf
        if len(filters.blocked):
            start_of = np.full(self.index.n_lists, -1, np.int64)
            start_of[chosen] = firsts
            lists = np.searchsorted(offsets, filters.blocked, side="right") - 1
            at = start_of[lists]
            hit = at >= 0
            values[at[hit] + filters.blocked[hit] - offsets[lists[hit]]] = -np.inf

    def _ranked(self, rows: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best as catalogue indices and scores, best first, ties by the lower catalogue index.

        Refused rows (-inf) are dropped.
        """
        keep = values > -np.inf
        rows, values = rows[keep], values[keep]
        indices = rows if self._order is None else self._order[rows].astype(np.int64)
        ordered = np.lexsort((indices, -values))[:k]
        return indices[ordered], values[ordered]


def limit_blas(threads: int | None) -> str:
    """Cap numpy's BLAS pool process-wide (the scoring product); what was done, for what-ran-where."""
    if threads is None:
        return "numpy default"
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return f"{threads} asked, not applied: threadpoolctl is not installed (pip install threadpoolctl)"
    threadpool_limits(limits=threads, user_api="blas")
    return f"{threads} (process-wide)"


def _best(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest values and of every value tied with the k-th (any order).

    The ties are kept so that :meth:`ItemScorer._ranked` can break them by catalogue index
    (argpartition alone picks among equal values arbitrarily: popularity counts tie often).
    """
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= len(values):
        return np.arange(len(values))
    kth = values[np.argpartition(values, len(values) - k)[len(values) - k :]].min()
    return np.flatnonzero(values >= kth)


def _found_at(rows: np.ndarray, sorted_rows: np.ndarray) -> np.ndarray:
    """Where in ``sorted_rows`` (sorted, unique) those of ``rows`` that it holds are."""
    if not len(rows) or not len(sorted_rows):
        return np.zeros(0, np.int64)
    at = np.searchsorted(sorted_rows, rows).clip(max=len(sorted_rows) - 1)
    return at[sorted_rows[at] == rows]


def _inverse(order: np.ndarray) -> np.ndarray:
    position = np.empty(len(order), np.int32)
    position[order] = np.arange(len(order), dtype=np.int32)
    return position


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.flags.writeable = False
    return array
