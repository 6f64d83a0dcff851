"""Shared by the harness tests: a small synthetic photo set and the suite's tiny CNN exported for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sdk import synthetic
from sdk.bundle import Bundle
from sdk.enums import ModelFormat

SHELF_SIZE = 32


@pytest.fixture(scope="session")
def shelf_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic product classes, 2 train and 3 val photos each (real JPEG files)."""
    return synthetic.generate(tmp_path_factory.mktemp("shelf-data"), train_per_class=2, val_per_class=3, size=40)


@pytest.fixture(scope="session")
def shelf_bundles(
    shelf_data: Path, tiny_cnn: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[ModelFormat, Bundle]:
    """The tiny CNN (6 classes, 32x32) exported to keras, tflite, onnx and openvino for ``shelf_data``."""
    pytest.importorskip("keras")
    from converters.export.pipeline import export
    from sdk.data import load_split
    from sdk.manifest import Preprocessing

    pre = Preprocessing(size=(SHELF_SIZE, SHELF_SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    return export(
        tiny_cnn(classes=6, size=SHELF_SIZE, seed=5),
        out_dir=tmp_path_factory.mktemp("shelf-bundles"),
        formats=["keras", "tflite", "onnx", "openvino"],
        name="tiny",
        labels=load_split(shelf_data, "train").class_names,
        preprocessing=pre,
    )
