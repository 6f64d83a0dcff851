"""Prometheus metrics in the text exposition format (0.0.4), written by hand: no extra dependency.

Request counts by method, route and status; request latency histograms by route; the
classifier's and recommender's stage latencies; and one ``_info`` gauge per model saying which
bundle, runtime and device serve it.

Thread safety: :class:`Metrics` is safe to share across request threads (one lock).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Seconds: a kiosk request is a few ms to a few hundred; above 10 s something is wrong.
BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_PREFIX = "shelfedge_demo"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else f"{int(value)}"


class _Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last: above every bound (+Inf only)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, pairs: tuple[tuple[str, str], ...]) -> list[str]:
        out, cumulative = [], 0
        for bound, count in zip(BUCKETS, self.counts, strict=False):
            cumulative += count
            out.append(f"{name}_bucket{_labels((*pairs, ('le', _number(bound))))} {cumulative}")
        out.append(f"{name}_bucket{_labels((*pairs, ('le', '+Inf')))} {self.n}")
        out.append(f"{name}_sum{_labels(pairs)} {self.total!r}")
        out.append(f"{name}_count{_labels(pairs)} {self.n}")
        return out


class Metrics:
    """The app's counters and histograms; :meth:`render` writes them in the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[tuple[str, str], ...], int] = defaultdict(int)
        self._latency: dict[tuple[tuple[str, str], ...], _Histogram] = defaultdict(_Histogram)
        self._stages: dict[tuple[tuple[str, str], ...], _Histogram] = defaultdict(_Histogram)
        self._info: dict[str, Mapping[str, str]] = {}

    def set_model_info(self, model: str, info: Mapping[str, str]) -> None:
        """Record which bundle, runtime and device serve ``model`` (``classifier`` or ``recommender``)."""
        with self._lock:
            self._info[model] = dict(info)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(("method", method), ("route", route), ("status", str(status)))] += 1
            self._latency[(("route", route),)].observe(seconds)

    def observe_stages(self, model: str, stages_ms: Mapping[str, float]) -> None:
        """One model call's stage latencies in milliseconds (stored in seconds, Prometheus' unit)."""
        with self._lock:
            for stage, ms in stages_ms.items():
                self._stages[(("model", model), ("stage", stage))].observe(ms / 1e3)

    def render(self) -> str:
        """Every metric in the text exposition format, ending with a newline."""
        with self._lock:
            lines = [
                f"# HELP {_PREFIX}_requests_total HTTP requests served, by method, route and status.",
                f"# TYPE {_PREFIX}_requests_total counter",
            ]
            lines += [f"{_PREFIX}_requests_total{_labels(k)} {v}" for k, v in sorted(self._requests.items())]
            lines += [
                f"# HELP {_PREFIX}_request_duration_seconds HTTP request latency, by route.",
                f"# TYPE {_PREFIX}_request_duration_seconds histogram",
            ]
            for key, hist in sorted(self._latency.items()):
                lines += hist.lines(f"{_PREFIX}_request_duration_seconds", key)
            lines += [
                f"# HELP {_PREFIX}_model_stage_seconds Model call latency by model and stage.",
                f"# TYPE {_PREFIX}_model_stage_seconds histogram",
            ]
            for key, hist in sorted(self._stages.items()):
                lines += hist.lines(f"{_PREFIX}_model_stage_seconds", key)
            lines += [
                f"# HELP {_PREFIX}_model_info The bundle, runtime and device serving each model (always 1).",
                f"# TYPE {_PREFIX}_model_info gauge",
            ]
            for model, info in sorted(self._info.items()):
                pairs = (("model", model), *sorted(info.items()))
                lines.append(f"{_PREFIX}_model_info{_labels(pairs)} 1")
        return "\n".join(lines) + "\n"
