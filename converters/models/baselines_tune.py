"""The baseline table and hyperparameters picked on validation.

``BASELINES`` maps a name to its fit function and default parameters (an explicit dict, no
registry). :func:`tune` fits one baseline per point of a grid on ``split.train`` and keeps the best
NDCG@10 on ``split.valid`` (never on ``split.test``), ranked by the shared evaluator
(:func:`sdk.qa.ranking.rank_cases`: items in the history excluded, ties against the target).
``shelfedge rec-compare`` reports every baseline side by side on the test cases.

Everything here is stateless; the table is read-only. Safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from converters.models.baselines import RecModel, fit_ease, fit_item_knn, fit_popularity
from converters.models.baselines_als import fit_als
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases, RecSplit
from sdk.qa.ranking import rank_cases

FitFunction = Callable[..., RecModel]
_CASES_PER_CHUNK = 1024  # score rows held at once: bounds memory at chunk x n_items floats


@dataclasses.dataclass(frozen=True, kw_only=True)
class Baseline:
    """A fit function and the parameters it gets unless told otherwise."""

    fit: FitFunction
    defaults: Mapping[str, Any]


BASELINES: Mapping[str, Baseline] = MappingProxyType(
    {
        "popularity": Baseline(fit=fit_popularity, defaults=MappingProxyType({})),
        "item-knn": Baseline(fit=fit_item_knn, defaults=MappingProxyType({"neighbours": 100, "shrink": 10.0})),
        "ease": Baseline(fit=fit_ease, defaults=MappingProxyType({"lam": 300.0})),
        "als": Baseline(
            fit=fit_als,
            defaults=MappingProxyType({"factors": 64, "regularization": 0.05, "iterations": 15, "alpha": 10.0}),
        ),
    }
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trial:
    """One grid point: its parameters, validation NDCG@10 and fit time (wall seconds)."""

    params: Mapping[str, Any]
    valid_ndcg: float
    fit_seconds: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneResult:
    """The grid point with the best validation NDCG@10 (``best``), its model, and every trial."""

    name: str
    best: Trial
    model: RecModel
    trials: tuple[Trial, ...]


def fit_baseline(name: str, train_rows: Sequence[np.ndarray], n_items: int, **params: Any) -> RecModel:
    """Fit the named baseline with its defaults, overridden by ``params``.

    Raises:
        ConfigError: unknown name or parameter, or a bad value (from the fit function).
        BackendUnavailableError: ALS without the ``implicit`` package.
    """
    baseline = _lookup(name)
    unknown = sorted(set(params) - set(baseline.defaults) - {"threads", "seed"})
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(baseline.defaults)}")
    return baseline.fit(train_rows, n_items, **{**baseline.defaults, **params})


def valid_ndcg(model: RecModel, cases: EvalCases) -> float:
    """NDCG@10 of ``model`` on ``cases`` (the validation metric every choice is made on).

    Raises:
        ConfigError: no cases, or a history or target outside the model's catalogue.
    """
    ranked = rank_cases(model.score, cases, model.n_items, name=model.name)
    return float(ranked.per_case()["ndcg@10"].mean())


def tune(name: str, split: RecSplit, grid: Mapping[str, Sequence[Any]]) -> TuneResult:
    """Fit ``name`` at every point of ``grid`` on ``split.train``; keep the best NDCG@10 on ``split.valid``.

    Parameters not in the grid keep their defaults. Ties go to the earlier grid point.

    Raises:
        ConfigError: unknown name or parameter, an empty grid axis, or a bad value.
        BackendUnavailableError: ALS without the ``implicit`` package.
    """
    empty = [key for key, values in grid.items() if not len(values)]
    if empty:
        raise ConfigError(f"tune {name}: grid axis {', '.join(empty)} has no values; give at least one")
    keys = list(grid)
    trials: list[Trial] = []
    best: tuple[Trial, RecModel] | None = None
    for values in itertools.product(*(grid[key] for key in keys)):
        params = dict(zip(keys, values, strict=True))
        started = time.perf_counter()
        model = fit_baseline(name, split.train, split.n_items, **params)
        trial = Trial(
            params=params, valid_ndcg=valid_ndcg(model, split.valid), fit_seconds=time.perf_counter() - started
        )
        trials.append(trial)
        if best is None or trial.valid_ndcg > best[0].valid_ndcg:
            best = (trial, model)
    assert best is not None  # the grid has at least one point: every axis is non-empty
    return TuneResult(name=name, best=best[0], model=best[1], trials=tuple(trials))


# The grids rec-compare searches on validation: a few points each, so both datasets fit in minutes.
GRIDS: Mapping[str, Mapping[str, Sequence[Any]]] = MappingProxyType(
    {
        "popularity": MappingProxyType({}),
        "item-knn": MappingProxyType({"neighbours": (20, 100, None), "shrink": (0.0, 10.0)}),
        "ease": MappingProxyType({"lam": (100.0, 300.0, 1000.0)}),
        "als": MappingProxyType({"factors": (16, 64), "regularization": (1.0, 10.0, 100.0), "alpha": (1.0, 10.0)}),
    }
)


def _lookup(name: str) -> Baseline:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]
