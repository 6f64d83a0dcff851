"""Shared by the harness tests: a small synthetic photo set and the suite's tiny CNN exported for it."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
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


def _smooth_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like (smooth, colourful) BGR image: JPEG keeps it close to the original."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


@pytest.fixture(scope="session")
def smooth_bgr() -> Callable[..., np.ndarray]:
    """``smooth_bgr(height, width, seed=0)``: a photo-like BGR image, for the preprocessing tests."""
    return _smooth_bgr


@pytest.fixture
def photo_bgr() -> np.ndarray:
    return _smooth_bgr(120, 160)


@pytest.fixture
def png_file(tmp_path: Path, photo_bgr: np.ndarray) -> Path:
    path = tmp_path / "photo.png"
    assert cv2.imwrite(str(path), photo_bgr)
    return path


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buffer = cv2.imencode(ext, image, list(params))
    assert ok
    return buffer.tobytes()


def _exif_app1(orientation: int, extra: bytes = b"") -> bytes:
    """An APP1 segment holding a little-endian TIFF with one IFD entry: Orientation (0x0112)."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd + extra
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _with_exif(jpeg: bytes, orientation: int, extra: bytes = b"") -> bytes:
    return jpeg[:2] + _exif_app1(orientation, extra) + jpeg[2:]


@pytest.fixture(scope="session")
def encode() -> Callable[..., bytes]:
    """``encode(ext, image, params=())``: the image encoded by OpenCV (``.jpg``, ``.png``, ...)."""
    return _encode


@pytest.fixture(scope="session")
def with_exif() -> Callable[..., bytes]:
    """``with_exif(jpeg, orientation, extra=b"")``: the JPEG with an EXIF Orientation segment."""
    return _with_exif


@pytest.fixture
def jpeg_file(tmp_path: Path, photo_bgr: np.ndarray) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encode(".jpg", photo_bgr, (cv2.IMWRITE_JPEG_QUALITY, 90)))
    return path
