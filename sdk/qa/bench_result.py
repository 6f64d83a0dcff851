"""What ``sdk.qa.bench`` measured: one :class:`BenchResult` per bundle x runtime, its budget checks,
comparisons with a baseline, and the summary row every report prints."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from sdk.errors import ConfigError
from sdk.profiles import Budgets
from sdk.qa.bench_bare import Overhead
from sdk.qa.bench_stats import LatencyStats, RatioStats

_MB = 1e6
SUMMARY_COLUMNS = (
    "bundle",
    "runtime",
    "device",
    "precision",
    "size MB",
    "infer p50 ms",
    "p90 ms",
    "p99 ms",
    "p50 ±%",
    "e2e p50 ms",
    "img/s",
    "cold start ms",
    "peak MB",
    "adapter/bare",
    "budgets",
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EndToEnd:
    """``ImageClassifier.classify`` on encoded images held in memory: decode to top-k."""

    latency: LatencyStats
    decode_ms: float  # medians per stage; decode timed on its own, preprocess = the rest
    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float
    images: int
    accuracy: float | None = None  # top-1 on the bench images, when they carry labels

    def to_dict(self) -> dict[str, Any]:
        names = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms")
        stages = {k: round(getattr(self, k), 5) for k in names}
        return {
            "latency": self.latency.to_dict(),
            "stages_p50": stages,
            "images": self.images,
            "accuracy": self.accuracy,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ThroughputPoint:
    mode: str  # "sync": run() on a batch; "async": OpenVINO infer requests in flight
    batch: int
    requests: int
    images_per_s: float
    images: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "images_per_s": round(self.images_per_s, 2),
            "seconds": round(self.seconds, 3),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ColdStart:
    """Medians over fresh processes; each run's numbers are kept in ``runs``."""

    cold_start_ms: float  # load + first inference
    import_ms: float
    load_ms: float
    first_inference_ms: float
    runs: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_runs(cls, runs: Sequence[Mapping[str, Any]]) -> ColdStart:
        def median(key: str) -> float:
            return float(statistics.median(r[key] for r in runs))

        return cls(
            cold_start_ms=median("cold_start_ms"),
            import_ms=median("import_ms"),
            load_ms=median("load_ms"),
            first_inference_ms=median("first_inference_ms"),
            runs=tuple(runs),
        )

    def to_dict(self) -> dict[str, Any]:
        keys = ("cold_start_ms", "import_ms", "load_ms", "first_inference_ms")
        return {**{k: round(getattr(self, k), 3) for k in keys}, "runs": len(self.runs)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Memory:
    """Peak RSS of a fresh process after load + N inferences (the largest over runs)."""

    peak_rss_mb: float
    baseline_rss_mb: float
    delta_mb: float  # peak - baseline: what the runtime and the model cost
    method: str
    inferences: int

    @classmethod
    def from_runs(cls, runs: Sequence[Mapping[str, Any]]) -> Memory:
        worst = max(runs, key=lambda r: r["delta_mb"])
        return cls(
            peak_rss_mb=worst["peak_rss_mb"],
            baseline_rss_mb=worst["baseline_rss_mb"],
            delta_mb=worst["delta_mb"],
            method=worst["memory_method"],
            inferences=worst["inferences"],
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetCheck:
    """One profile budget against what was measured; ``passed`` None: not measured."""

    budget: str
    observed: float | None
    allowed: float
    passed: bool | None
    note: str = ""

    def describe(self) -> str:
        observed = "not measured" if self.observed is None else f"{self.observed:.4g}"
        verdict = {True: "pass", False: "FAIL", None: "not measured"}[self.passed]
        return f"{self.budget} {observed} <= {self.allowed:.4g}: {verdict}" + (f" ({self.note})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Comparison:
    """A result against a baseline measured on the same host in the same run (e.g. the teacher)."""

    baseline: str  # "<bundle> on <runtime>"
    # Inference-only speed-up (> 1 is faster): with ``infer_speedup`` the median of per-block
    # ratios timed interleaved with the baseline; without it, baseline p50 / this p50 of two
    # separate runs, which the machine's load can swing.
    infer_p50_speedup: float
    e2e_p50_speedup: float | None
    throughput_ratio: float | None  # best images/s, this / baseline
    size_ratio: float  # this bundle's bytes / baseline's: < 1 is smaller
    memory_ratio: float | None  # delta MB, this / baseline
    cold_start_speedup: float | None
    infer_speedup: RatioStats | None = None  # the interleaved per-block ratios' spread

    @property
    def speedup_method(self) -> str:
        return "interleaved" if self.infer_speedup else "separate runs"

    def describe_speedup(self) -> str:
        """E.g. ``2.31x (IQR 2.20-2.45)``; a bare ``2.31x`` when it was not timed interleaved."""
        spread = self.infer_speedup
        if spread is None:
            return f"{self.infer_p50_speedup:.2f}x"
        return f"{spread.median:.2f}x (IQR {spread.p25:.2f}-{spread.p75:.2f})"

    def to_dict(self) -> dict[str, Any]:
        data = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}
        data["infer_speedup"] = self.infer_speedup.to_dict() if self.infer_speedup else None
        data["speedup_method"] = self.speedup_method
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class BenchResult:
    """Everything measured for one bundle on one runtime/device."""

    name: str  # the bundle directory's name
    bundle: str
    format: str
    runtime: str
    profile_id: str | None
    session: Mapping[str, Any]  # SessionInfo.to_dict(): actual device, precision, threads
    bundle_size_bytes: int
    inference: LatencyStats
    inference_samples_ms: tuple[float, ...]
    end_to_end: EndToEnd | None
    throughput: tuple[ThroughputPoint, ...]
    cold_start: ColdStart | None
    memory: Memory | None
    overhead: Overhead | None
    budgets: tuple[BudgetCheck, ...]
    host: Mapping[str, Any]
    notes: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.name} on {self.runtime}"

    @property
    def best_throughput(self) -> float | None:
        return max((p.images_per_s for p in self.throughput), default=None)

    @property
    def budgets_passed(self) -> bool | None:
        """False if any budget fails, True if all measured ones pass, None with no budget."""
        verdicts = [c.passed for c in self.budgets if c.passed is not None]
        return all(verdicts) if verdicts else None

    def compare_to(self, baseline: BenchResult, *, interleaved: RatioStats | None = None) -> Comparison:
        """Speed-up and size ratios against ``baseline`` (e.g. the int8 student vs the teacher).

        ``interleaved``: this result's speed-up timed in blocks interleaved with the baseline
        (:func:`sdk.qa.bench_compare.interleaved_speedups`); it then gives the inference speed-up.

        Raises:
            ConfigError: the two were measured on different hosts, where ratios mean nothing.
        """
        if self.host.get("cpu") != baseline.host.get("cpu"):
            raise ConfigError(
                f"{self.label} ran on {self.host.get('cpu')!r} but {baseline.label} on "
                f"{baseline.host.get('cpu')!r}; benchmark both in one run on one host to compare them"
            )

        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b and not math.isnan(b) else None

        mine, theirs = self.end_to_end, baseline.end_to_end
        return Comparison(
            baseline=baseline.label,
            infer_p50_speedup=interleaved.median if interleaved else baseline.inference.p50_ms / self.inference.p50_ms,
            e2e_p50_speedup=ratio(theirs.latency.p50_ms, mine.latency.p50_ms) if mine and theirs else None,
            throughput_ratio=ratio(self.best_throughput, baseline.best_throughput),
            size_ratio=self.bundle_size_bytes / baseline.bundle_size_bytes,
            memory_ratio=ratio(self.memory.delta_mb, baseline.memory.delta_mb)
            if self.memory and baseline.memory
            else None,
            cold_start_speedup=ratio(baseline.cold_start.cold_start_ms, self.cold_start.cold_start_ms)
            if self.cold_start and baseline.cold_start
            else None,
            infer_speedup=interleaved,
        )

    def summary_row(self) -> dict[str, Any]:
        """One line of the summary table (columns: :data:`SUMMARY_COLUMNS`)."""
        session, inf = self.session, self.inference
        verdict = self.budgets_passed
        return {
            "bundle": self.name,
            "runtime": self.runtime,
            "device": str(session.get("actual_device")) + (" (fell back)" if session.get("fell_back") else ""),
            "precision": session.get("precision"),
            "size MB": round(self.bundle_size_bytes / _MB, 3),
            "infer p50 ms": round(inf.p50_ms, 3),
            "p90 ms": round(inf.p90_ms, 3),
            "p99 ms": round(inf.p99_ms, 3),
            "p50 ±%": f"{inf.p50_ci_half_width_pct:.1f}",  # a string: one decimal, not format_cell's three
            "e2e p50 ms": round(self.end_to_end.latency.p50_ms, 3) if self.end_to_end else None,
            "img/s": round(self.best_throughput, 1) if self.best_throughput else None,
            "cold start ms": round(self.cold_start.cold_start_ms, 1) if self.cold_start else None,
            "peak MB": round(self.memory.delta_mb, 1) if self.memory else None,
            "adapter/bare": round(self.overhead.ratio, 3) if self.overhead else None,
            "budgets": "-" if verdict is None else ("pass" if verdict else "FAIL"),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bundle": self.bundle,
            "format": self.format,
            "runtime": self.runtime,
            "profile": self.profile_id,
            "session": dict(self.session),
            "bundle_size_bytes": self.bundle_size_bytes,
            "inference": self.inference.to_dict(),
            "inference_samples_ms": [round(v, 4) for v in self.inference_samples_ms],
            "end_to_end": self.end_to_end.to_dict() if self.end_to_end else None,
            "throughput": [p.to_dict() for p in self.throughput],
            "cold_start": self.cold_start.to_dict() if self.cold_start else None,
            "memory": self.memory.to_dict() if self.memory else None,
            "overhead": self.overhead.to_dict() if self.overhead else None,
            "budgets": [c.to_dict() for c in self.budgets],
            "budgets_passed": self.budgets_passed,
            "notes": list(self.notes),
        }


def check_budgets(
    budgets: Budgets,
    *,
    inference: LatencyStats,
    end_to_end: EndToEnd | None,
    memory: Memory | None,
    bundle_size_bytes: int,
) -> tuple[BudgetCheck, ...]:
    """Compare the measured values with every budget the profile sets.

    Latency is judged on inference-only p95: that is what the bundle decides; decoding cost
    depends on the camera's resolution, so the end-to-end p95 is only quoted in the note.
    Memory is judged on the delta over the Python baseline, which an app on the device pays
    for the runtime and the model whatever language it is written in.
    """
    checks = []
    if budgets.p95_latency_ms is not None:
        note = "inference only" + (f"; end-to-end p95 {end_to_end.latency.p95_ms:.3f} ms" if end_to_end else "")
        checks.append(_check("p95_latency_ms", inference.p95_ms, budgets.p95_latency_ms, note))
    if budgets.peak_memory_mb is not None:
        note = f"peak RSS {memory.peak_rss_mb:.1f} MB incl. Python" if memory else "memory not measured"
        checks.append(_check("peak_memory_mb", memory.delta_mb if memory else None, budgets.peak_memory_mb, note))
    if budgets.bundle_size_mb is not None:
        checks.append(_check("bundle_size_mb", bundle_size_bytes / _MB, budgets.bundle_size_mb, "listed files"))
    return tuple(checks)


def _check(name: str, observed: float | None, allowed: float, note: str) -> BudgetCheck:
    passed = None if observed is None else observed <= allowed
    return BudgetCheck(budget=name, observed=observed, allowed=allowed, passed=passed, note=note)
