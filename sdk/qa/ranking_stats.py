"""Ranking metrics with grouped bootstrap confidence intervals, and the paired test of two models.

HR@10, NDCG@10, MRR, Recall@20 and catalogue coverage@10 of a :class:`~sdk.qa.ranking.RankedCases`,
each with a 95 % percentile-bootstrap interval. The bootstrap resamples *groups* (whole baskets,
whole users) with replacement, not cases: the hide-one-item cases of one basket share their items
and are not independent, so resampling cases would give intervals that are too narrow. Coverage,
a property of the whole set of top-10 lists rather than a mean over cases, is recomputed on each
resample from the lists of the drawn groups. A resample repeats some groups and misses others,
and a missed group can only remove items from the union, so the raw resampled coverages sit below
the point estimate; their distribution is shifted by that bias (point minus the resamples' mean)
before the percentiles are taken, so coverage's interval, and the paired difference's, is centred
on what was measured and says how much it depends on which baskets or users were drawn.

Two models ranked on the same cases are compared *paired*: one set of resampled groups serves
both, and the interval of the difference decides: "A better", "B better" or "not different".
The same seed gives the same resamples, so reports are reproducible to the last digit.

Everything here is immutable and safe to share across threads; the functions keep no state.
"""

from __future__ import annotations

import numpy as np

from sdk.errors import ConfigError
from sdk.qa.ranking import COVERAGE_K, RankedCases
from sdk.qa.ranking_report import METRICS, MetricCI, MetricDifference, PairedComparison, RankingReport, Verdict

_MIN_RESAMPLES = 100
_CHUNK = 250  # resamples per coverage matrix product: bounds memory at 250 x items floats


