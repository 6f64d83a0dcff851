"""Parity checks: each tolerance a profile sets, compared with the metric it bounds.

:func:`evaluate` turns the flat metrics of :func:`sdk.qa.parity.compute_metrics` into one
:class:`Check` per tolerance that is set, and :class:`ParityVerdict` gathers them. A NaN
observation never passes; a metric that was not measured fails unless the caller skips it.
:func:`jsonable` makes metrics strict JSON (NaN -> ``None``) for the reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from sdk.errors import ConfigError
from sdk.profiles import ParityTolerance

Tier = Literal["tensor", "output", "task"]
Comparison = Literal["<=", ">="]
Missing = Literal["fail", "skip"]

# Which metric each ParityTolerance field bounds, in which tier, in which direction: an
# explicit table, so a new tolerance field without a metric is caught by a test, not guessed.
# Cosine and KL are gated on their mean over samples (the worst sample is reported next to
# them); the tensor tier's max_abs_diff already bounds the worst case for float precisions.
TOLERANCE_METRICS: dict[str, tuple[Tier, str, Comparison]] = {
    "max_abs_diff": ("tensor", "max_abs_diff", "<="),
    "mean_abs_diff": ("tensor", "mean_abs_diff", "<="),
    "p99_abs_diff": ("tensor", "p99_abs_diff", "<="),
    "min_psnr_db": ("tensor", "psnr_db", ">="),
    "min_cosine": ("output", "cosine_mean", ">="),
    "max_kl": ("output", "kl_mean", "<="),
    "min_top1_agreement": ("task", "top1_agreement", ">="),
    "min_top5_overlap": ("task", "top5_overlap", ">="),
    "min_accuracy_ratio": ("task", "accuracy_ratio", ">="),
    "max_worst_class_recall_drop": ("task", "worst_class_recall_drop", "<="),
    # Recommendations: the candidate's top-10 against the reference's.
    "min_overlap_at_10": ("task", "overlap_at_10", ">="),
    "min_ndcg_at_10": ("task", "ndcg_at_10_vs_reference", ">="),
}
# A profile's tolerance line serves image and recommendation bundles alike; each task is judged
# only on the fields that mean something for it (held-out accuracy_ratio is NDCG@10's for a recommender).
TASK_FIELDS: dict[str, frozenset[str]] = {
    "classification": frozenset(TOLERANCE_METRICS) - {"min_overlap_at_10", "min_ndcg_at_10"},
    "recommendation": frozenset(
        {"max_abs_diff", "mean_abs_diff", "p99_abs_diff", "min_cosine", "min_accuracy_ratio"}
        | {"min_overlap_at_10", "min_ndcg_at_10"}
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Check:
    """One tolerance compared with one observed metric."""

    tier: Tier
    metric: str
    observed: float | None  # None: the metric was not measured
    allowed: float
    comparison: Comparison
    passed: bool
    note: str = ""

    def describe(self) -> str:
        """One line for logs and summaries, e.g. ``task top1_agreement 0.93 >= 0.95: FAIL``."""
        observed = "not measured" if self.observed is None else f"{self.observed:.6g}"
        text = f"{self.tier} {self.metric} {observed} {self.comparison} {self.allowed:.6g}: "
        text += "pass" if self.passed else "FAIL"
        return f"{text} ({self.note})" if self.note else text

    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParityVerdict:
    """Every check of one candidate against the reference; passes only if each one does.

    With no tolerance set there are no checks and the verdict passes vacuously; ``checked``
    in :meth:`to_dict` says so.
    """

    checks: tuple[Check, ...]
    skipped: tuple[str, ...] = ()  # metrics not measured and skipped (``missing="skip"``)

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failed(self) -> tuple[str, ...]:
        """Names of the metrics whose checks failed, in tier order."""
        return tuple(check.metric for check in self.checks if not check.passed)

    @classmethod
    def from_metrics(
        cls, metrics: Mapping[str, Any], tolerance: ParityTolerance, *, missing: Missing = "fail"
    ) -> ParityVerdict:
        """Evaluate ``metrics`` against ``tolerance`` (see :func:`evaluate`).

        Raises:
            ConfigError: ``missing`` is not "fail" or "skip".
        """
        checks = evaluate(metrics, tolerance, missing=missing)
        measured = {check.metric for check in checks}
        skipped = tuple(
            metric
            for name, (_, metric, _) in TOLERANCE_METRICS.items()
            if getattr(tolerance, name) is not None and metric not in measured
        )
        return cls(checks=tuple(checks), skipped=skipped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": list(self.failed),
            "checked": len(self.checks),
            "checks": [check.to_dict() for check in self.checks],
            "skipped": list(self.skipped),
        }


def evaluate(
    metrics: Mapping[str, Any],
    tolerance: ParityTolerance,
    *,
    missing: Missing = "fail",
    task: str = "classification",
) -> list[Check]:
    """One check per tolerance field that is set and applies to ``task``, in declaration order.

    A NaN observation fails. A metric that is absent or ``None`` (no labels, an embedding
    model) fails with ``missing="fail"`` — a gate must not pass on what it never measured —
    and is left out with ``missing="skip"``.

    Args:
        metrics: the flat dict from :func:`compute_metrics` (or the tiers merged by hand).
        tolerance: the profile's tolerances for the candidate's precision.
        missing: what to do with a tolerance whose metric was not measured.
        task: ``classification`` or ``recommendation`` (:data:`TASK_FIELDS`).

    Raises:
        ConfigError: ``missing`` is not "fail" or "skip", or ``task`` is unknown.
        KeyError: a ParityTolerance field has no entry in TOLERANCE_METRICS (a bug here).
    """
    if missing not in ("fail", "skip"):
        raise ConfigError(f"missing must be 'fail' or 'skip', got {missing!r}")
    if task not in TASK_FIELDS:
        raise ConfigError(f"parity task must be one of {', '.join(TASK_FIELDS)}, got {task!r}")
    checks: list[Check] = []
    for field in dataclasses.fields(tolerance):
        allowed = getattr(tolerance, field.name)
        if allowed is None or field.name not in TASK_FIELDS[task]:
            continue
        tier, metric, comparison = TOLERANCE_METRICS[field.name]
        value = metrics.get(metric)
        if value is None:
            if missing == "skip":
                continue
            observed, passed, note = None, False, "not measured"
        else:
            observed = float(value)
            if math.isnan(observed):
                passed, note = False, "NaN: non-finite outputs or an undefined metric"
            else:
                passed = observed <= allowed if comparison == "<=" else observed >= allowed
                note = ""
        checks.append(
            Check(
                tier=tier,
                metric=metric,
                observed=observed,
                allowed=float(allowed),
                comparison=comparison,
                passed=passed,
                note=note,
            )
        )
    return checks


def jsonable(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
