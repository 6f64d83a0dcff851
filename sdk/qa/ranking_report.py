"""The results of :mod:`sdk.qa.ranking_stats`: metrics with intervals, paired differences, Markdown.

``RankingReport`` is one row of a table of models (``to_dict()`` for JSON, ``markdown_row()`` and
:func:`markdown_table` for the README); ``PairedComparison`` holds the verdicts of A against B.
Everything here is immutable and safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from sdk.errors import ConfigError

METRICS = ("hr@10", "ndcg@10", "mrr", "recall@20", "coverage@10")
LABELS = {"hr@10": "HR@10", "ndcg@10": "NDCG@10", "mrr": "MRR", "recall@20": "Recall@20", "coverage@10": "Coverage@10"}


class Verdict(str, enum.Enum):
    """The paired test's answer for one metric."""

    A_BETTER = "A better"
    B_BETTER = "B better"
    NOT_DIFFERENT = "not different (CI of the difference includes 0)"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricCI:
    """A metric's point estimate on all cases and its bootstrap interval. Immutable; thread-safe."""

    name: str
    value: float
    low: float
    high: float

    def format(self, digits: int = 3) -> str:
        """``0.512 [0.498, 0.526]``."""
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RankingReport:
    """One model's ranking metrics with their intervals. Immutable; safe to share across threads.

    Attributes:
        model: the model's name.
        n_cases: ranking cases measured; n_groups: baskets / users they came from.
        n_items: the catalogue size.
        resamples, seed, confidence: how the intervals were made.
        metrics: one :class:`MetricCI` per name in :data:`METRICS`, in that order.
    """

    model: str
    n_cases: int
    n_groups: int
    n_items: int
    resamples: int
    seed: int
    confidence: float
    metrics: tuple[MetricCI, ...]

    def metric(self, name: str) -> MetricCI:
        """The metric called ``name`` (one of :data:`METRICS`).

        Raises:
            ConfigError: no metric has that name.
        """
        found = next((m for m in self.metrics if m.name == name), None)
        if found is None:
            raise ConfigError(
                f"ranking report of {self.model!r}: no metric {name!r}; choose one of {', '.join(METRICS)}"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain numbers and strings."""
        return {
            "model": self.model,
            "n_cases": self.n_cases,
            "n_groups": self.n_groups,
            "n_items": self.n_items,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "confidence": self.confidence},
            "metrics": {m.name: m.to_dict() for m in self.metrics},
        }

    def markdown_row(self, digits: int = 3) -> str:
        """This model's row of :func:`markdown_table`: intervals on HR@10 and NDCG@10, the rest as points."""
        cells = [
            self.model,
            self.metric("hr@10").format(digits),
            self.metric("ndcg@10").format(digits),
            f"{self.metric('mrr').value:.{digits}f}",
            f"{self.metric('recall@20').value:.{digits}f}",
            f"{self.metric('coverage@10').value:.{digits}f}",
        ]
        return "| " + " | ".join(cells) + " |"


MARKDOWN_HEADER = (
    "| model | HR@10 [95% CI] | NDCG@10 [95% CI] | MRR | Recall@20 | coverage@10 |\n|---|---|---|---|---|---|"
)


def markdown_table(reports: list[RankingReport] | tuple[RankingReport, ...], digits: int = 3) -> str:
    """A Markdown table of models, one row each, under a line saying what was measured.

    Raises:
        ConfigError: no reports.
    """
    if not reports:
        raise ConfigError("markdown_table: no ranking reports; rank at least one model")
    first = reports[0]
    note = (
        f"{first.n_cases:,} cases from {first.n_groups:,} groups over {first.n_items:,} items; "
        f"{first.confidence:.0%} bootstrap intervals over groups ({first.resamples} resamples, seed {first.seed})."
    )
    return "\n".join([note, "", MARKDOWN_HEADER, *(r.markdown_row(digits) for r in reports)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricDifference:
    """``a - b`` for one metric, its paired bootstrap interval and the verdict. Immutable; thread-safe."""

    name: str
    a: float
    b: float
    difference: float
    low: float
    high: float
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verdict": self.verdict.value}


@dataclasses.dataclass(frozen=True, kw_only=True)
class PairedComparison:
    """Model A against model B on the same cases and the same resampled groups. Immutable; thread-safe."""

    model_a: str
    model_b: str
    n_cases: int
    n_groups: int
    resamples: int
    seed: int
    confidence: float
    differences: tuple[MetricDifference, ...]

    def verdict(self, name: str) -> Verdict:
        """The verdict for the metric called ``name``.

        Raises:
            ConfigError: no metric has that name.
        """
        for difference in self.differences:
            if difference.name == name:
                return difference.verdict
        raise ConfigError(f"comparison {self.model_a!r} vs {self.model_b!r}: no metric {name!r}; one of {METRICS}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain numbers and strings."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "n_cases": self.n_cases,
            "n_groups": self.n_groups,
            "bootstrap": {"resamples": self.resamples, "seed": self.seed, "confidence": self.confidence},
            "differences": {d.name: d.to_dict() for d in self.differences},
        }

    def markdown(self, digits: int = 3) -> str:
        """A table: metric, A, B, A - B [CI], verdict (with the model names in place of A and B)."""
        names = {Verdict.A_BETTER: f"{self.model_a} better", Verdict.B_BETTER: f"{self.model_b} better"}
        lines = [
            f"| metric | A: {self.model_a} | B: {self.model_b} | A - B [{self.confidence:.0%} CI] | verdict |",
            "|---|---|---|---|---|",
        ]
        for d in self.differences:
            verdict = names.get(d.verdict, d.verdict.value)
            lines.append(
                f"| {LABELS[d.name]} | {d.a:.{digits}f} | {d.b:.{digits}f} | "
                f"{d.difference:+.{digits}f} [{d.low:+.{digits}f}, {d.high:+.{digits}f}] | {verdict} |"
            )
        return "\n".join(lines)
