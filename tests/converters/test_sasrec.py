"""The recommendation teacher: SASRec / set-attention architecture and its training, on planted answers."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from converters.models.sasrec import SasRecConfig, build_sasrec, macs_per_request, pad_histories
from converters.training.recommender import TeacherRecConfig, train_recommender_teacher
from converters.training.recommender_data import (
    NO_TARGET,
    basket_examples,
    predict_scores,
    sequence_windows,
)
from sdk.errors import ConfigError
from sdk.interaction_splits import split_baskets, split_leave_last, synthetic_baskets, synthetic_sequences
from sdk.qa.ranking import rank_cases

N_ITEMS = 30


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    split = split_leave_last(synthetic_sequences(n_users=200, n_items=50, seed=0))
    config = TeacherRecConfig(dim=16, blocks=1, epochs=3, max_len=10, batch_size=8, lr=1e-2, dropout=0.1)
    out = tmp_path_factory.mktemp("rec-seq")
    return split, config, out, train_recommender_teacher(split, config, out, log=_quiet)


@pytest.fixture(scope="module")
def basket_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    split = split_baskets(synthetic_baskets(n_baskets=1000, n_items=40, seed=0))
    config = TeacherRecConfig(dim=16, blocks=1, epochs=3, max_len=8, batch_size=8, lr=1e-2, dropout=0.1)
    out = tmp_path_factory.mktemp("rec-basket")
    return split, config, out, train_recommender_teacher(split, config, out, log=_quiet)


@pytest.mark.parametrize(("kind", "pooling"), [("sequences", "mean"), ("baskets", "mean"), ("baskets", "query")])
def test_sasrec_succeeds_with_int32_history_giving_float32_scores(kind: str, pooling: str) -> None:
    model = build_sasrec(SasRecConfig(n_items=N_ITEMS, kind=kind, max_len=6, dim=8, blocks=1, pooling=pooling))
    scores = model(pad_histories([np.array([1, 2]), np.arange(9)], 6))
    assert model.inputs[0].dtype == "int32" and tuple(model.inputs[0].shape) == (None, 6)
    assert tuple(scores.shape) == (2, N_ITEMS) and scores.dtype == "float32"
    assert np.isfinite(np.asarray(scores)).all()


def test_sasrec_succeeds_with_save_load_and_tf_function_same_scores(tmp_path: Path) -> None:
    model = build_sasrec(SasRecConfig(n_items=N_ITEMS, max_len=6, dim=8, blocks=2))
    x = pad_histories([np.array([3, 4, 5]), np.array([7])], 6)
    expected = np.asarray(model(x))
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(np.asarray(reloaded(x)), expected)
    traced = tf.function(lambda h: reloaded(h, training=False))
    np.testing.assert_allclose(np.asarray(traced(tf.constant(x))), expected, atol=1e-5)


def test_sasrec_succeeds_with_more_left_padding_same_sequence_scores() -> None:
    short = build_sasrec(SasRecConfig(n_items=N_ITEMS, max_len=6, dim=8, blocks=2))
    long = build_sasrec(SasRecConfig(n_items=N_ITEMS, max_len=12, dim=8, blocks=2, seed=1))
    # Positions count from the newest item, so the short window's table is the long one's tail.
    weights = [
        np.concatenate([np.zeros((6, 8), np.float32), w]) if w.shape == (6, 8) else w for w in short.get_weights()
    ]
    long.set_weights(weights)
    history = [np.array([4, 9])]
    np.testing.assert_allclose(
        np.asarray(long(pad_histories(history, 12))), np.asarray(short(pad_histories(history, 6))), atol=1e-5
    )


def test_sasrec_succeeds_with_basket_order_and_padding_not_mattering() -> None:
    model = build_sasrec(SasRecConfig(n_items=N_ITEMS, kind="baskets", max_len=6, dim=8, blocks=2))
    a = np.asarray(model(np.array([[0, 0, 0, 0, 4, 10]], np.int32)))
    b = np.asarray(model(np.array([[10, 0, 4, 0, 0, 0]], np.int32)))
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_sasrec_fails_with_heads_not_dividing_dim() -> None:
    with pytest.raises(ConfigError, match="heads"):
        build_sasrec(SasRecConfig(n_items=N_ITEMS, dim=10, heads=3))


def test_macs_per_request_succeeds_with_scoring_term_growing_with_catalogue() -> None:
    small, large = SasRecConfig(n_items=100), SasRecConfig(n_items=1100)
    assert macs_per_request(large) - macs_per_request(small) == 64 * 1000


def test_pad_histories_succeeds_with_left_padding_and_most_recent_kept() -> None:
    np.testing.assert_array_equal(pad_histories([np.array([0, 1]), np.arange(5)], 3), [[0, 1, 2], [3, 4, 5]])


def test_sequence_windows_succeeds_with_every_next_item_a_target_once() -> None:
    x, y = sequence_windows([np.arange(7)], max_len=4)
    assert sorted(y[y != NO_TARGET].tolist()) == [1, 2, 3, 4, 5, 6]
    # Where there is an input there is its successor; padding has neither.
    np.testing.assert_array_equal(x == 0, y == NO_TARGET)
    # In 0..6 the successor of item i is i + 1, which is also how i is written in the model's input.
    np.testing.assert_array_equal(x[y != NO_TARGET], y[y != NO_TARGET])


def test_basket_examples_succeeds_with_one_hidden_item_per_basket() -> None:
    rows = [np.array([1, 2, 3]), np.array([5]), np.array([6, 7])]
    x, y = basket_examples(rows, 4, np.random.default_rng(0))
    assert len(y) == 2
    for inputs, target, row in zip(x, y, (rows[0], rows[2]), strict=True):
        assert sorted([*(inputs[inputs > 0] - 1).tolist(), int(target)]) == row.tolist()


def test_train_recommender_teacher_succeeds_with_planted_successor_ranked_first(sequence_run: tuple) -> None:
    split, config, _, result = sequence_run
    model = keras.saving.load_model(result.model_path)
    cases = split.test
    rank = _ranks(model, cases, config.max_len)
    planted = np.array([(h[-1] + 1) % 50 == t for h, t in zip(cases.histories, cases.targets, strict=True)])
    # Chance of top-1 is ~1/40 of the unseen items, of HR@10 ~0.25.
    assert planted.sum() >= 50
    assert (rank[planted] == 0).mean() > 0.6
    assert (rank < 10).mean() > 0.5 and result.val_hr10 > 0.5


def test_train_recommender_teacher_succeeds_with_planted_partner_ranked_first(basket_run: tuple) -> None:
    split, config, _, result = basket_run
    model = keras.saving.load_model(result.model_path)
    cases = split.test
    rank = _ranks(model, cases, config.max_len)
    planted = np.array([t % 2 == 1 and t - 1 in h for h, t in zip(cases.histories, cases.targets, strict=True)])
    # Chance of top-1 is ~1/38; a partner is ambiguous only when another even item lacks its own.
    assert planted.sum() >= 100
    assert (rank[planted] == 0).mean() > 0.5
    assert (rank[planted] < 10).mean() > 0.8


def test_train_recommender_teacher_succeeds_with_report_and_cache(sequence_run: tuple) -> None:
    split, config, out, result = sequence_run
    report = json.loads(result.report_path.read_text(encoding="utf-8"))
    assert report["kind"] == "sequences" and report["config"]["dim"] == 16
    assert len(report["history"]) == report["epochs_run"] >= 1
    assert report["params"] == result.params > 0 and report["macs_per_request"] > 0
    assert 1 <= result.best_epoch <= config.epochs and not result.cached
    lines: list[str] = []
    again = train_recommender_teacher(split, config, out, log=lines.append)
    assert again.cached and again.val_ndcg10 == result.val_ndcg10 and "reusing" in lines[0]


def test_train_recommender_teacher_fails_with_bad_config(tmp_path: Path) -> None:
    split = split_leave_last(synthetic_sequences(n_users=5, n_items=10, length=5))
    with pytest.raises(ConfigError, match="TeacherRecConfig.patience"):
        train_recommender_teacher(split, TeacherRecConfig(patience=-1), tmp_path, log=_quiet)


def _ranks(model, cases, max_len: int) -> np.ndarray:
    """0-based rank of each target among the unseen items, by the shared evaluator."""
    scorer = lambda histories: predict_scores(model, histories, max_len)  # noqa: E731
    return rank_cases(scorer, cases, int(model.output_shape[-1])).ranks - 1


def test_evaluate_model_fails_with_a_cut_off_other_than_the_evaluators() -> None:
    from converters.training.recommender_data import evaluate_model

    with pytest.raises(ConfigError, match="k=5; the shared evaluator reports HR and NDCG at 10"):
        evaluate_model(None, split_leave_last(synthetic_sequences()).valid, 8, k=5)
