"""The embedding output in image bundles, sdk.ImageEmbedder, and the calibrated "unknown product" rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdk.bundle import Bundle
from sdk.classifier import ImageClassifier
from sdk.enums import ModelFormat
from sdk.errors import ConfigError, ManifestError
from sdk.manifest import Manifest
from sdk.unknown_spec import EMBEDDING_OUTPUT, UnknownRule

pytest.importorskip("keras")

from converters.models.embedding import with_embedding_output
from converters.training.calibrate_unknown import (
    calibrate_unknown,
    choose_rule,
    choose_threshold,
    class_centroids,
)
from sdk.embedder import ImageEmbedder

SIZE = 32
FORMATS = (ModelFormat.KERAS, ModelFormat.TFLITE, ModelFormat.ONNX, ModelFormat.OPENVINO)


@pytest.fixture(scope="module")
def two_output_model(tiny_cnn: Callable[..., Any]) -> Any:
    return with_embedding_output(tiny_cnn(classes=6, size=SIZE, seed=5, pointwise=12))


@pytest.fixture(scope="module")
def embedding_bundles(
    two_output_model: Any, shelf_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[ModelFormat, Bundle]:
    from converters.export.pipeline import export
    from sdk.data import load_split
    from sdk.manifest import Preprocessing

    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    return export(
        two_output_model,
        out_dir=tmp_path_factory.mktemp("embedding-bundles"),
        formats=[f.value for f in FORMATS],
        name="tiny-emb",
        labels=load_split(shelf_data, "train").class_names,
        preprocessing=pre,
    )


def test_with_embedding_output_succeeds_with_pooled_features(two_output_model: Any) -> None:
    assert [t.shape[-1] for t in two_output_model.outputs] == [6, 12]
    assert two_output_model.output_names == ["logits", EMBEDDING_OUTPUT]
    assert with_embedding_output(two_output_model) is two_output_model


def test_with_embedding_output_fails_with_no_pooling_layer() -> None:
    import keras

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(inputs)))
    with pytest.raises(ConfigError, match="GlobalAveragePooling2D"):
        with_embedding_output(model)


def test_export_succeeds_with_two_outputs_in_every_format(
    embedding_bundles: dict[ModelFormat, Bundle], two_output_model: Any
) -> None:
    from sdk.loading import load

    x = np.random.default_rng(0).normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
    want_logits, want_embedding = (np.asarray(t) for t in two_output_model(x))
    for fmt in FORMATS:
        bundle = embedding_bundles[fmt]
        assert [o.name for o in bundle.manifest.outputs] == ["logits", EMBEDDING_OUTPUT], fmt
        with load(bundle) as model:
            got = model.run({bundle.manifest.inputs[0].name: x})
        np.testing.assert_allclose(got["logits"], want_logits, atol=1e-4, err_msg=str(fmt))
        np.testing.assert_allclose(got[EMBEDDING_OUTPUT], want_embedding, atol=1e-4, err_msg=str(fmt))


def test_classifier_succeeds_with_extra_embedding_output(
    embedding_bundles: dict[ModelFormat, Bundle], smooth_bgr: Callable[..., np.ndarray]
) -> None:
    image = smooth_bgr(48, 40)
    tops = set()
    for fmt in FORMATS:
        with ImageClassifier.from_bundle(embedding_bundles[fmt], top_k=6) as clf:
            result = clf.classify(image)
        assert len(result.categories) == 6 and not result.unknown and result.is_known()
        assert result.to_dict()["unknown"] is False
        tops.add(result.top1.index)
    assert len(tops) == 1


def test_embedder_succeeds_with_unit_vectors_equal_across_runtimes(
    embedding_bundles: dict[ModelFormat, Bundle], shelf_data: Path
) -> None:
    photos = sorted((shelf_data / "val").rglob("*.jpg"))[:4]
    vectors = {}
    for fmt in FORMATS:
        with ImageEmbedder.from_bundle(embedding_bundles[fmt]) as embedder:
            results = embedder.embed_batch(photos)
            single = embedder.embed(photos[0])
            assert embedder.dimension == 12
        got = np.stack([r.vector for r in results])
        assert got.dtype == np.float32 and got.shape == (4, 12)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(single.vector, got[0], atol=1e-5)
        assert not results[0].vector.flags.writeable
        vectors[fmt] = got
    for fmt in FORMATS[1:]:
        np.testing.assert_allclose(vectors[fmt], vectors[ModelFormat.KERAS], atol=1e-4, err_msg=str(fmt))


def test_embedder_fails_with_bundle_without_embedding(shelf_bundles: dict[ModelFormat, Bundle]) -> None:
    with pytest.raises(ConfigError, match="with_embedding_output"):
        ImageEmbedder.from_bundle(shelf_bundles[ModelFormat.TFLITE])


def test_choose_threshold_succeeds_with_threshold_set_by_data() -> None:
    correct = np.array([True, True, True, True, False, False])
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.65, 0.3])
    # Keep 75% of the 4 correct: the 3rd best correct confidence is the threshold.
    assert choose_threshold(confidence, correct, target=0.75, higher_is_known=True) == pytest.approx(0.7)
    assert choose_threshold(confidence, correct, target=1.0, higher_is_known=True) == pytest.approx(0.6)
    confidence[2] = 0.75
    assert choose_threshold(confidence, correct, target=0.75, higher_is_known=True) == pytest.approx(0.75)
    assert choose_threshold(1 - confidence, correct, target=0.75, higher_is_known=False) == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="no validation photo"):
        choose_threshold(confidence, np.zeros(6, bool), target=0.9, higher_is_known=True)


def test_choose_rule_succeeds_with_the_rule_that_rejects_more_wrong() -> None:
    correct = np.array([True] * 8 + [False] * 4)
    # Confidence cannot tell the wrong ones apart; distance can.
    confidence = np.array([0.9, 0.8, 0.85, 0.7, 0.95, 0.75, 0.8, 0.9, 0.9, 0.85, 0.8, 0.95])
    distance = np.array([0.1, 0.2, 0.15, 0.1, 0.12, 0.18, 0.2, 0.3, 0.6, 0.7, 0.5, 0.9])
    rule = choose_rule(confidence, distance, correct, target=0.875)
    assert rule.rule == "distance" and rule.threshold == pytest.approx(0.2)
    assert rule.measured["rejected_wrong"] == 1.0 and rule.measured["kept_correct"] == 0.875
    # Swap the evidence: now confidence separates and distance does not.
    rule = choose_rule(1 - distance, 1 - confidence, correct, target=0.875)
    assert rule.rule == "confidence" and rule.threshold == pytest.approx(0.8)
    assert choose_rule(confidence, None, correct, target=0.875).rule == "confidence"
    with pytest.raises(ConfigError, match="needs embeddings"):
        choose_rule(confidence, None, correct, rule="distance")


def test_class_centroids_fails_with_a_class_without_photos() -> None:
    centroids = class_centroids(np.array([[3.0, 0], [0, 2.0], [0, 5.0]]), np.array([0, 1, 1]), 2)
    np.testing.assert_allclose(centroids, [[1, 0], [0, 1]])
    with pytest.raises(ConfigError, match="no training photo"):
        class_centroids(np.ones((2, 2)), np.array([0, 0]), 2)


@pytest.mark.parametrize("rule", ["distance", "confidence"])
def test_calibrate_unknown_succeeds_with_rule_recorded_and_applied(
    rule: str, embedding_bundles: dict[ModelFormat, Bundle], shelf_data: Path, tmp_path: Path
) -> None:
    import shutil

    from sdk.data import load_split

    train = load_split(shelf_data, "train")
    source = embedding_bundles[ModelFormat.ONNX]
    shutil.copytree(source.path, tmp_path / "b")
    # The val split is the training split too, so the tiny untrained model gets photos right.
    bundle = calibrate_unknown(tmp_path / "b", train=train, val=train, target=0.5, rule=rule)
    recorded = Manifest.load(bundle.path / "manifest.json").unknown
    assert recorded is not None and recorded.rule == rule and recorded == bundle.manifest.unknown
    assert recorded.measured["kept_correct"] >= 0.5 and recorded.measured["n"] == len(train)
    assert (recorded.centroids_file in bundle.manifest.files) == (rule == "distance")
    with ImageClassifier.from_bundle(bundle) as clf:
        results = clf.classify_batch(list(train.paths))
    correct = np.array([r.top1.index == y for r, y in zip(results, train.labels, strict=True)])
    known = np.array([r.is_known() for r in results])
    assert (known & correct).sum() / correct.sum() == pytest.approx(recorded.measured["kept_correct"], abs=1e-3)
    assert 1 - known.mean() == pytest.approx(recorded.measured["rejection_rate"], abs=1e-3)


def test_manifest_fails_with_unknown_section_that_breaks_the_schema(
    embedding_bundles: dict[ModelFormat, Bundle],
) -> None:
    data = json.loads(embedding_bundles[ModelFormat.TFLITE].manifest.to_json())
    confident = {"rule": "confidence", "threshold": 0.5, "target": 0.9}
    rule = UnknownRule(rule="distance", threshold=0.3, target=0.95, centroids_file="centroids.npy")
    with pytest.raises(ManifestError, match="centroids.npy"):
        Manifest.from_dict({**data, "unknown": rule.to_dict()})
    with pytest.raises(ManifestError, match="threshold"):
        Manifest.from_dict({**data, "unknown": {"rule": "confidence", "threshold": 1.5, "target": 0.9}})
    with pytest.raises(ManifestError, match="colour"):
        Manifest.from_dict({**data, "unknown": {"rule": "confidence", "threshold": 0.5, "target": 0.9, "colour": 1}})
    with pytest.raises(ManifestError, match="'unknown' section"):
        Manifest.from_dict(
            {**data, "task": "image_embedding", "unknown": {"rule": "confidence", "threshold": 0.5, "target": 0.9}}
        )
    plain = Manifest.from_dict({**data, "unknown": confident})
    assert Manifest.from_dict(json.loads(plain.to_json())) == plain and "unknown" not in data


def test_cli_kiosk_bundle_succeeds_with_embedding_and_distance_rule(
    tiny_cnn: Callable[..., Any], shelf_data: Path, tmp_path: Path, capsys
) -> None:
    from cli import main
    from converters.export.pipeline import export
    from sdk.data import load_split
    from sdk.manifest import Preprocessing

    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    source = export(
        tiny_cnn(classes=6, size=SIZE, seed=5, pointwise=12), out_dir=tmp_path / "src", formats=["keras"],
        name="tiny", labels=load_split(shelf_data, "train").class_names, preprocessing=pre,
    )[ModelFormat.KERAS]  # fmt: skip
    argv = ["kiosk-bundle", "--model", str(source.path), "--data", str(shelf_data), "--out", str(tmp_path / "k")]
    assert main([*argv, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    bundle = Bundle.open(payload["bundle"])
    assert bundle.manifest.unknown is not None and bundle.manifest.unknown.rule == "distance"
    assert EMBEDDING_OUTPUT in [o.name for o in bundle.manifest.outputs] and payload["unknown"]["rule"] == "distance"
    assert ImageEmbedder.from_bundle(bundle.path).dimension == 12
