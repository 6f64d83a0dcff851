"""What ``convert`` reports: one verified row per candidate bundle, and the run as JSON and Markdown."""

from __future__ import annotations

import dataclasses
from typing import Any

from converters.convert.plan import ConvertPlan
from sdk.bundle import Bundle
from sdk.enums import Precision
from sdk.qa.evaluation import Evaluation
from sdk.qa.tables import markdown_table
from sdk.versions import host_info, tool_versions

REPORT_SCHEMA_VERSION = 1
COLUMNS = [
    "variant",
    "format",
    "precision",
    "size MB",
    "size vs fp32",
    "val top-1",
    "drop pt",
    "agreement",
    "kept in float",
    "meets budget",
    "chosen",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """One verified candidate: a row of the report.

    Attributes:
        misses: what it misses of the accuracy budget; empty when it meets it.
        size_bytes: the bundle's bytes on disk, measured when it was verified.
        fp32_size_bytes: the same of the fp32 bundle of the same format, the yardstick of its size.
    """

    name: str
    bundle: Bundle
    precision: Precision
    evaluation: Evaluation
    drop_pt: float
    agreement: float
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
        """Bytes over the fp32 bundle's of the same format: 0.26 is about 4x smaller, 1.0 the fp32 bundle."""
        return self.size_bytes / self.fp32_size_bytes if self.fp32_size_bytes else float("nan")

    @property
    def larger_than_fp32(self) -> bool:
        """A quantized bundle that takes more bytes than the fp32 one of its format.

        Such a bundle (e.g. an "int8" one with most layers kept in float, plus their quantize and
        dequantize ops) is less accurate and not smaller: ``convert`` does not choose it.
        """
        return self.precision is not Precision.FP32 and self.size_bytes > self.fp32_size_bytes

    def row(self) -> dict[str, Any]:
        return {
            "variant": self.name,
            "format": self.bundle.manifest.format.value,
            "precision": self.precision.value,
            "size MB": round(self.size_bytes / 1e6, 3),
            "size vs fp32": round(self.size_vs_fp32, 3),
            "val top-1": round(self.evaluation.top1, 4),
            "drop pt": round(self.drop_pt, 2),
            "agreement": round(self.agreement, 4),
            "kept in float": self.kept_in_float,
            "meets budget": self.meets_budget,
            "chosen": self.chosen,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertReport:
    """A finished conversion for one profile: every candidate, the chosen bundle, and why.

    Immutable; safe to share across threads.
    """

    plan: ConvertPlan
    variants: tuple[Variant, ...]
    chosen: Bundle
    data: dict[str, Any]
    source: str
    seconds: float
    steps: tuple[dict[str, Any], ...]

    @property
    def chosen_variant(self) -> Variant:
        """The row of the chosen bundle (its size against the fp32 bundle of the same format, its accuracy)."""
        return next(v for v in self.variants if v.chosen)

    def rows(self) -> list[dict[str, Any]]:
        return [v.row() for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "plan": self.plan.to_dict(),
            "source": self.source,
            "data": self.data,
            "chosen": str(self.chosen.path),
            "variants": [
                {
                    **v.row(),
                    "bundle": str(v.bundle.path),
                    "val_top5": round(v.evaluation.top5, 4),
                    "ran": v.evaluation.ran.to_dict(),
                    "seconds": round(v.seconds, 1),
                    "misses": list(v.misses),
                    "larger_than_fp32": v.larger_than_fp32,
                    "kept_in_float_layers": [k.to_dict() for k in v.bundle.manifest.kept_in_float],
                }
                for v in self.variants
            ],
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
        return (
            f"# shelfedge convert: {p.profile.id}\n\n"
            f"Source: {self.source}. Target: {p.profile.description}.\n"
            f"Format {p.format.value}; precisions tried in order of preference: "
            f"{', '.join(x.value for x in p.precisions)}; budget: at most {p.max_drop_pt} pt val top-1 "
            f"below the fp32 model, and the task tier of the profile's parity tolerances for the precision "
            f"(top-1 agreement, accuracy as a fraction of fp32); a quantized bundle larger than the fp32 one "
            f"is not chosen. Verified through sdk.load ({where}) on "
            f"{self.data['val_images']} val images; agreement = top-1 equal to the fp32 model's.\n\n"
            f"{markdown_table(self.rows(), COLUMNS)}\n\n"
            + "".join(f"- {v.name} misses: {'; '.join(v.misses)}\n" for v in self.variants if v.misses)
            + "".join(
                f"- {v.name} is not chosen: {v.size_bytes / 1e6:.3f} MB, larger than the fp32 bundle "
                f"({v.fp32_size_bytes / 1e6:.3f} MB)\n"
                for v in self.variants
                if v.larger_than_fp32
            )
            + f"\nChosen: `{self.chosen.path}` ({chosen.precision.value}, {chosen.size_vs_fp32:.2f}x the size of "
            f"the fp32 {p.format.value} bundle). Calibration: {self.data.get('calibration')}.\n"
        )
