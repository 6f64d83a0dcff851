"""Ranking metrics on tiny cases with known answers; grouped bootstrap intervals and the paired test."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases, split_baskets, synthetic_baskets
from sdk.qa.ranking import RankedCases, rank_cases
from sdk.qa.ranking_report import METRICS, Verdict, markdown_table
from sdk.qa.ranking_stats import compare_ranked, ranking_report

N_ITEMS = 30


def _cases(
    histories: Sequence[Sequence[int]], targets: Sequence[int], groups: Sequence[int] | None = None
) -> EvalCases:
    return EvalCases(
        histories=tuple(np.asarray(h, np.int32) for h in histories),
        targets=np.asarray(targets, np.int32),
        groups=np.asarray(range(len(targets)) if groups is None else groups, np.int32),
    )


def by_index(histories: Sequence[np.ndarray]) -> np.ndarray:
    """Item 0 best, then 1, 2, ...: with an empty history, item t ranks t + 1."""
    return np.tile(-np.arange(N_ITEMS, dtype=np.float32), (len(histories), 1))


def _ranked(ranks: np.ndarray, groups: np.ndarray, model: str = "m", n_items: int = 100) -> RankedCases:
    """A ranking built directly, for the statistics (top lists: the target's neighbourhood)."""
    tops = (np.arange(10)[None, :] + ranks[:, None]) % n_items
    return RankedCases(
        model=model,
        n_items=n_items,
        ranks=np.asarray(ranks, np.int64),
        top_items=np.concatenate([tops, np.full((len(ranks), 10), -1)], axis=1).astype(np.int32),
        targets=np.zeros(len(ranks), np.int32),
        groups=np.asarray(groups, np.int32),
    )


# --------------------------------------------------------------------------- rank_cases


def test_rank_cases_succeeds_with_target_at_known_rank() -> None:
    targets = [0, 4, 9, 10, 19, 25]
    ranked = rank_cases(by_index, _cases([[]] * 6, targets), N_ITEMS)
    assert ranked.ranks.tolist() == [1, 5, 10, 11, 20, 26]
    assert ranked.model == "by_index"
    report = ranking_report(ranked)
    ranks = np.array([1, 5, 10, 11, 20, 26], float)
    assert report.metric("hr@10").value == pytest.approx(3 / 6)
    assert report.metric("ndcg@10").value == pytest.approx((1 + 1 / math.log2(6) + 1 / math.log2(11)) / 6)
    assert report.metric("mrr").value == pytest.approx(np.mean(1 / ranks))
    assert report.metric("recall@20").value == pytest.approx(5 / 6)
    assert report.metric("coverage@10").value == pytest.approx(10 / N_ITEMS)  # one list for every case


def test_rank_cases_succeeds_with_seen_items_excluded_even_when_they_score_highest() -> None:
    ranked = rank_cases(by_index, _cases([[0, 1, 2], [5, 0]], [3, 6]), N_ITEMS)
    assert ranked.ranks.tolist() == [1, 5]  # 3 is first once 0-2 are gone; 6 after 1, 2, 3, 4
    assert ranked.top_items[0, :3].tolist() == [3, 4, 5]
    assert not np.isin(ranked.top_items[0], [0, 1, 2]).any()
    assert not np.isin(ranked.top_items[1], [0, 5]).any()


def test_rank_cases_succeeds_with_ties_ranked_pessimistically() -> None:
    def constant(histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.ones((len(histories), N_ITEMS))

    def three_way_tie(histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = np.zeros((len(histories), N_ITEMS))
        scores[:, [1, 2]] = 5.0  # above the target
        scores[:, [7, 8, 9]] = 3.0  # the target 8 and two others
        return scores

    assert rank_cases(constant, _cases([[], [3, 4]], [0, 0]), N_ITEMS).ranks.tolist() == [N_ITEMS, N_ITEMS - 2]
    ranked = rank_cases(three_way_tie, _cases([[]], [8]), N_ITEMS)
    assert ranked.ranks.tolist() == [5]  # 1, 2 above; 7 and 9 tie: counted against the target
    assert ranked.top_items[0, :5].tolist() == [1, 2, 7, 8, 9]  # ties listed by lower index
    assert ranked.top_items[0, 5:10].tolist() == [0, 3, 4, 5, 6]  # the tied zeros: lowest indices first


def test_rank_cases_succeeds_with_any_batch_size_and_leaves_the_scores_untouched() -> None:
    shared = np.random.default_rng(0).standard_normal((1, N_ITEMS))
    kept = shared.copy()

    def reuses_one_array(histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(shared, (len(histories), N_ITEMS))

    rng = np.random.default_rng(1)
    histories = [rng.choice(N_ITEMS, size=int(rng.integers(0, 6)), replace=False) for _ in range(23)]
    targets = [int(rng.choice(np.setdiff1d(np.arange(N_ITEMS), h))) for h in histories]
    cases = _cases(histories, targets)
    one = rank_cases(reuses_one_array, cases, N_ITEMS, batch_size=1)
    many = rank_cases(reuses_one_array, cases, N_ITEMS, batch_size=7)
    assert np.array_equal(one.ranks, many.ranks) and np.array_equal(one.top_items, many.top_items)
    np.testing.assert_array_equal(shared, kept)


def test_rank_cases_succeeds_with_fewer_items_left_than_k_max() -> None:
    ranked = rank_cases(by_index, _cases([list(range(25))], [27]), N_ITEMS, k_max=10)
    assert ranked.ranks.tolist() == [3]
    assert ranked.top_items[0].tolist() == [25, 26, 27, 28, 29, -1, -1, -1, -1, -1]
    assert ranking_report(ranked).metric("coverage@10").value == pytest.approx(5 / N_ITEMS)


def test_rank_cases_succeeds_with_coverage_of_distinct_lists() -> None:
    def block_of_ten(histories: Sequence[np.ndarray]) -> np.ndarray:
        # History [40 + g] -> items 10g..10g+9 score highest: four disjoint top-10 lists.
        scores = np.zeros((len(histories), 50))
        for row, history in enumerate(histories):
            g = int(history[0]) - 40
            scores[row, 10 * g : 10 * g + 10] = np.arange(10, 0, -1)
        return scores

    four = rank_cases(block_of_ten, _cases([[40], [41], [42], [43]], [0, 10, 20, 30]), 50)
    two = rank_cases(block_of_ten, _cases([[40], [41], [40], [41]], [0, 10, 1, 11]), 50)
    assert ranking_report(four).metric("coverage@10").value == pytest.approx(40 / 50)
    assert ranking_report(two).metric("coverage@10").value == pytest.approx(20 / 50)
    assert four.ranks.tolist() == [1, 1, 1, 1] and two.ranks.tolist() == [1, 1, 2, 2]


def test_compare_ranked_succeeds_with_cooccurrence_beating_popularity_on_planted_pairs() -> None:
    split = split_baskets(synthetic_baskets(n_baskets=600, n_items=20, seed=3), seed=3)
    together = np.zeros((split.n_items, split.n_items))
    for row in split.train:
        together[np.ix_(row, row)] += 1.0
    np.fill_diagonal(together, 0.0)

    def cooccurrence(histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([together[h].sum(axis=0) for h in histories])

    def popularity(histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.tile(together.sum(axis=0), (len(histories), 1))

    knn = rank_cases(cooccurrence, split.test, split.n_items)
    pop = rank_cases(popularity, split.test, split.n_items)
    comparison = compare_ranked(knn, pop)
    assert ranking_report(knn).metric("hr@10").value > 0.9  # the hidden partner is found
    assert comparison.verdict("ndcg@10") is Verdict.A_BETTER
    assert comparison.verdict("mrr") is Verdict.A_BETTER


# --------------------------------------------------------------------------- bootstrap


def test_ranking_report_succeeds_with_intervals_around_the_point_that_narrow_with_more_groups() -> None:
    rng = np.random.default_rng(0)
    widths = {}
    for n_groups in (40, 1000):
        ranks = rng.integers(1, 40, size=3 * n_groups)
        report = ranking_report(_ranked(ranks, np.repeat(np.arange(n_groups), 3)))
        for name in METRICS:  # coverage too: its resamples are shifted by the union's bias
            m = report.metric(name)
            assert m.low - 1e-9 <= m.value <= m.high + 1e-9, name
        widths[n_groups] = {n: report.metric(n).high - report.metric(n).low for n in METRICS[:-1]}
        assert report.n_groups == n_groups and report.n_cases == 3 * n_groups
    for name in METRICS[:-1]:
        assert widths[1000][name] < widths[40][name] / 2, name


def test_ranking_report_succeeds_with_groups_resampled_whole() -> None:
    rng = np.random.default_rng(1)
    per_group = np.repeat(rng.integers(1, 30, size=100), 5)  # the five cases of a group share a rank
    grouped = ranking_report(_ranked(per_group, np.repeat(np.arange(100), 5)))
    independent = ranking_report(_ranked(per_group, np.arange(500)))
    assert grouped.metric("hr@10").value == independent.metric("hr@10").value
    width = {r: r.metric("hr@10").high - r.metric("hr@10").low for r in (grouped, independent)}
    assert width[grouped] > 1.5 * width[independent]  # about sqrt(5) wider: 100 groups, not 500 cases


def test_ranking_report_succeeds_with_the_same_numbers_for_the_same_seed() -> None:
    ranked = _ranked(np.random.default_rng(2).integers(1, 50, size=200), np.arange(200) // 4)
    assert ranking_report(ranked, seed=7) == ranking_report(ranked, seed=7)
    assert ranking_report(ranked, seed=7) != ranking_report(ranked, seed=8)


def test_ranking_report_succeeds_with_json_and_markdown() -> None:
    report = ranking_report(rank_cases(by_index, _cases([[]] * 4, [0, 3, 12, 20], [0, 0, 1, 1]), N_ITEMS))
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert set(data["metrics"]) == set(METRICS)
    assert data["bootstrap"] == {"resamples": 1000, "seed": 0, "confidence": 0.95}
    assert re.fullmatch(r"0\.500 \[0\.\d{3}, \d\.\d{3}\]", report.metric("hr@10").format())
    row = report.markdown_row()
    assert row.startswith("| by_index | 0.500 [") and row.count("|") == 7
    table = markdown_table([report, report]).splitlines()
    assert table[0].startswith("4 cases from 2 groups over 30 items")
    assert table[2].startswith("| model | HR@10 [95% CI] |") and len(table) == 6


# --------------------------------------------------------------------------- paired comparison


def test_compare_ranked_succeeds_with_identical_models_not_different() -> None:
    ranked = _ranked(np.random.default_rng(3).integers(1, 40, size=300), np.arange(300) // 3)
    comparison = compare_ranked(ranked, ranked)
    for d in comparison.differences:
        assert d.verdict is Verdict.NOT_DIFFERENT
        assert d.difference == d.low == d.high == 0.0
    assert "not different (CI of the difference includes 0)" in comparison.markdown()
    json.dumps(comparison.to_dict(), allow_nan=False)


def test_compare_ranked_succeeds_with_a_clearly_better_model() -> None:
    rng = np.random.default_rng(4)
    groups = np.arange(300) // 3
    good = _ranked(rng.integers(1, 4, size=300), groups, model="good")
    bad = _ranked(rng.integers(15, 60, size=300), groups, model="bad")
    for name in ("hr@10", "ndcg@10", "mrr", "recall@20"):
        assert compare_ranked(good, bad).verdict(name) is Verdict.A_BETTER
        assert compare_ranked(bad, good).verdict(name) is Verdict.B_BETTER
    assert "| HR@10 | 1.000 | 0.000 | +1.000 [+1.000, +1.000] | good better |" in compare_ranked(good, bad).markdown()


# --------------------------------------------------------------------------- bad inputs


def test_rank_cases_fails_with_non_finite_scores_naming_the_model() -> None:
    def broken(histories: Sequence[np.ndarray]) -> np.ndarray:
        scores = by_index(histories)
        scores[-1, 4] = np.nan
        return scores

    with pytest.raises(ConfigError, match=r"model 'teacher'.*1 non-finite.*case 2, item 4"):
        rank_cases(broken, _cases([[]] * 3, [0, 1, 2]), N_ITEMS, name="teacher")


@pytest.mark.parametrize(
    ("histories", "targets", "kwargs", "message"),
    [
        ([], [], {}, "no evaluation cases"),
        ([[]], [N_ITEMS], {}, "target 30, outside 0..29"),
        ([[-1]], [0], {}, "history of case 0 holds an item outside"),
        ([[1], [2, 5]], [3, 5], {}, "case 1 has its target 5 in its own history"),
        ([[]], [0], {"k_max": 5}, "k_max 5 must be at least 10"),
        ([[]], [0], {"batch_size": 0}, "batch_size 0"),
    ],
)
def test_rank_cases_fails_with_bad_cases_or_settings(
    histories: list[list[int]], targets: list[int], kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        rank_cases(by_index, _cases(histories, targets), N_ITEMS, **kwargs)


def test_rank_cases_fails_with_scores_of_the_wrong_shape() -> None:
    with pytest.raises(ConfigError, match=r"model 'by_index'.*shape \(2, 30\), expected \(2, 40\)"):
        rank_cases(by_index, _cases([[], []], [0, 1]), 40)


def test_ranking_report_fails_with_bad_bootstrap_settings() -> None:
    ranked = _ranked(np.arange(1, 11), np.arange(10))
    with pytest.raises(ConfigError, match="10 resamples is too few"):
        ranking_report(ranked, resamples=10)
    with pytest.raises(ConfigError, match="confidence 95"):
        ranking_report(ranked, confidence=95)
    with pytest.raises(ConfigError, match="no metric 'ndcg@5'"):
        ranking_report(ranked).metric("ndcg@5")


def test_compare_ranked_fails_with_rankings_of_different_cases() -> None:
    a = _ranked(np.arange(1, 11), np.arange(10), model="a")
    b = _ranked(np.arange(1, 11), np.arange(10) // 2, model="b")
    with pytest.raises(ConfigError, match="cannot compare 'a' with 'b'.*same EvalCases"):
        compare_ranked(a, b)
