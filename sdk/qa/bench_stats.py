"""Latency statistics and timing loops for ``sdk.qa.bench``: pure numpy, no runtime imported.

Conventions fixed here once:

- a call is timed with ``time.perf_counter_ns`` around the call alone; the loop's own
  bookkeeping is outside the timed span;
- the garbage collector is paused while timing (as ``timeit`` does): a collection landing
  in one call is machine noise, not the cost of the call;
- percentiles are numpy's linear interpolation; the spread is the IQR over the median and a
  95 % confidence interval of the median from order statistics (distribution-free, no
  resampling, the same numbers on every run of the same samples).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sdk.errors import ConfigError

_NS_PER_MS = 1e6
_Z95 = 1.959963984540054


@dataclasses.dataclass(frozen=True, kw_only=True)
class LatencyStats:
    """Summary of per-call latencies, in milliseconds."""

    count: int
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    max_ms: float
    iqr_over_p50: float  # (p75 - p25) / p50: the typical spread, robust to outliers
    p50_ci_low_ms: float  # 95 % confidence interval of the median
    p50_ci_high_ms: float

    @property
    def p50_ci_half_width_pct(self) -> float:
        """Half the median's 95 % CI as a percentage of the median: how stable the median is."""
        return 50.0 * (self.p50_ci_high_ms - self.p50_ci_low_ms) / self.p50_ms if self.p50_ms else math.nan

    def to_dict(self) -> dict[str, Any]:
        data = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}
        data["p50_ci_half_width_pct"] = round(self.p50_ci_half_width_pct, 3)
        return data


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> LatencyStats:
    """Summarise per-call latencies given in milliseconds.

    Raises:
        ConfigError: there are no samples.
    """
    x = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = int(x.size)
    if n == 0:
        raise ConfigError("latency_stats got no samples; time at least one call")
    p25, p50, p75, p90, p95, p99 = np.percentile(x, [25, 50, 75, 90, 95, 99])
    low, high = median_ci(x)
    return LatencyStats(
        count=n,
        p50_ms=float(p50),
        p90_ms=float(p90),
        p95_ms=float(p95),
        p99_ms=float(p99),
        mean_ms=float(x.mean()),
        stdev_ms=float(x.std(ddof=1)) if n > 1 else 0.0,
        min_ms=float(x[0]),
        max_ms=float(x[-1]),
        iqr_over_p50=float((p75 - p25) / p50) if p50 > 0 else math.nan,
        p50_ci_low_ms=low,
        p50_ci_high_ms=high,
    )


def median_ci(sorted_samples: np.ndarray) -> tuple[float, float]:
    """95 % CI of the median: the order statistics n/2 -+ 1.96 sqrt(n)/2 (normal approximation
    of the binomial), clipped to the sample; with few samples it is the whole range."""
    n = sorted_samples.size
    half = _Z95 * math.sqrt(n) / 2.0
    lo = max(0, math.floor(n / 2.0 - half))
    hi = min(n - 1, math.ceil(n / 2.0 + half) - 1)
    return float(sorted_samples[lo]), float(sorted_samples[max(lo, hi)])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the garbage collector for a timing loop (restored even when the loop raises)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_calls(
    call: Callable[[int], object],
    *,
    warmup: int,
    min_calls: int,
    min_time_s: float,
    max_calls: int,
) -> np.ndarray:
    """Time ``call(i)`` per call after ``warmup`` untimed calls; milliseconds per call.

    Runs until at least ``min_calls`` calls and ``min_time_s`` seconds of timed calls, or
    ``max_calls`` calls, whichever ends first; ``i`` counts calls from 0 (warm-up included)
    so callers can cycle through inputs.
    """
    for i in range(warmup):
        call(i)
    samples: list[int] = []
    spent_ns, budget_ns = 0, int(min_time_s * 1e9)
    clock = time.perf_counter_ns
    with gc_paused():
        i = warmup
        while len(samples) < max_calls and (len(samples) < min_calls or spent_ns < budget_ns):
            t0 = clock()
            call(i)
            elapsed = clock() - t0
            samples.append(elapsed)
            spent_ns += elapsed
            i += 1
    return np.asarray(samples, dtype=np.float64) / _NS_PER_MS


def time_for(call: Callable[[], int], *, min_time_s: float, min_calls: int) -> tuple[int, float]:
    """Call ``call`` (which returns how many items it processed) until ``min_time_s`` seconds
    and ``min_calls`` calls have passed: (items processed, seconds), for throughput."""
    items, calls = 0, 0
    clock = time.perf_counter_ns
    with gc_paused():
        start = clock()
        while calls < min_calls or clock() - start < min_time_s * 1e9:
            items += call()
            calls += 1
        seconds = (clock() - start) / 1e9
    return items, seconds


@dataclasses.dataclass(frozen=True, kw_only=True)
class RatioStats:
    """The spread of per-block ratios of two loops timed in interleaved blocks.

    Each block ratio compares two loops that ran back to back under the same machine
    conditions, so their median stays put where a ratio of two separately measured p50s
    swings with the machine's load.
    """

    median: float
    p25: float
    p75: float
    ci95_low: float  # 95 % confidence interval of the median (order statistics)
    ci95_high: float
    blocks: int
    calls_per_block: int

    def describe(self) -> str:
        """E.g. ``2.31x (IQR 2.20-2.45, 95% CI 2.25-2.38, 40 blocks)``."""
        return (
            f"{self.median:.2f}x (IQR {self.p25:.2f}-{self.p75:.2f}, 95% CI {self.ci95_low:.2f}-"
            f"{self.ci95_high:.2f}, {self.blocks} blocks)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def ratio_stats(ratios: Sequence[float] | np.ndarray, *, calls_per_block: int) -> RatioStats:
    """Median, IQR and the median's 95 % CI of per-block ratios.

    Raises:
        ConfigError: there are no ratios.
    """
    x = np.sort(np.asarray(ratios, dtype=np.float64))
    if x.size == 0:
        raise ConfigError("ratio_stats got no block ratios; time at least one block")
    p25, p50, p75 = np.percentile(x, [25, 50, 75])
    low, high = median_ci(x)
    return RatioStats(
        median=float(p50),
        p25=float(p25),
        p75=float(p75),
        ci95_low=low,
        ci95_high=high,
        blocks=int(x.size),
        calls_per_block=calls_per_block,
    )


def interleaved_blocks(
    loops: Mapping[str, Callable[[], object]],
    *,
    blocks: int,
    calls_per_block: int,
    warmup: int,
) -> dict[str, list[np.ndarray]]:
    """Time every loop in round-robin blocks: per loop, one array of ms per call for each block.

    Block ``b`` runs the loops in the order rotated by ``b`` (A B C, B C A, C A B, ...; with
    two loops A B, B A), so each loop goes first equally often and no loop profits from its
    place. Short blocks follow the machine's drifts (another job, frequency changes): loops
    in one block see the same conditions.
    """
    names = list(loops)
    for _ in range(warmup):
        for name in names:
            loops[name]()
    clock = time.perf_counter_ns
    timed: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with gc_paused():
        for b in range(blocks):
            shift = b % len(names)
            for name in names[shift:] + names[:shift]:
                call = loops[name]
                samples = []
                for _ in range(calls_per_block):
                    t0 = clock()
                    call()
                    samples.append(clock() - t0)
                timed[name].append(np.asarray(samples, dtype=np.float64) / _NS_PER_MS)
    return timed
