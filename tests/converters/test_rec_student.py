"""The recommendation student: encoder shapes, the split contract, KD and no-KD training on planted answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from converters.models.rec_student import (
    SHAPES,
    RecStudent,
    StudentConfig,
    build_student,
    student_macs,
)
from converters.models.sasrec import pad_histories
from converters.training.rec_distill import DistillRecConfig, distill_recommender
from converters.training.rec_distill_data import student_examples
from converters.training.recommender import TeacherRecConfig, train_recommender_teacher
from sdk.errors import ConfigError
from sdk.interaction_splits import split_baskets, split_leave_last, synthetic_baskets, synthetic_sequences
from sdk.qa.ranking import rank_cases

N_ITEMS = 30
HISTORIES = [np.array([3, 4, 5]), np.array([7]), np.array([], np.int32), np.arange(12)]


def _quiet(message: str) -> None:
    pass


def _student(shape: str, kind: str = "sequences", **kwargs: object) -> RecStudent:
    config = StudentConfig(n_items=N_ITEMS, kind=kind, shape=shape, dim=8, max_len=6, **kwargs)  # type: ignore[arg-type]
    encoder, model = build_student(config)
    # Non-zero attention parameters, so that padding invariance is not true by accident of zero init.
    model.set_weights(
        [w + np.random.default_rng(1).normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()]
    )
    return RecStudent.from_models(encoder, model, config)


@pytest.fixture(scope="module")
def sequence_split():
    return split_leave_last(synthetic_sequences(n_users=200, n_items=40, length=12, seed=0))


@pytest.fixture(scope="module")
def sequence_teacher(sequence_split, tmp_path_factory: pytest.TempPathFactory):
    config = TeacherRecConfig(dim=16, blocks=1, epochs=3, max_len=8, batch_size=8, lr=1e-2, dropout=0.1)
    return train_recommender_teacher(sequence_split, config, tmp_path_factory.mktemp("teacher"), log=_quiet)


@pytest.fixture(scope="module")
def distilled(sequence_split, sequence_teacher, tmp_path_factory: pytest.TempPathFactory) -> dict:
    runs = {}
    for alpha in (0.0, 0.5):
        config = DistillRecConfig(
            shape="recency", dim=16, max_len=8, epochs=4, batch_size=32, lr=1e-2, alpha=alpha, top_k=10
        )
        out = tmp_path_factory.mktemp(f"student-{alpha}")
        runs[alpha] = (config, out, distill_recommender(sequence_split, sequence_teacher, config, out, log=_quiet))
    return runs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["sequences", "baskets"])
def test_rec_student_succeeds_with_int32_history_giving_float32_user(shape: str, kind: str) -> None:
    student = _student(shape, kind)
    users = np.asarray(student.encoder(pad_histories(HISTORIES, 6)))
    assert student.encoder.inputs[0].dtype == "int32" and tuple(student.encoder.inputs[0].shape) == (None, 6)
    assert users.shape == (len(HISTORIES), 8) and users.dtype == np.float32
    assert student.item_table.shape == (N_ITEMS, 8) and student.item_table.dtype == np.float32
    assert student.item_bias is not None and student.item_bias.shape == (N_ITEMS,)
    scores = student.score(HISTORIES)
    np.testing.assert_allclose(scores, users @ student.item_table.T + student.item_bias, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", SHAPES)
def test_rec_student_succeeds_with_padding_invariance(shape: str) -> None:
    student = _student(shape)
    short = np.asarray(student.encoder(pad_histories([np.array([3, 4, 5])], 6)))
    config = StudentConfig(**{**student.config, "max_len": 10})
    encoder, _ = build_student(config)
    source = dict(zip([w.path for w in student.encoder.weights], student.encoder.get_weights(), strict=True))
    # The window's position weights are counted from the newest item: copy the last 6 into the wider window.
    weights = []
    for w in encoder.weights:
        value = source[w.path]
        if "position_logits" in w.path:
            value = np.concatenate([np.zeros(4, value.dtype), value])
        weights.append(value)
    encoder.set_weights(weights)
    longer = np.asarray(encoder(pad_histories([np.array([3, 4, 5])], 10)))
    np.testing.assert_allclose(short, longer, rtol=1e-5, atol=1e-5)


def test_rec_student_succeeds_with_empty_history_giving_zero_user() -> None:
    student = _student("mean", projection=False)
    assert np.allclose(student.users([np.array([], np.int32)]), 0.0)


def test_rec_student_succeeds_with_macs_counted_from_the_shape() -> None:
    config = StudentConfig(n_items=100, shape="mean", dim=32, max_len=50, projection=False, item_bias=False)
    assert student_macs(config) == {"encoder": 50 * 32, "scoring": 100 * 32, "total": 50 * 32 + 100 * 32}
    gru = student_macs(StudentConfig(n_items=100, shape="gru", dim=32, max_len=50))
    assert gru["encoder"] > student_macs(config)["encoder"] * 100


def test_rec_student_fails_with_unknown_shape() -> None:
    with pytest.raises(ConfigError, match="StudentConfig.shape"):
        build_student(StudentConfig(n_items=5, shape="transformer"))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", SHAPES)
def test_rec_student_succeeds_with_saved_model_and_litert_conversion(shape: str, tmp_path: Path) -> None:
    student = _student(shape)
    x = pad_histories(HISTORIES, 6)
    expected = np.asarray(student.encoder(x))
    student.encoder.export(str(tmp_path / "saved"), verbose=False)
    serve = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
    (restored,) = serve(history=tf.constant(x)).values()
    np.testing.assert_allclose(restored.numpy(), expected, rtol=1e-5, atol=1e-5)
    flat = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved")).convert()
    litert = pytest.importorskip("ai_edge_litert.interpreter")  # the runtime the bundles use, not tf.lite's
    runner = litert.Interpreter(model_content=flat).get_signature_runner("serving_default")
    got = np.concatenate([next(iter(runner(history=x[i : i + 1]).values())) for i in range(len(x))])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_rec_student_succeeds_with_save_load_identical_scores(distilled, tmp_path: Path) -> None:
    _, _, result = distilled[0.5]
    saved = result.student.save(tmp_path / "student")
    assert {p.name for p in saved.iterdir()} == {"encoder.keras", "items.npy", "bias.npy", "student.json"}
    loaded = RecStudent.load(saved)
    np.testing.assert_array_equal(loaded.score(HISTORIES), result.student.score(HISTORIES))
    assert loaded.max_len == result.student.max_len and loaded.config == result.student.config


def test_rec_student_fails_with_table_not_matching_encoder(distilled, tmp_path: Path) -> None:
    saved = distilled[0.0][2].student.save(tmp_path / "student")
    np.save(saved / "items.npy", np.zeros((N_ITEMS, 3), np.float32))
    with pytest.raises(ConfigError, match="do not fit"):
        RecStudent.load(saved)


def test_rec_distill_succeeds_with_kd_and_no_kd_ranking_the_planted_successor(distilled, sequence_split) -> None:
    for alpha, (_, out, result) in distilled.items():
        ranked = rank_cases(result.student.score, sequence_split.test, sequence_split.n_items, name=f"alpha {alpha}")
        # The planted successor follows 80% of the time: most test cases must rank it first.
        assert np.mean(ranked.ranks == 1) > 0.5, alpha
        report = json.loads((out / "distill.json").read_text())
        assert report["epochs_run"] == 4 and len(report["history"]) == 4
        assert report["best_epoch"] == result.best_epoch and report["val"]["ndcg@10"] == result.val_ndcg10
        assert report["macs_per_request"]["total"] == result.macs_per_request
        assert (report["teacher"] is None) == (alpha == 0.0)
    assert any(p.name.startswith("teacher_top") for p in distilled[0.5][1].iterdir())


def test_rec_distill_succeeds_with_cached_run_reused(distilled, sequence_split, sequence_teacher) -> None:
    config, out, first = distilled[0.5]
    again = distill_recommender(sequence_split, sequence_teacher, config, out, log=_quiet)
    assert again.cached and again.config_hash == first.config_hash
    np.testing.assert_array_equal(again.student.score(HISTORIES), first.student.score(HISTORIES))


def test_rec_distill_succeeds_with_baskets_ranking_the_planted_partner(tmp_path: Path) -> None:
    split = split_baskets(synthetic_baskets(n_baskets=800, n_items=30, seed=0))
    config = DistillRecConfig(shape="mean", dim=16, max_len=6, epochs=5, batch_size=32, lr=1e-2, alpha=0.0)
    result = distill_recommender(split, None, config, tmp_path, log=_quiet)
    odd = split.test.targets % 2 == 1
    with_partner = np.array([t - 1 in h for t, h in zip(split.test.targets, split.test.histories, strict=True)])
    ranked = rank_cases(result.student.score, split.test, split.n_items, name="student")
    assert np.mean(ranked.ranks[odd & with_partner] == 1) > 0.6


def test_rec_distill_fails_with_kd_but_no_teacher(sequence_split, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        distill_recommender(sequence_split, None, DistillRecConfig(alpha=0.5, epochs=1), tmp_path, log=_quiet)


def test_rec_distill_fails_with_bad_config(sequence_split, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DistillRecConfig.alpha"):
        distill_recommender(sequence_split, None, DistillRecConfig(alpha=1.5), tmp_path, log=_quiet)


def test_rec_distill_succeeds_with_one_example_per_interaction(sequence_split) -> None:
    histories, targets = student_examples(sequence_split, window=5)
    assert len(targets) == sum(len(row) - 1 for row in sequence_split.train if len(row) >= 2)
    assert max(len(h) for h in histories) == 5
    row = sequence_split.train[0]
    assert targets[0] == row[1] and list(histories[0]) == [row[0]]
