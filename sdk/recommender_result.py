"""The value types of :class:`~sdk.recommender.Recommender`: its options and its results.

All frozen dataclasses: immutable, safe to share across threads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sdk.enums import Device, FallbackPolicy, Runtime
from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo
from sdk.task_options import check_session_fields, is_positive_int

SEARCHES = ("auto", "exact", "ivf")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecommenderOptions:
    """How to open a recommendation bundle and recommend with it (the ClassifierOptions shape).

    Checked when constructed; strings for ``runtime``, ``device`` and ``fallback`` are parsed
    case-insensitively and stored as their enums. Immutable, so one instance may be shared
    across threads and recommenders.

    Attributes:
        profile: hardware profile id, YAML path or loaded profile; its runtime, device, runtime
            options and fallback policy apply unless overridden below.
        runtime: ``litert``, ``openvino``, ``onnxruntime`` or ``tensorflow`` (default: the
            profile's when it can open the bundle, else the first runtime for its format).
        device: ``CPU``, ``GPU``, ``NPU``, ``TPU`` or ``AUTO`` (default: the profile's, else CPU).
        fallback: ``strict`` or ``record`` (default: the profile's, else ``record``).
        threads: inference threads (default: the profile's, else the runtime's own).
        k: items :meth:`~sdk.recommender.Recommender.recommend` returns when not told.
        concurrency: how many calls from different threads may run the encoder at once on the one
            shared session (LiteRT interpreters / OpenVINO infer requests in its pool); None: the
            runtime's default (``info.details["concurrency"]`` says what it is).
        blas_threads: threads numpy's BLAS may use for the scoring product, set process-wide when
            the recommender is created (``threadpoolctl``); ``None`` leaves numpy's default. The
            default 1 keeps the tail short where requests share a few cores: on the 2-core
            development host, with the BLAS pool at its default 2 threads racing the runtime,
            recommend() p99 over 10k items was 9.1 ms against 0.49 ms with 1 thread.
        search: how recommend() finds the top k (:mod:`sdk.recommender_search`): ``"exact"``
            scores every item; ``"ivf"`` scores only the ``n_probe`` lists of the bundle's IVF
            index closest to the user (approximate; the bundle must have an index:
            ``package_recommender(..., ivf_lists=N)``); ``"auto"`` (default) takes IVF when the
            bundle has an index and brute force over its catalogue is estimated to exceed the
            profile's ``budgets.p99_recommend_ms`` (10 ms without one), else exact.
        n_probe: IVF lists opened per request (more: higher recall, slower); widened by
            doubling when fewer than k items survive the filters; capped at the index's lists
            (which is exact). The default 64, with about sqrt(items) lists, gave recall@10 of
            0.975 at 100k items and 0.948 at 1M (synthetic MovieLens-like tables, ``shelfedge
            rec-cost``), scoring 2% and 6.6% of the catalogue.

    Raises:
        ConfigError: a field has the wrong type or an unknown value; the message names the
            field and what to pass instead.
    """

    profile: str | Path | HardwareProfile | None = None
    runtime: Runtime | str | None = None
    device: Device | str | None = None
    fallback: FallbackPolicy | str | None = None
    threads: int | None = None
    k: int = 10
    concurrency: int | None = None
    blas_threads: int | None = 1
    search: str = "auto"
    n_probe: int = 64

    def __post_init__(self) -> None:
        check_session_fields(self)
        if not is_positive_int(self.k):
            raise ConfigError(f"RecommenderOptions.k is {self.k!r}; pass a positive integer such as k=10")
        if self.blas_threads is not None and not is_positive_int(self.blas_threads):
            raise ConfigError(
                f"RecommenderOptions.blas_threads is {self.blas_threads!r}; pass a positive integer or None"
            )
        if not isinstance(self.search, str) or self.search.lower() not in SEARCHES:
            raise ConfigError(
                f"RecommenderOptions.search is {self.search!r}; pass one of {', '.join(map(repr, SEARCHES))}"
            )
        object.__setattr__(self, "search", self.search.lower())
        if not is_positive_int(self.n_probe):
            raise ConfigError(f"RecommenderOptions.n_probe is {self.n_probe!r}; pass a positive integer such as 64")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecommendedItem:
    """One recommended item: its row in the table, catalogue id and name, and score.

    The score is ``user @ table[index] + bias[index]``; on a cold start, the popularity count.
    """

    index: int
    id: str
    name: str
    score: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecTimings:
    """Milliseconds: the encoder run alone (0 on a cold start); scoring the catalogue + filters +
    top-k; the whole call (ids in, items out)."""

    encode_ms: float
    score_ms: float
    total_ms: float

    def to_dict(self) -> dict[str, float]:
        return {
            "encode_ms": round(self.encode_ms, 3),
            "score_ms": round(self.score_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recommendations:
    """What :meth:`~sdk.recommender.Recommender.recommend` returns, and everything it decided.

    Attributes:
        items: best first.
        timings: see :class:`RecTimings`.
        ran: what ran the encoder (runtime, version, device, precision, fallback).
        k_requested: the k asked for; ``k_reduced`` is true when fewer items could be returned
            (fewer allowed items than k: all of them are).
        cold_start: no known history item: the most popular items were returned.
        history_used: the items fed to the encoder (known, deduplicated for baskets, in window).
        dropped: the oldest known items left out because the history was longer than ``max_len``.
        unknown_ids: history ids not in the catalogue (each once, first seen first), ignored;
            ``unknown_count`` counts every occurrence.
        unknown_filter_ids: ``exclude`` / ``allow`` ids not in the catalogue, ignored.
        search: ``"exact"`` (every eligible item scored) or ``"ivf"`` (the items of ``n_probe``
            of the index's ``n_lists`` lists); ``candidates`` is how many items were scored.
        widened: IVF found fewer than k items that pass the filters in the lists first opened,
            so it opened twice as many, until enough (or all lists, which is exact).
    """

    items: tuple[RecommendedItem, ...]
    timings: RecTimings
    ran: SessionInfo
    k_requested: int
    k_reduced: bool
    cold_start: bool
    history_used: int
    dropped: int
    max_len: int
    unknown_ids: tuple[str, ...] = ()
    unknown_count: int = 0
    unknown_filter_ids: tuple[str, ...] = ()
    search: str = "exact"
    n_probe: int | None = None
    n_lists: int | None = None
    candidates: int = 0
    widened: bool = False

    @property
    def approximate(self) -> bool:
        """The IVF index left lists unopened: an item outside them could have scored higher."""
        return self.search == "ivf" and self.n_probe is not None and self.n_probe < (self.n_lists or 0)

    @property
    def truncated(self) -> bool:
        """The history was longer than the model's window: only the most recent items were used."""
        return self.dropped > 0

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def notes(self) -> tuple[str, ...]:
        """One sentence per thing the call decided for the caller (empty when nothing)."""
        notes = []
        if self.unknown_ids:
            notes.append(
                f"{self.unknown_count} history item(s) not in the catalogue were ignored: "
                + ", ".join(self.unknown_ids)
            )
        if self.truncated:
            notes.append(
                f"history longer than the model's window of {self.max_len}: the {self.dropped} oldest "
                "item(s) were left out"
            )
        if self.cold_start:
            notes.append("no known history: the most popular items (cold start)")
        if self.k_reduced:
            notes.append(f"only {len(self.items)} item(s) left after the filters, fewer than k={self.k_requested}")
        if self.unknown_filter_ids:
            notes.append("exclude/allow ids not in the catalogue were ignored: " + ", ".join(self.unknown_filter_ids))
        if self.widened:
            notes.append(
                f"fewer than k={self.k_requested} items passed the filters in the IVF lists first opened: "
                f"widened to {self.n_probe} of {self.n_lists} lists"
            )
        if self.approximate:
            notes.append(
                f"approximate top-k: IVF index, {self.n_probe} of {self.n_lists} lists opened ({self.candidates:,} "
                "items scored); search='exact' ranks every item"
            )
        return tuple(notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [dataclasses.asdict(item) for item in self.items],
            "timings": self.timings.to_dict(),
            "k_requested": self.k_requested,
            "k_reduced": self.k_reduced,
            "cold_start": self.cold_start,
            "history_used": self.history_used,
            "truncated": self.truncated,
            "dropped": self.dropped,
            "max_len": self.max_len,
            "unknown_ids": list(self.unknown_ids),
            "unknown_count": self.unknown_count,
            "unknown_filter_ids": list(self.unknown_filter_ids),
            "search": {
                "kind": self.search,
                "n_probe": self.n_probe,
                "n_lists": self.n_lists,
                "candidates": self.candidates,
                "widened": self.widened,
                "approximate": self.approximate,
            },
            "notes": list(self.notes()),
            "ran": self.ran.to_dict(),
        }
