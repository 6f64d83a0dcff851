"""What ``convert`` reports for a recommendation model: each bundle's rankings, one row per candidate, JSON, Markdown.

The rows keep the attributes :func:`converters.convert.choice.choose` reads (``precision``,
``meets_budget``, ``larger_than_fp32``, ``size_bytes``), so recommendation candidates are chosen by
the same rule as image ones.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from converters.convert.plan import ConvertPlan
from sdk.bundle import Bundle
from sdk.enums import Precision
from sdk.qa.ranking import RankedCases
from sdk.qa.ranking_report import RankingReport
from sdk.qa.tables import markdown_table
from sdk.runtime import SessionInfo
from sdk.versions import host_info, tool_versions

REPORT_SCHEMA_VERSION = 1
REC_COLUMNS = [
    "variant",
    "precision",
    "size MB",
    "size vs fp32",
    "val NDCG@10",
    "drop pt",
    "val overlap@10",
    "test NDCG@10 [95% CI]",
    "test HR@10",
    "coverage@10",
    "kept in float",
    "meets budget",
    "chosen",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecEvaluation:
    """One bundle ranked on the validation and test cases through ``sdk.Recommender``. Immutable.

    Attributes:
        val: the validation cases ranked (NDCG@10 for the budget and the choice).
        test: the test cases ranked (the report's numbers).
        test_report: HR@10, NDCG@10, MRR, Recall@20, coverage@10 of ``test`` with 95 % intervals.
        ran: what ran the encoder (runtime, version, device, fallback).
        seconds: wall time of the two rankings.
    """

    val: RankedCases
    test: RankedCases
    test_report: RankingReport
    ran: SessionInfo
    seconds: float

    @property
    def val_ndcg(self) -> float:
        return float(self.val.per_case()["ndcg@10"].mean())

    @property
    def dataset(self) -> str:
        return f"{len(self.val)} validation / {len(self.test)} test cases"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecVariant:
    """One verified recommendation candidate: a row of the report. Immutable.

    Attributes:
        drop_pt: validation NDCG@10 below the fp32 bundle's, in points (NDCG x 100).
        overlap: the share of the fp32 bundle's top-10 items its top-10 keeps, mean over validation cases.
        test_overlap: the same over the test cases (reported, never chosen on).
        misses: what it misses of the budget and the parity tolerances; empty when it meets them.
        size_bytes: the bundle's bytes on disk (encoder and item files).
        fp32_size_bytes: the same of the fp32 bundle of the same format.
    """

    name: str
    bundle: Bundle
    precision: Precision
    evaluation: RecEvaluation
    drop_pt: float
    overlap: float
    test_overlap: float
    misses: tuple[str, ...]
    kept_in_float: int
    size_bytes: int
    fp32_size_bytes: int
    seconds: float
    chosen: bool = False

    @property
    def meets_budget(self) -> bool:
        return not self.misses

    @property
    def size_vs_fp32(self) -> float:
        return self.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else float("nan")

    @property
    def larger_than_fp32(self) -> bool:
        """A quantized bundle taking more bytes than the fp32 one of its format: ``convert`` does not choose it."""
        return self.precision is not Precision.FP32 and self.size_bytes > self.fp32_size_bytes

    def row(self) -> dict[str, Any]:
        report = self.evaluation.test_report
        return {
            "variant": self.name,
            "precision": self.precision.value,
            "size MB": round(self.size_bytes / 1e6, 3),
            "size vs fp32": round(self.size_vs_fp32, 3),
            "val NDCG@10": round(self.evaluation.val_ndcg, 4),
            "drop pt": round(self.drop_pt, 2) + 0.0,  # + 0.0: no "-0.00" for a gain rounded away
            "val overlap@10": round(self.overlap, 3),
            "test NDCG@10 [95% CI]": report.metric("ndcg@10").format(),
            "test HR@10": round(report.metric("hr@10").value, 4),
            "coverage@10": round(report.metric("coverage@10").value, 3),
            "kept in float": self.kept_in_float,
            "meets budget": self.meets_budget,
            "chosen": self.chosen,
        }

    def to_dict(self) -> dict[str, Any]:
        ev = self.evaluation
        return {
            **self.row(),
            "format": self.bundle.manifest.format.value,
            "bundle": str(self.bundle.path),
            "val_ndcg@10": round(ev.val_ndcg, 6),
            "test_overlap@10": round(self.test_overlap, 4),
            "test": ev.test_report.to_dict(),
            "ran": ev.ran.to_dict(),
            "verify_seconds": round(ev.seconds, 1),
            "seconds": round(self.seconds, 1),
            "misses": list(self.misses),
            "larger_than_fp32": self.larger_than_fp32,
            "kept_in_float_layers": [k.to_dict() for k in self.bundle.manifest.kept_in_float],
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecConvertReport:
    """A finished recommendation conversion for one profile: every candidate, the chosen bundle, and why.

    Immutable; safe to share across threads.
    """

    plan: ConvertPlan
    variants: tuple[RecVariant, ...]
    chosen: Bundle
    data: dict[str, Any]
    source: str
    model: dict[str, Any]
    seconds: float
    steps: tuple[dict[str, Any], ...]

    @property
    def chosen_variant(self) -> RecVariant:
        return next(v for v in self.variants if v.chosen)

    def rows(self) -> list[dict[str, Any]]:
        return [v.row() for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "task": "recommendation",
            "plan": {**self.plan.to_dict(), "budget": "validation NDCG@10 points vs the fp32 bundle"},
            "source": self.source,
            "model": self.model,
            "data": self.data,
            "chosen": str(self.chosen.path),
            "variants": [v.to_dict() for v in self.variants],
            "steps": list(self.steps),
            "host": host_info(),
            "tool_versions": tool_versions(),
            "seconds": round(self.seconds, 1),
        }

    def to_markdown(self) -> str:
        p = self.plan
        ran = self.variants[0].evaluation.ran
        where = f"{ran.runtime.value} on {ran.actual_device}" + (" (fell back)" if ran.fell_back else "")
        chosen = self.chosen_variant
        data = self.data
        macs = self.model.get("macs_per_request")
        cost = f" Encoder {macs['encoder']:,} MACs per request, scoring {macs['scoring']:,}." if macs else ""
        return (
            f"# shelfedge convert (recommendation): {p.profile.id}\n\n"
            f"Source: {self.source}.{cost} Target: {p.profile.description}.\n"
            f"Data: {data['note']}; {data['split']}.\n"
            f"Format {p.format.value}, item table {data['table_precision']}; encoder precisions tried in order of "
            f"preference: {', '.join(x.value for x in p.precisions)}; budget: at most {p.max_drop_pt:g} pt "
            f"validation NDCG@10 (x 100) below the fp32 bundle, and the task tier of the profile's parity "
            f"tolerances (NDCG@10 as a fraction of fp32's, top-10 overlap with fp32's); a quantized bundle larger "
            f"than the fp32 one is not chosen. Verified through sdk.Recommender ({where}) on "
            f"{data['val_cases']} validation and {data['test_cases']} test cases; test intervals are 95 % "
            f"bootstrap over {data['groups']}.\n\n"
            f"{markdown_table(self.rows(), REC_COLUMNS)}\n\n"
            + "".join(f"- {v.name} misses: {'; '.join(v.misses)}\n" for v in self.variants if v.misses)
            + "".join(
                f"- {v.name} is not chosen: {v.size_bytes / 1e6:.3f} MB, larger than the fp32 bundle "
                f"({v.fp32_size_bytes / 1e6:.3f} MB)\n"
                for v in self.variants
                if v.larger_than_fp32
            )
            + f"\nChosen: `{self.chosen.path}` ({chosen.precision.value}, {chosen.size_vs_fp32:.2f}x the size of "
            f"the fp32 {p.format.value} bundle). Calibration: {data.get('calibration')}.\n"
        )
