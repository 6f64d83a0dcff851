"""The accuracy-budget search every quantize step shares, and the result it ends in.

With an accuracy budget each format runs the same search (``search_budget``): plain
post-training quantization; then the library's own accuracy control where it has one; then the
most sensitive layers kept in float, 1, 2, 4, 8 at a time, until the drop fits. Every try is an
``Attempt``; what was kept and why becomes the manifest's ``kept_in_float``. ``budget_result``
turns the search into the ``QuantResult`` and its provenance record, the same way for every format.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from converters.export.steps import short_cause
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import (
    Attempt,
    Candidate,
    EvalFn,
    LayerSensitivity,
    QuantResult,
    check_accuracy,
    check_budget,
    keep_only,
    step_record,
)
from sdk.enums import Precision
from sdk.manifest import KeptInFloat
from sdk.progress import Log


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budget:
    """What a quantized model must keep of the fp32 model's accuracy.

    Attributes:
        fp32_accuracy: the fp32 model's accuracy, a fraction in [0, 1].
        max_drop: allowed drop in accuracy points (1.0 = one point), like the profile's
            ``max_accuracy_drop_pt``. 0 forces the search past plain PTQ: a drop measured as 0 on
            finite validation data does not prove that nothing was lost.
        max_ignored: most layers the fallback keeps in float.
    """

    fp32_accuracy: float
    max_drop: float
    max_ignored: int

    @classmethod
    def checked(cls, fp32_accuracy: float, max_drop: float, max_ignored: int, where: str) -> Budget:
        """A budget whose values were checked first.

        Raises:
            ConfigError: see ``common.check_budget``.
        """
        check_budget(fp32_accuracy, max_drop, max_ignored, where)
        return cls(fp32_accuracy=float(fp32_accuracy), max_drop=max_drop, max_ignored=max_ignored)

    @property
    def forced(self) -> bool:
        return self.max_drop <= 0.0

    def to_record(self) -> dict[str, Any]:
        return {"fp32_accuracy": self.fp32_accuracy, "max_drop": self.max_drop, "max_ignored": self.max_ignored}


@dataclasses.dataclass(frozen=True, kw_only=True)
class BudgetSearch:
    """The format-specific parts of the search.

    Attributes:
        quantize: ``(extra layers to keep in float, dir) -> Candidate`` written under dir.
        evaluate: accuracy (fraction) of a model file, on the data ``fp32_accuracy`` came from.
        rank: sensitivities of the plain PTQ model, most sensitive first.
        accuracy_control: ``(plain model, dir) -> Candidate``, the library's own; its failures
            are recorded as attempts, not raised.
        log: called with one line per attempt.
    """

    quantize: Callable[[tuple[str, ...], Path], Candidate]
    evaluate: EvalFn
    rank: Callable[[Path], Sequence[LayerSensitivity]]
    accuracy_control: Callable[[Path, Path], Candidate] | None = None
    log: Log | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchOutcome:
    """The chosen candidate, moved into the step's ``out_dir``, with the evidence."""

    model_path: Path
    kept_in_float: tuple[KeptInFloat, ...]
    attempts: tuple[Attempt, ...]
    met_budget: bool


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Measured:
    candidate: Candidate
    attempt: Attempt
    reasons: Mapping[str, str]


class _Trail:
    """The attempts of one search, in order (single-threaded, private to ``search_budget``)."""

    def __init__(self, budget: Budget, evaluate: EvalFn, log: Log | None) -> None:
        self.budget = budget
        self.evaluate = evaluate
        self.say = log or (lambda line: None)
        self.attempts: list[Attempt] = []
        self.measured: list[_Measured] = []

    def measure(
        self, candidate: Candidate, reasons: Callable[[Attempt], Mapping[str, str]], plain: bool = False
    ) -> _Measured:
        budget = self.budget
        accuracy = check_accuracy(self.evaluate(candidate.model_path), "eval_fn's result")
        # Points, rounded so 0.90 - 0.89 is a 1.0 pt drop, not 1.0000000000000009.
        drop = round(100.0 * (budget.fp32_accuracy - accuracy), 6)
        attempt = Attempt(
            description=candidate.description,
            kept=candidate.kept,
            accuracy=accuracy,
            drop=drop,
            met_budget=drop <= budget.max_drop and not (budget.forced and (plain or not candidate.kept)),
        )
        self.attempts.append(attempt)
        self.say(
            f"{candidate.description}: accuracy {100 * accuracy:.2f}%, drop {drop:.2f} pt "
            f"(budget {budget.max_drop:g} pt)"
        )
        measured = _Measured(candidate=candidate, attempt=attempt, reasons=reasons(attempt))
        self.measured.append(measured)
        return measured

    def failed(self, description: str) -> None:
        self.attempts.append(Attempt(description=description, kept=(), accuracy=None, drop=None, met_budget=False))
        self.say(description)

    def best(self) -> _Measured:
        """The most accurate try, the fewest float layers on a tie."""
        return max(self.measured, key=lambda m: (m.attempt.accuracy, -len(m.attempt.kept)))


