"""Shared fixtures: a tiny trained-enough Keras CNN exported once to every format."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("apple", "banana", "milk", "yoghurt")
SIZE = 32


def build_tiny_cnn(
    *,
    classes: int = len(LABELS),
    size: int = SIZE,
    width: int = 8,
    pointwise: int | None = None,
    extra: Callable[[Any], Any] | None = None,
    seed: int = 7,
    name: str = "tiny_cnn",
):  # -> keras.Model
    """The one tiny CNN of the test suite: conv -> [extra] -> BN -> ReLU -> depthwise -> [pointwise] -> logits.

    Layer names are fixed (``conv``, ``bn``, ``relu``, ``dw``, ``pw``, ``pool``, ``logits``) so tests
    can name layers. BatchNorm gets non-trivial statistics so exporters really fold it.
    """
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name="conv")(inputs)
    if extra is not None:
        x = extra(x)
    bn = keras.layers.BatchNormalization(name="bn")
    x = keras.layers.ReLU(name="relu")(bn(x))
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    if pointwise:
        x = keras.layers.ReLU(name="relu_dw")(x)
        x = keras.layers.Conv2D(pointwise, 1, name="pw")(x)
        x = keras.layers.ReLU(name="relu_pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(seed + 1)
    bn.set_weights(
        [
            rng.uniform(0.5, 1.5, width),
            rng.normal(0, 0.1, width),
            rng.normal(0, 0.1, width),
            rng.uniform(0.5, 2.0, width),
        ]
    )
    return model


@pytest.fixture(scope="session")
def tiny_cnn() -> Callable[..., Any]:
    """The builder of the suite's tiny CNN (see :func:`build_tiny_cnn`), for tests that need a variant."""
    return build_tiny_cnn


@pytest.fixture(scope="session")
def tiny_model():
    return build_tiny_cnn()


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A few real JPEG/PNG files of varied size and colour."""
    import cv2

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate(((48, 64), (80, 60), (40, 40), (120, 90), (33, 57))):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        image[: h // 2, :, i % 3] = 250  # a dominant colour per image
        path = folder / (f"img{i}.jpg" if i % 2 == 0 else f"img{i}.png")
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def exported_bundles(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ModelFormat -> Bundle for tflite, openvino, onnx and keras (exported once)."""
    from converters.export.pipeline import export
    from sdk.manifest import Preprocessing

    out = tmp_path_factory.mktemp("bundles")
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    return export(tiny_model, out_dir=out, name="tiny", labels=LABELS, preprocessing=pre)
