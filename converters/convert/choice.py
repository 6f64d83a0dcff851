"""Which candidate ``convert`` ships: the accuracy budget each one is judged by, and the choice among them."""

from __future__ import annotations

from collections.abc import Sequence

from converters.convert.plan import ConvertPlan
from converters.convert.report import Variant
from sdk.enums import Precision


def budget_misses(
    plan: ConvertPlan, precision: Precision, drop_pt: float, top1: float, fp32_top1: float, agreement: float
) -> tuple[str, ...]:
    """What a candidate misses: the profile's accuracy budget, and the task tier of its parity tolerances.

    The task tier (top-1 agreement, accuracy as a fraction of fp32) is what ``shelfedge parity``
    will check against the model the bundle was made from, so a bundle chosen here passes it.
    """
    tol = plan.profile.tolerance(precision)
    ratio = top1 / fp32_top1 if fp32_top1 > 0 else 1.0
    misses = []
    if drop_pt > plan.max_drop_pt + 1e-9:
        misses.append(f"drop {drop_pt:.2f} pt > budget {plan.max_drop_pt:g} pt")
    if tol.min_accuracy_ratio is not None and ratio < tol.min_accuracy_ratio - 1e-9:
        misses.append(f"accuracy {ratio:.4f} of fp32 < parity min_accuracy_ratio {tol.min_accuracy_ratio:g}")
    if tol.min_top1_agreement is not None and agreement < tol.min_top1_agreement - 1e-9:
        misses.append(f"top-1 agreement {agreement:.4f} < parity min_top1_agreement {tol.min_top1_agreement:g}")
    return tuple(misses)


def choose(variants: Sequence[Variant], plan: ConvertPlan) -> Variant:
    """The candidate to ship; the fp32 bundle when no other qualifies.

    Precisions are tried in the profile's order of preference. A candidate qualifies when it
    meets the budget and is not larger than the fp32 bundle of the same format
    (:attr:`Variant.larger_than_fp32`); within one precision (int8 by PTQ, int8 after QAT) the smallest
    that qualifies wins, the first one on a tie.
    """
    for precision in plan.precisions:
        qualifying = [v for v in variants if v.precision is precision and v.meets_budget and not v.larger_than_fp32]
        if qualifying:
            return min(qualifying, key=lambda v: v.size_bytes)  # min keeps the first of equals
    return _fp32(variants)


def _fp32(variants: Sequence[Variant]) -> Variant:
    return next(v for v in variants if v.precision is Precision.FP32)