def search_budget(search: BudgetSearch, budget: Budget, *, work_dir: Path, out_dir: Path) -> SearchOutcome:
    """Find the least-float quantization within ``budget`` and move its files into ``out_dir``.

    Order: plain PTQ; ``search.accuracy_control`` (given the plain model) when there is one;
    then the layers ``search.rank`` finds most sensitive in the plain model kept in float,
    1, 2, 4, 8... (``ladder``). Every candidate is written below ``work_dir``, one directory
    each; when none meets the budget, the most accurate one is chosen.

    Raises:
        ConfigError: ``search.evaluate`` returned something that is not an accuracy in [0, 1].
        ConversionError: plain quantization or ranking failed (from ``quantize`` / ``rank``).
    """
    trail = _Trail(budget, search.evaluate, search.log)
    plain = search.quantize((), work_dir / "ptq")
    first = trail.measure(plain, lambda attempt: {}, plain=True)
    chosen = first if first.attempt.met_budget else None
    if chosen is None:
        assert first.attempt.drop is not None
        miss = f"plain int8 PTQ dropped {first.attempt.drop:.2f} pt (budget {budget.max_drop:g} pt" + (
            ", and a budget of 0 forces accuracy control)" if budget.forced else ")"
        )
        if search.accuracy_control is not None:
            chosen = _try_accuracy_control(search.accuracy_control, plain, miss, trail, work_dir)
        chosen = chosen or _try_ladder(search, plain, miss, trail, work_dir)
    met = chosen is not None
    chosen = chosen or trail.best()
    candidate = chosen.candidate
    kept = tuple(
        KeptInFloat(
            layer=name,
            precision=Precision.FP32,
            reason=chosen.reasons.get(name, candidate.reasons.get(name, "")),
        )
        for name in candidate.kept
    )
    keep_only(candidate.model_path.parent, out_dir)
    return SearchOutcome(
        model_path=out_dir / candidate.model_path.name,
        kept_in_float=kept,
        attempts=tuple(trail.attempts),
        met_budget=met,
    )


def _try_accuracy_control(
    control: Callable[[Path, Path], Candidate], plain: Candidate, miss: str, trail: _Trail, work_dir: Path
) -> _Measured | None:
    try:
        candidate = control(plain.model_path, work_dir / "accuracy_control")
    except Exception as e:  # any library failure means: use the fallback after it
        trail.failed(f"library accuracy control failed ({type(e).__name__}: {short_cause(e)})")
        return None
    measured = trail.measure(
        candidate,
        lambda attempt: {
            name: f"{miss}; {candidate.reasons.get(name, candidate.description)}; "
            f"the result dropped {attempt.drop:.2f} pt"
            for name in candidate.kept
        },
    )
    return measured if measured.attempt.met_budget else None


def _try_ladder(search: BudgetSearch, plain: Candidate, miss: str, trail: _Trail, work_dir: Path) -> _Measured | None:
    layers = list(search.rank(plain.model_path))
    for count in ladder(trail.budget.max_ignored, len(layers)):
        chosen = layers[:count]
        candidate = search.quantize(tuple(s.name for s in chosen), work_dir / f"keep{count}")
        candidate = dataclasses.replace(
            candidate, description=f"int8 PTQ keeping the {count} most sensitive layer(s) in float"
        )
        measured = trail.measure(
            candidate,
            lambda attempt, chosen=chosen, count=count: {
                s.name: f"{miss}; sensitivity rank {i + 1} of {len(layers)} ({s.describe()}); "
                f"keeping the top {count} in float dropped {attempt.drop:.2f} pt"
                for i, s in enumerate(chosen)
            },
        )
        if measured.attempt.met_budget:
            return measured
    return None


def ladder(max_ignored: int, available: int) -> tuple[int, ...]:
    """How many layers each fallback attempt keeps in float: 1, 2, 4, 8... capped at both limits."""
    limit = min(max_ignored, available)
    counts: list[int] = []
    k = 1
    while k < limit:
        counts.append(k)
        k *= 2
    if limit > 0:
        counts.append(limit)
    return tuple(counts)


def budget_result(
    outcome: SearchOutcome,
    budget: Budget,
    *,
    step: str,
    tools: tuple[str, ...],
    config: object,
    calibration: CalibrationSet,
    started: float,
    extra: Mapping[str, Any] | None = None,
) -> QuantResult:
    """The ``QuantResult`` of a budgeted quantization, with its provenance record.

    The step record holds ``config``, the calibration set, ``extra`` and ``budget``: the budget
    itself, whether it was met, every attempt and the layers kept in float.

    Args:
        step, tools: the step's name and the distributions whose versions it records.
        started: ``time.perf_counter()`` when the step began.
    """
    record = {
        **dict(extra or {}),
        "budget": {
            **budget.to_record(),
            "met_budget": outcome.met_budget,
            "attempts": outcome.attempts,
            "kept_in_float": outcome.kept_in_float,
        },
    }
    return QuantResult(
        model_path=outcome.model_path,
        precision=Precision.INT8,
        kept_in_float=outcome.kept_in_float,
        attempts=outcome.attempts,
        met_budget=outcome.met_budget,
        step=step_record(step, config, calibration, tools, time.perf_counter() - started, record),
    )
