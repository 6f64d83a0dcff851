"""``recommend()`` end to end, per bundle and runtime, timed side by side (``shelfedge rec-bench``).

Each contender is a :class:`~sdk.recommender.Recommender` already open; all of them answer the same
histories (real ones from a dataset's test cases), in round-robin blocks whose order rotates
(:func:`~sdk.qa.bench_stats.interleaved_blocks`), so a drift of the shared machine lands on every
contender alike. One call = ``recommend(history, k)`` as an app makes it: ids to indices, the
encoder on the runtime, scoring the whole catalogue, exclusion, top-k, ids and names back. After the
timed blocks, a short untimed pass reads each call's own split (encode vs score) from its result.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdk.errors import ConfigError
from sdk.qa.bench_stats import LatencyStats, interleaved_blocks, latency_stats
from sdk.recommender import Recommender
from sdk.recommender_items import ItemTable

_SPLIT_CALLS = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecBenchRow:
    """One contender's latency. Immutable; safe to share across threads."""

    label: str
    runtime: str
    runtime_version: str
    device: str
    n_items: int
    latency: LatencyStats
    encode_p50_ms: float
    score_p50_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "device": self.device,
            "n_items": self.n_items,
            "latency": self.latency.to_dict(),
            "encode_p50_ms": round(self.encode_p50_ms, 4),
            "score_p50_ms": round(self.score_p50_ms, 4),
        }


def bench_recommenders(
    recommenders: Mapping[str, Recommender],
    histories: Sequence[Sequence[str]],
    *,
    k: int = 10,
    blocks: int = 20,
    calls_per_block: int = 50,
    warmup: int = 20,
) -> list[RecBenchRow]:
    """Time ``recommend(history, k)`` for every contender on the same histories, interleaved.

    Raises:
        ConfigError: no contenders, no histories, or non-positive counts.
    """
    if not recommenders or not histories:
        raise ConfigError("rec-bench: give at least one recommender and one history to time")
    if min(blocks, calls_per_block) < 1 or warmup < 0:
        raise ConfigError(f"rec-bench: blocks {blocks} and calls_per_block {calls_per_block} must be >= 1")
    loops = {label: _loop(recommender, histories, k) for label, recommender in recommenders.items()}
    timed = interleaved_blocks(loops, blocks=blocks, calls_per_block=calls_per_block, warmup=warmup)
    rows = []
    for label, recommender in recommenders.items():
        encode, score = [], []
        for history in itertools.islice(itertools.cycle(histories), _SPLIT_CALLS):
            result = recommender.recommend(history, k)
            encode.append(result.timings.encode_ms)
            score.append(result.timings.score_ms)
        info = recommender.info
        rows.append(
            RecBenchRow(
                label=label,
                runtime=info.runtime.value,
                runtime_version=info.runtime_version,
                device=info.actual_device,
                n_items=len(recommender.catalogue),
                latency=latency_stats(np.concatenate(timed[label])),
                encode_p50_ms=float(np.median(encode)),
                score_p50_ms=float(np.median(score)),
            )
        )
    return rows


def markdown(rows: Sequence[RecBenchRow]) -> str:
    """A table: one row per contender, end-to-end p50/p90/p99 and the encode/score split."""
    lines = [
        "| bundle | runtime | device | items | calls | p50 ms | p90 ms | p99 ms | p50 ±% | encode p50 | score p50 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r.latency
        lines.append(
            f"| {r.label} | {r.runtime} {r.runtime_version} | {r.device} | {r.n_items:,} | {s.count:,} | "
            f"{s.p50_ms:.3f} | {s.p90_ms:.3f} | {s.p99_ms:.3f} | {s.p50_ci_half_width_pct:.1f} | "
            f"{r.encode_p50_ms:.3f} | {r.score_p50_ms:.3f} |"
        )
    return "\n".join(lines)


def sample_histories(items: ItemTable, max_len: int, count: int = 500, seed: int = 0) -> list[list[str]]:
    """``count`` histories drawn from a bundle's own catalogue, for a bench without a dataset.

    Items are drawn by popularity (how often they were seen in training, plus one), without
    repeats within a history; lengths are uniform in 1..``max_len``. Seeded: the same bundle
    gives the same histories.

    Raises:
        ConfigError: ``count`` or ``max_len`` is not positive.
    """
    if count < 1 or max_len < 1:
        raise ConfigError(f"sample_histories: count {count} and max_len {max_len} must be >= 1")
    rng = np.random.default_rng(seed)
    weights = np.asarray(items.popularity, np.float64) + 1.0
    weights /= weights.sum()
    n = items.n_items
    ids = items.catalogue.ids
    histories = []
    for _ in range(count):
        length = int(rng.integers(1, min(max_len, n) + 1))
        picked = rng.choice(n, size=length, replace=False, p=weights)
        histories.append([ids[i] for i in picked])
    return histories


def _loop(recommender: Recommender, histories: Sequence[Sequence[str]], k: int) -> Any:
    cycle = itertools.cycle(histories)

    def call() -> object:
        return recommender.recommend(next(cycle), k)

    return call
