"""Layer localisation on an OpenVINO IR: per-layer activations vs an fp32 model, parent lookup."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
keras = pytest.importorskip("keras")

from sdk.bundle import Bundle, sha256_file, write_bundle  # noqa: E402
from sdk.enums import ModelFormat, Runtime  # noqa: E402
from sdk.errors import ConfigError  # noqa: E402
from sdk.manifest import MANIFEST_NAME, Preprocessing  # noqa: E402
from sdk.qa.localize import INPUT, find_fp32_parent, localize, relative_error  # noqa: E402

pytestmark = [pytest.mark.openvino, pytest.mark.tensorflow]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from converters.export.pipeline import export

    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    pre = Preprocessing(size=(16, 16), mean=(127.5,) * 3, std=(127.5,) * 3)
    return export(
        keras.Model(inputs, outputs),
        out_dir=tmp_path_factory.mktemp("b"),
        formats=["openvino", "tflite"],
        name="tiny",
        labels=("a", "b", "c"),
        preprocessing=pre,
    )


def test_localize_succeeds_with_no_divergence_on_identical_inputs(bundles) -> None:
    ir = bundles[ModelFormat.OPENVINO]
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)

    where = localize(Runtime.OPENVINO, ir, x, fp32=ir, fp32_inputs=x.copy(), compared_with="itself")

    assert where.first is None and where.layers_compared >= 4
    assert all(d.rel_error == 0.0 for d in where.worst)
    assert "no layer diverges" in where.summary()


def test_localize_succeeds_naming_the_input_when_inputs_differ(bundles) -> None:
    ir = bundles[ModelFormat.OPENVINO]
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)

    where = localize(Runtime.OPENVINO, ir, x * 0.5 + 0.3, fp32=ir, fp32_inputs=x, compared_with="itself")

    assert where.first is not None and where.first.layer == INPUT and where.first.index == 0
    assert where.first.rel_error == pytest.approx(relative_error(x * 0.5 + 0.3, x))
    assert "preprocessing" in where.summary()
    assert where.to_dict()["first_diverging"]["layer"] == INPUT


def test_localize_fails_with_a_runtime_without_layer_outputs(bundles) -> None:
    x = np.zeros((1, 16, 16, 3), np.float32)
    tflite = bundles[ModelFormat.TFLITE]
    with pytest.raises(ConfigError, match="layer localisation runs on"):
        localize(Runtime.LITERT, tflite, x, fp32=tflite, fp32_inputs=x, compared_with="itself")


def test_find_fp32_parent_succeeds_only_with_the_recorded_hash(bundles, tmp_path: Path) -> None:
    parent = tmp_path / "variants" / "tiny-openvino-fp32"
    shutil.copytree(bundles[ModelFormat.OPENVINO].path, parent)
    child = tmp_path / "child"
    shutil.copytree(parent, child)
    m = Bundle.open(child).manifest

    def with_parent(value: str) -> Bundle:
        return write_bundle(
            child, m.with_changes(provenance=m.provenance.__class__(**{**m.provenance.__dict__, "parent": value}))
        )

    found = find_fp32_parent(with_parent(f"tiny-openvino-fp32@sha256:{sha256_file(parent / MANIFEST_NAME)}"))
    assert found is not None and found.path == parent
    assert find_fp32_parent(with_parent("tiny-openvino-fp32@sha256:" + "0" * 64)) is None
    assert find_fp32_parent(with_parent("no-such-bundle")) is None