def ranking_report(
    ranked: RankedCases, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> RankingReport:
    """HR@10, NDCG@10, MRR, Recall@20 and coverage@10 of one model, each with a grouped bootstrap interval.

    Raises:
        ConfigError: ``resamples`` < 100, ``confidence`` not in (0, 1), or the ranking kept fewer
            than 10 items per case.
    """
    _check_bootstrap(ranked, resamples, confidence)
    inverse, n_groups = _group_index(ranked.groups)
    weights = _resample_weights(n_groups, resamples, seed)
    point, boot = _metric_samples(ranked, inverse, n_groups, weights)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(boot, [tail, 100.0 - tail], axis=0)
    metrics = tuple(
        MetricCI(name=name, value=float(point[i]), low=float(low[i]), high=float(high[i]))
        for i, name in enumerate(METRICS)
    )
    return RankingReport(
        model=ranked.model,
        n_cases=len(ranked),
        n_groups=n_groups,
        n_items=ranked.n_items,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
        metrics=metrics,
    )


def compare_ranked(
    a: RankedCases, b: RankedCases, *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> PairedComparison:
    """Paired bootstrap of ``a - b`` for every metric, on the same resampled groups for both models.

    A verdict says "A better" when the whole interval of the difference is above 0, "B better"
    when it is below, and "not different" when it holds 0.

    Raises:
        ConfigError: the two rankings are not of the same cases (targets, groups, catalogue), or
            the bootstrap settings are out of range (see :func:`ranking_report`).
    """
    _check_bootstrap(a, resamples, confidence)
    _check_bootstrap(b, resamples, confidence)
    same = a.n_items == b.n_items and np.array_equal(a.targets, b.targets) and np.array_equal(a.groups, b.groups)
    if not same:
        raise ConfigError(
            f"cannot compare {a.model!r} with {b.model!r}: they were ranked on different cases "
            f"({len(a)} vs {len(b)} cases, {a.n_items} vs {b.n_items} items); rank both on the same EvalCases"
        )
    inverse, n_groups = _group_index(a.groups)
    weights = _resample_weights(n_groups, resamples, seed)
    point_a, boot_a = _metric_samples(a, inverse, n_groups, weights)
    point_b, boot_b = _metric_samples(b, inverse, n_groups, weights)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(boot_a - boot_b, [tail, 100.0 - tail], axis=0)
    differences = tuple(
        MetricDifference(
            name=name,
            a=float(point_a[i]),
            b=float(point_b[i]),
            difference=float(point_a[i] - point_b[i]),
            low=float(low[i]),
            high=float(high[i]),
            verdict=Verdict.A_BETTER if low[i] > 0 else Verdict.B_BETTER if high[i] < 0 else Verdict.NOT_DIFFERENT,
        )
        for i, name in enumerate(METRICS)
    )
    return PairedComparison(
        model_a=a.model,
        model_b=b.model,
        n_cases=len(a),
        n_groups=n_groups,
        resamples=resamples,
        seed=seed,
        confidence=confidence,
        differences=differences,
    )


def _check_bootstrap(ranked: RankedCases, resamples: int, confidence: float) -> None:
    if resamples < _MIN_RESAMPLES:
        raise ConfigError(
            f"bootstrap of {ranked.model!r}: {resamples} resamples is too few for a 95% interval; use "
            f"{_MIN_RESAMPLES} or more (1000 is the default)"
        )
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"bootstrap of {ranked.model!r}: confidence {confidence} must be in (0, 1), e.g. 0.95")
    if ranked.k_max < COVERAGE_K:
        raise ConfigError(
            f"ranking of {ranked.model!r} kept {ranked.k_max} items per case; coverage@{COVERAGE_K} needs "
            f"rank_cases(k_max>={COVERAGE_K})"
        )


def _group_index(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Each case's group as 0..G-1, and G."""
    unique, inverse = np.unique(groups, return_inverse=True)
    return inverse.ravel(), int(unique.size)


def _resample_weights(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    """``(resamples, n_groups)``: how many times each group is drawn in each resample (float64)."""
    draws = np.random.default_rng(seed).integers(0, n_groups, size=(resamples, n_groups))
    flat = (np.arange(resamples)[:, None] * n_groups + draws).ravel()
    return np.bincount(flat, minlength=resamples * n_groups).reshape(resamples, n_groups).astype(np.float64)


def _metric_samples(
    ranked: RankedCases, inverse: np.ndarray, n_groups: int, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The metrics on all cases ``(len(METRICS),)`` and on every resample ``(resamples, len(METRICS))``."""
    per_case = ranked.per_case()
    mean_names = METRICS[:-1]
    values = np.stack([per_case[name] for name in mean_names], axis=1)
    # A resample's mean is its groups' summed values over its groups' case counts, each group
    # weighted by how often it was drawn: one matrix product for all resamples.
    sums = np.stack([np.bincount(inverse, weights=values[:, j], minlength=n_groups) for j in range(len(mean_names))], 1)
    counts = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    boot_means = (weights @ sums) / (weights @ counts)[:, None]
    point_means = values.mean(axis=0)
    presence = _group_presence(ranked, inverse, n_groups)
    point_coverage = presence.shape[1] / ranked.n_items
    drawn = (weights > 0).astype(np.float32)
    boot_coverage = np.concatenate(
        [np.count_nonzero(drawn[s : s + _CHUNK] @ presence > 0, axis=1) for s in range(0, len(drawn), _CHUNK)]
    ) / float(ranked.n_items)
    boot_coverage += point_coverage - boot_coverage.mean()  # the union's downward bias, see the module doc
    point = np.append(point_means, point_coverage)
    boot = np.concatenate([boot_means, boot_coverage[:, None]], axis=1)
    return point, boot


def _group_presence(ranked: RankedCases, inverse: np.ndarray, n_groups: int) -> np.ndarray:
    """``(groups, listed items)`` float32: 1 where the item is in a top-10 list of one of the group's cases.

    Only items some list holds get a column, so the matrix is as wide as the coverage, not the catalogue.
    """
    top = ranked.top_items[:, :COVERAGE_K]
    listed = top >= 0
    items = np.unique(top[listed])
    presence = np.zeros((n_groups, items.size), np.float32)
    rows = np.broadcast_to(inverse[:, None], top.shape)[listed]
    presence[rows, np.searchsorted(items, top[listed])] = 1.0
    return presence
