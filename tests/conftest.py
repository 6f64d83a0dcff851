"""Shared fixtures: a tiny trained-enough Keras CNN exported once to every format."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

LABELS = ("apple", "banana", "milk", "yoghurt")
SIZE = 32


def _tiny_model():  # -> keras.Model
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(len(LABELS), name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    # Non-trivial BN statistics so the exported graphs fold real numbers.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.2, 0.2, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 1.5, 8).astype("float32"))
    return model


@pytest.fixture(scope="session")
def tiny_model():
    return _tiny_model()


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
    from converters.export import export
    from sdk.manifest import Preprocessing

    out = tmp_path_factory.mktemp("bundles")
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    return export(tiny_model, out_dir=out, name="tiny", labels=LABELS, preprocessing=pre)
