"""The SASRec teacher split into encoder + tied item table, packaged, scores exactly like the Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from converters.models.rec_student import RecStudent, StudentConfig, build_student  # noqa: E402
from converters.models.sasrec import SasRecConfig, build_sasrec, pad_histories  # noqa: E402
from converters.training.rec_teacher_bundle import package_student, package_teacher, split_teacher  # noqa: E402
from sdk.enums import ModelFormat, Precision  # noqa: E402
from sdk.errors import ConfigError, ConversionError  # noqa: E402
from sdk.rec_datasets import open_rec_dataset  # noqa: E402
from sdk.recommender import Recommender, RecommenderOptions  # noqa: E402

pytestmark = pytest.mark.tensorflow


@pytest.mark.parametrize(
    ("spec", "pooling"), [("synthetic-sequences", "mean"), ("synthetic-baskets", "query")], ids=["sequences", "query"]
)
def test_package_teacher_succeeds_with_the_bundle_scoring_like_the_keras_model(
    spec: str, pooling: Any, tmp_path: Path
) -> None:
    dataset = open_rec_dataset(spec)
    config = SasRecConfig(
        n_items=dataset.split.n_items, kind=dataset.interactions.kind, max_len=6, dim=8, blocks=1, pooling=pooling
    )
    model = build_sasrec(config)
    path = tmp_path / "teacher.keras"
    model.save(path)
    bundle = package_teacher(tmp_path, dataset, tmp_path / "bundles")[ModelFormat.SAVEDMODEL]
    spec_ = bundle.manifest.recommendation
    assert spec_ is not None
    assert (spec_.n_items, spec_.dim, spec_.max_len, spec_.kind) == (config.n_items, 8, 6, config.kind)
    assert spec_.table_precision is Precision.FP32 and not spec_.has_bias
    split_step = bundle.manifest.provenance.steps[0]
    assert split_step.name == "split_teacher" and split_step.config["teacher"] == str(path)
    catalogue = dataset.interactions.catalogue
    cases = dataset.split.test.histories[:12]
    expected = np.asarray(model(pad_histories(cases, 6), training=False))
    with Recommender.create(bundle, RecommenderOptions(runtime="tensorflow")) as rec:
        for history, want in zip(cases, expected, strict=True):
            ids = [catalogue.ids[i] for i in history]
            if config.kind == "baskets" and len(set(ids)) != len(ids):
                continue  # a basket counts an item once; the raw model would not
            np.testing.assert_allclose(rec.scores(ids), want, rtol=1e-5, atol=1e-5)


def test_split_teacher_fails_with_another_catalogue_or_model(tmp_path: Path) -> None:
    model = build_sasrec(SasRecConfig(n_items=20, kind="sequences", max_len=4, dim=8, blocks=1))
    with pytest.raises(ConfigError, match="20 items"):
        split_teacher(model, 21)
    history = keras.Input((4,), dtype="int32", name="history")
    plain = keras.Model(history, keras.layers.Dense(20)(keras.ops.cast(history, "float32")))
    with pytest.raises(ConversionError, match="state layer"):
        split_teacher(plain, 20)
    with pytest.raises(ConfigError, match="teacher.keras"):
        split_teacher(tmp_path, 20)


def test_package_student_succeeds_with_its_fp32_table_and_bias(tmp_path: Path) -> None:
    dataset = open_rec_dataset("synthetic-sequences")
    config = StudentConfig(n_items=dataset.split.n_items, kind="sequences", shape="recency", dim=8, max_len=6)
    encoder, model = build_student(config)
    student = RecStudent.from_models(encoder, model, config)
    student.save(tmp_path / "student")
    bundle = package_student(tmp_path / "student", dataset, tmp_path / "bundles")[ModelFormat.SAVEDMODEL]
    spec = bundle.manifest.recommendation
    assert spec is not None and spec.table_precision is Precision.FP32 and spec.has_bias
    assert bundle.manifest.provenance.source == str(tmp_path / "student" / "encoder.keras")
    cases = dataset.split.test.histories[:8]
    catalogue = dataset.interactions.catalogue
    with Recommender.create(bundle, RecommenderOptions(runtime="tensorflow")) as rec:
        got = np.stack([rec.scores([catalogue.ids[i] for i in h]) for h in cases])
    np.testing.assert_allclose(got, student.score(cases), rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="trained on this dataset"):
        package_student(tmp_path / "student", open_rec_dataset("synthetic-baskets"), tmp_path / "other")
