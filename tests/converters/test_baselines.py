"""Recommendation baselines on synthetic interactions with a planted answer.

Popularity, item-kNN and EASE need scipy (the recsys extra); the ALS tests skip without ``implicit``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("scipy", reason="the baselines need scipy (pip install 'shelfedge[recsys]')")

from converters.models.baselines import Ease, ItemKnn, fit_ease, fit_item_knn, fit_popularity
from converters.models.baselines_als import Als, fit_als
from converters.models.baselines_tune import (
    BASELINES,
    fit_baseline,
    tune,
    valid_ndcg,
)
from sdk.errors import BackendUnavailableError, ConfigError
from sdk.interaction_splits import (
    split_baskets,
    split_leave_last,
    synthetic_baskets,
    synthetic_sequences,
)

# The models that learn item-item structure, each with settings sized for 60-100 items.
LEARNED: dict[str, dict[str, Any]] = {
    "item-knn": {"neighbours": None, "shrink": 0.0},
    "item-knn pruned": {"neighbours": 5, "shrink": 10.0},
    "ease": {"lam": 50.0},
    "als": {"factors": 64, "regularization": 1.0, "alpha": 10.0},
}


def _fit(label: str, rows: Any, n_items: int) -> Any:
    name = label.split()[0]
    if name == "als":
        pytest.importorskip("implicit", reason="ALS needs the implicit package (pip install 'shelfedge[recsys]')")
    return fit_baseline(name, rows, n_items, **LEARNED.get(label, {}))


def _top_besides(scores: np.ndarray, exclude: int, n: int) -> set[int]:
    ranked = scores.astype(np.float64)
    ranked[exclude] = -np.inf
    return {int(i) for i in np.argsort(-ranked, kind="stable")[:n]}


@pytest.fixture(scope="module")
def baskets() -> Any:
    return synthetic_baskets()


@pytest.fixture(scope="module")
def sequences() -> Any:
    return synthetic_sequences()


@pytest.mark.parametrize("label", list(LEARNED))
def test_baselines_succeed_with_planted_partner_first(label: str, baskets: Any) -> None:
    model = _fit(label, baskets.rows, baskets.n_items)
    evens = np.arange(0, baskets.n_items, 2)
    scores = model.score([np.array([e]) for e in evens] + [np.array([e + 1]) for e in evens])
    for row, even in enumerate(evens):
        assert _top_besides(scores[row], even, 1) == {even + 1}, f"history [{even}]"
        assert _top_besides(scores[len(evens) + row], even + 1, 1) == {even}, f"history [{even + 1}]"


@pytest.mark.parametrize("label", list(LEARNED))
def test_baselines_succeed_with_planted_successor_in_top_two(label: str, sequences: Any) -> None:
    # These models read a history as a set, and the planted chains look the same read backwards:
    # the successor i+1 and its mirror i-1 share the top two (telling them apart needs order).
    model = _fit(label, sequences.rows, sequences.n_items)
    n = sequences.n_items
    scores = model.score([np.array([i]) for i in range(n)])
    found = sum(_top_besides(scores[i], i, 2) == {(i + 1) % n, (i - 1) % n} for i in range(n))
    assert found >= 0.9 * n


@pytest.mark.parametrize("label", list(LEARNED))
def test_baselines_succeed_with_ndcg_above_popularity(label: str, sequences: Any) -> None:
    split = split_leave_last(sequences)
    popular = valid_ndcg(fit_popularity(split.train, split.n_items), split.test)
    learned = valid_ndcg(_fit(label, split.train, split.n_items), split.test)
    assert learned > popular + 0.2


def test_popularity_succeeds_with_most_frequent_item_first(baskets: Any) -> None:
    model = fit_popularity([np.array([0, 1]), np.array([1]), np.array([1, 2, 2]), np.array([], np.int32)], 4)
    np.testing.assert_array_equal(model.counts, [1, 3, 1, 0])  # an item repeated in a row counts once
    scores = model.score([np.array([0]), np.array([3, 2])])
    assert scores.dtype == np.float32 and scores.shape == (2, 4)
    assert np.argmax(scores[0]) == 1 and np.array_equal(scores[0], scores[1])
    synthetic = fit_popularity(baskets.rows, baskets.n_items)
    np.testing.assert_array_equal(synthetic.counts, baskets.popularity())
    assert int(np.argmax(synthetic.counts)) == 0  # the Zipf head of the planted generator


@pytest.mark.parametrize("label", ["popularity", *LEARNED])
def test_baselines_succeed_with_shape_dtype_and_history_items_kept(label: str, baskets: Any) -> None:
    model = _fit(label, baskets.rows, baskets.n_items)
    histories = [np.array([0, 5, 7]), np.array([3]), np.array([0, 0, 1], np.int64)]
    scores = model.score(histories)
    assert scores.shape == (3, baskets.n_items) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    assert model.n_items == baskets.n_items and model.name == label.split()[0]
    assert model.score([]).shape == (0, baskets.n_items)


@pytest.mark.parametrize("label", ["popularity", *LEARNED])
def test_baselines_succeed_with_empty_history(label: str, baskets: Any) -> None:
    model = _fit(label, baskets.rows, baskets.n_items)
    scores = model.score([np.array([], np.int32)])
    if label == "popularity":
        np.testing.assert_array_equal(scores[0], baskets.popularity())
    else:
        np.testing.assert_array_equal(scores[0], np.zeros(baskets.n_items))  # cold start is the caller's


@pytest.mark.parametrize("label", ["popularity", *LEARNED])
def test_baselines_succeed_with_read_only_state(label: str, baskets: Any) -> None:
    model = _fit(label, baskets.rows, baskets.n_items)
    arrays = {
        "popularity": lambda m: [m.counts],
        "item-knn": lambda m: [m.similarity.data],
        "ease": lambda m: [m.weights, m.active],
        "als": lambda m: [m.item_factors],
    }[model.name](model)
    for array in arrays:
        with pytest.raises(ValueError):
            array[0] = 1  # shared across threads: fitted state cannot be written


def test_item_knn_succeeds_with_neighbours_kept_per_item(baskets: Any) -> None:
    model = fit_item_knn(baskets.rows, baskets.n_items, neighbours=3)
    assert isinstance(model, ItemKnn)
    assert np.diff(model.similarity.indptr).max() <= 3
    assert (model.similarity.diagonal() == 0).all()
    full = fit_item_knn([np.array([0, 1]), np.array([0, 1]), np.array([0, 2])], 4)
    # cosine of binary columns: c_01 / sqrt(c_00 c_11) = 2 / sqrt(3 * 2)
    assert full.similarity[0, 1] == pytest.approx(2 / np.sqrt(6), rel=1e-6)
    assert full.similarity[0, 3] == 0  # item 3 is never seen


def test_ease_succeeds_with_zero_diagonal_and_unseen_items_zero() -> None:
    rows = [np.array([0, 1]), np.array([0, 1]), np.array([1, 2]), np.array([0])]
    model = fit_ease(rows, 5, lam=1.0)
    assert isinstance(model, Ease)
    np.testing.assert_array_equal(model.active, [0, 1, 2])
    assert (np.diag(model.weights) == 0).all()
    x = np.zeros((4, 3))
    for r, row in enumerate(rows):
        x[r, row] = 1
    p = np.linalg.inv(x.T @ x + np.eye(3))
    expected = np.eye(3) - p / np.diag(p)
    np.testing.assert_allclose(model.weights, expected, atol=1e-6)
    scores = model.score([np.array([0, 4])])
    np.testing.assert_allclose(scores[0], [0, expected[0, 1], expected[0, 2], 0, 0], atol=1e-6)


@pytest.mark.filterwarnings("ignore:OpenBLAS is configured:RuntimeWarning")  # implicit's own advice, not ours
def test_als_succeeds_with_user_factor_as_implicit_recalculates_it() -> None:
    pytest.importorskip("implicit", reason="ALS needs the implicit package")
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(0)
    train = sp.csr_matrix((rng.random((120, 30)) < 0.15).astype(np.float32))
    reference = AlternatingLeastSquares(
        factors=6, regularization=0.3, alpha=4.0, iterations=3, num_threads=1, random_state=0
    )
    reference.fit(train, show_progress=False)
    model = Als(item_factors=np.asarray(reference.item_factors), regularization=0.3, alpha=4.0, iterations=3)
    histories = [np.array([1, 4, 9]), np.array([0]), np.array([2, 3, 5, 7, 11, 13])]
    rows = sp.csr_matrix((np.ones(10, np.float32), np.concatenate(histories), [0, 3, 4, 10]), shape=(3, 30))
    expected = reference.recalculate_user(np.arange(3), rows)
    np.testing.assert_allclose(model.user_factors(histories), expected, rtol=1e-4, atol=1e-5)


def test_als_fails_without_implicit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "implicit.cpu.als", None)  # import now raises ImportError
    with pytest.raises(BackendUnavailableError, match=r"shelfedge\[recsys\]"):
        fit_als([np.array([0, 1])], 2)


BAD_FITS: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    (fit_popularity, {"n_items": 0}, "n_items 0"),
    (fit_popularity, {"train_rows": []}, "no interactions"),
    (fit_popularity, {"train_rows": [np.array([], np.int32)]}, "no interactions"),
    (fit_popularity, {"train_rows": [np.array([0, 4])]}, "row 0 holds item index 4"),
    (fit_popularity, {"train_rows": [np.array([-1])]}, "item index -1"),
    (fit_popularity, {"train_rows": [np.array([[0, 1]])]}, "not a 1-D array"),
    (fit_popularity, {"train_rows": [np.array([0.5])]}, "not a 1-D array of item indices"),
    (fit_item_knn, {"neighbours": 0}, "neighbours 0"),
    (fit_item_knn, {"shrink": -1.0}, "shrink -1.0"),
    (fit_ease, {"lam": 0.0}, "lam 0.0"),
    (fit_ease, {"lam": float("nan")}, "lam nan"),
    (fit_als, {"factors": 0}, "factors=0"),
    (fit_als, {"threads": 3}, "threads=3"),
    (fit_als, {"alpha": 0.0}, "alpha=0.0"),
    (fit_als, {"regularization": -1.0}, "regularization=-1.0"),
    (fit_als, {"iterations": 0}, "iterations=0"),
]


@pytest.mark.parametrize(("fit", "override", "message"), BAD_FITS)
def test_baselines_fail_with_bad_arguments(fit: Callable[..., Any], override: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"train_rows": [np.array([0, 1]), np.array([1, 2])], "n_items": 4, **override}
    with pytest.raises(ConfigError, match=message):
        fit(**arguments)


@pytest.mark.parametrize("label", ["popularity", *LEARNED])
def test_baselines_fail_with_history_outside_catalogue(label: str, baskets: Any) -> None:
    model = _fit(label, baskets.rows, baskets.n_items)
    with pytest.raises(ConfigError, match=f"row 1 holds item index {baskets.n_items} outside"):
        model.score([np.array([0]), np.array([1, baskets.n_items])])


def test_tune_succeeds_with_best_validation_point(baskets: Any) -> None:
    split = split_baskets(baskets)
    result = tune("ease", split, {"lam": [1.0, 50.0, 1e6]})
    assert [trial.params["lam"] for trial in result.trials] == [1.0, 50.0, 1e6]
    assert result.best.valid_ndcg == max(trial.valid_ndcg for trial in result.trials)
    assert result.model.params["lam"] == result.best.params["lam"]
    assert result.best.valid_ndcg == pytest.approx(valid_ndcg(result.model, split.valid))


@pytest.mark.parametrize(
    ("name", "grid", "message"),
    [
        ("svd", {}, "unknown baseline 'svd'"),
        ("ease", {"lambda": [1.0]}, "unknown parameter"),
        ("ease", {"lam": []}, "grid axis lam has no values"),
        ("ease", {"lam": [-1.0]}, "lam -1.0"),
    ],
)
def test_tune_fails_with_bad_grid(name: str, grid: dict[str, list[Any]], message: str, baskets: Any) -> None:
    with pytest.raises(ConfigError, match=message):
        tune(name, split_baskets(baskets), grid)


def test_baseline_table_succeeds_with_every_default_fitting(baskets: Any) -> None:
    for name in BASELINES:
        if name == "als":
            pytest.importorskip("implicit")
        model = fit_baseline(name, baskets.rows, baskets.n_items)
        assert model.score([np.array([0])]).shape == (1, baskets.n_items)
