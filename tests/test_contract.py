"""The contract test: one Keras CNN, exported to every format, through every adapter."""

from __future__ import annotations

import numpy as np
import pytest

import sdk
from sdk import preprocess as pp
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat

pytestmark = pytest.mark.contract

CASES = [
    (fmt, runtime) for fmt in ModelFormat if fmt is not ModelFormat.SAVEDMODEL for runtime in RUNTIMES_FOR_FORMAT[fmt]
]


@pytest.mark.parametrize(("fmt", "runtime"), CASES, ids=lambda v: getattr(v, "value", str(v)))
def test_every_adapter_matches_keras_succeeds_with_the_same_images(
    fmt, runtime, exported_bundles, tiny_model, sample_images
) -> None:
    bundle = exported_bundles[fmt]
    manifest = bundle.manifest
    spec = manifest.inputs[0]
    batch = np.concatenate([pp.load_and_preprocess(p, manifest.preprocessing, spec) for p in sample_images])
    expected = np.asarray(tiny_model(batch, training=False))
    with sdk.load(bundle.path, runtime=runtime) as model:
        got = model.run({spec.name: batch})[manifest.outputs[0].name]
        single = model.run({spec.name: batch[:1]})[manifest.outputs[0].name]
        assert model.info.runtime.value == runtime.value
        assert model.info.actual_device
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert float(np.abs(single - expected[:1]).max()) <= 1e-4


@pytest.mark.parametrize(("fmt", "runtime"), CASES, ids=lambda v: getattr(v, "value", str(v)))
def test_image_classifier_succeeds_with_same_top1_on_every_runtime(
    fmt, runtime, exported_bundles, tiny_model, sample_images
) -> None:
    bundle = exported_bundles[fmt]
    with sdk.ImageClassifier.from_bundle(bundle.path, runtime=runtime) as classifier:
        results = classifier.classify_batch(sample_images, top_k=3)
        one = classifier.classify(sample_images[0], top_k=2)
    spec = bundle.manifest.inputs[0]
    batch = np.concatenate([pp.load_and_preprocess(p, bundle.manifest.preprocessing, spec) for p in sample_images])
    expected_logits = np.asarray(tiny_model(batch, training=False))
    expected = expected_logits.argmax(1)
    assert [r.top1.index for r in results] == expected.tolist()
    assert one.top1.index == expected[0] and len(one.categories) == 2
    assert one.top1.label == bundle.labels[one.top1.index]
    # Scores are the softmax of the model's logits, in descending order.
    probs = np.exp(expected_logits - expected_logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    for result, row in zip(results, probs, strict=True):
        assert [c.index for c in result.categories] == np.argsort(-row)[:3].tolist()
        assert np.allclose([c.score for c in result.categories], np.sort(row)[::-1][:3], atol=1e-4)
    assert one.timings.inference_ms > 0 and one.timings.preprocess_ms > 0
    assert one.ran.runtime.value == runtime.value
