"""The baseline table, HR@k in plain numpy, hyperparameters picked on validation, and a measurement.

``BASELINES`` maps a name to its fit function and default parameters (an explicit dict, no
registry). :func:`tune` fits one baseline per point of a grid on ``split.train`` and keeps the best
HR@10 on ``split.valid`` (never on ``split.test``). Running the module prints fit time and test
HR@10 for every baseline on the real datasets (a measurement, not a test)::

    python3 -m converters.models.baselines_tune [--data ../shared/data] [--skip-als]

Everything here is stateless; the table is read-only. Safe to share across threads.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from converters.models.baselines import RecModel, fit_ease, fit_item_knn, fit_popularity
from converters.models.baselines_als import fit_als
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases, RecSplit, split_baskets, split_leave_last
from sdk.interactions import load_baskets, load_movielens

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
    """One grid point: its parameters, validation HR@k and fit time (wall seconds)."""

    params: Mapping[str, Any]
    valid_hr: float
    fit_seconds: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class TuneResult:
    """The grid point with the best validation HR@k (``best``), its model, and every trial."""

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


def hit_ranks(model: RecModel, cases: EvalCases) -> np.ndarray:
    """0-based rank of each target among the items not in its history (ties count against it).

    Raises:
        ConfigError: a history or target outside the model's catalogue.
    """
    targets = np.asarray(cases.targets)
    if targets.size and (targets.min() < 0 or targets.max() >= model.n_items):
        raise ConfigError(f"{model.name}: a target lies outside 0..{model.n_items - 1}; use the model's catalogue")
    ranks = np.zeros(len(cases), np.int64)
    for start in range(0, len(cases), _CASES_PER_CHUNK):
        histories = cases.histories[start : start + _CASES_PER_CHUNK]
        scores = model.score(histories).astype(np.float64)
        for row, history in enumerate(histories):
            scores[row, history] = -np.inf
        chunk_targets = targets[start : start + len(histories)]
        target_scores = scores[np.arange(len(histories)), chunk_targets]
        # pessimistic ties: an all-zero row must not rank its target first by luck of the index
        ranks[start : start + len(histories)] = (scores >= target_scores[:, None]).sum(axis=1) - 1
    return ranks


def hit_rate(model: RecModel, cases: EvalCases, k: int = 10) -> float:
    """HR@k: the share of cases whose target ranks in the top ``k`` (see :func:`hit_ranks`).

    Raises:
        ConfigError: ``k`` < 1, no cases, or a target outside the catalogue.
    """
    if k < 1 or not len(cases):
        raise ConfigError(f"HR@{k}: k must be >= 1 and there must be cases to rank ({len(cases)} given)")
    return float(np.mean(hit_ranks(model, cases) < k))


def tune(name: str, split: RecSplit, grid: Mapping[str, Sequence[Any]], *, k: int = 10) -> TuneResult:
    """Fit ``name`` at every point of ``grid`` on ``split.train``; keep the best HR@k on ``split.valid``.

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
            params=params, valid_hr=hit_rate(model, split.valid, k), fit_seconds=time.perf_counter() - started
        )
        trials.append(trial)
        if best is None or trial.valid_hr > best[0].valid_hr:
            best = (trial, model)
    assert best is not None  # the grid has at least one point: every axis is non-empty
    return TuneResult(name=name, best=best[0], model=best[1], trials=tuple(trials))


def grouped_interval(
    hits: np.ndarray, groups: np.ndarray, *, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95% bootstrap interval of a mean over cases, resampling whole groups (baskets, users)."""
    _, inverse = np.unique(groups, return_inverse=True)
    sums = np.bincount(inverse, weights=hits.astype(np.float64))
    counts = np.bincount(inverse).astype(np.float64)
    picks = np.random.default_rng(seed).integers(0, sums.size, (resamples, sums.size))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


# The grids measure() searches on validation: a few points each, so both datasets fit in minutes.
GRIDS: Mapping[str, Mapping[str, Sequence[Any]]] = MappingProxyType(
    {
        "popularity": MappingProxyType({}),
        "item-knn": MappingProxyType({"neighbours": (20, 100, None), "shrink": (0.0, 10.0)}),
        "ease": MappingProxyType({"lam": (100.0, 300.0, 1000.0)}),
        "als": MappingProxyType({"factors": (16, 64), "regularization": (1.0, 10.0, 100.0), "alpha": (1.0, 10.0)}),
    }
)


def measure(split: RecSplit, names: Sequence[str], *, k: int = 10) -> None:
    """Print, per baseline: the grid point picked on validation, its fit time and test HR@k."""
    print(split.describe())
    print(f"{'baseline':<11} {'params':<60} {'fit s':>6} {'valid':>6} {f'test HR@{k}':>10} {'95% CI':>15}")
    for name in names:
        result = tune(name, split, GRIDS[name], k=k)
        hits = hit_ranks(result.model, split.test) < k
        low, high = grouped_interval(hits, split.test.groups)
        params = ", ".join(f"{key}={value}" for key, value in result.model.params.items()) or "-"
        print(
            f"{name:<11} {params:<60} {result.best.fit_seconds:6.2f} {result.best.valid_hr:6.3f} {hits.mean():10.3f} "
            f"  [{low:.3f}, {high:.3f}]"
        )
    print(f"test cases: n={len(split.test):,} in {len(np.unique(split.test.groups)):,} groups")


def main(argv: Sequence[str] | None = None) -> None:
    """Measure every baseline on the Groceries baskets and MovieLens (paths under ``--data``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--skip-als", action="store_true", help="leave ALS out (no implicit package)")
    parser.add_argument("--only", choices=("baskets", "movielens"), help="one dataset only")
    args = parser.parse_args(argv)
    names = [name for name in BASELINES if not (args.skip_als and name == "als")]
    if args.only != "movielens":
        measure(split_baskets(load_baskets(args.data / "groceries-baskets" / "baskets.csv")), names)
    if args.only != "baskets":
        measure(split_leave_last(load_movielens(args.data / "movielens-small")), names)


def _lookup(name: str) -> Baseline:
    if name not in BASELINES:
        raise ConfigError(f"unknown baseline {name!r}; choose one of {', '.join(BASELINES)}")
    return BASELINES[name]


if __name__ == "__main__":
    main()
