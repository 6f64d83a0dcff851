"""Decoding and preprocessing: every source gives the same pixels, every layout the same numbers.

All images are generated here with OpenCV; one optional test uses a real grocery photo.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pp
from sdk.enums import ColorOrder
from sdk.errors import InputError
from sdk.preprocess import _codecs as pp_codecs

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- decode: sources


def test_decode_image_succeeds_with_path_bytes_and_array_alike(png_file: Path, photo_bgr: np.ndarray) -> None:
    expected = photo_bgr[:, :, ::-1]
    for source in (str(png_file), png_file, png_file.read_bytes(), photo_bgr):
        image = pp.decode_image(source)
        assert image.dtype == np.uint8 and image.flags.c_contiguous
        np.testing.assert_array_equal(image, expected)


def test_decode_image_succeeds_with_non_ascii_path(tmp_path: Path, png_file: Path) -> None:
    path = tmp_path / "ägg-äpple 🍎.png"
    path.write_bytes(png_file.read_bytes())
    np.testing.assert_array_equal(pp.decode_image(path), pp.decode_image(png_file))


def test_decode_image_succeeds_with_jpeg_path_and_bytes_alike(jpeg_file: Path) -> None:
    from_path = pp.decode_image(jpeg_file)
    np.testing.assert_array_equal(from_path, pp.decode_image(jpeg_file.read_bytes()))
    np.testing.assert_array_equal(from_path, cv2.imread(str(jpeg_file))[:, :, ::-1])


def test_decode_image_succeeds_with_bgr_and_rgb_arrays_alike(photo_bgr: np.ndarray) -> None:
    rgb = np.ascontiguousarray(photo_bgr[:, :, ::-1])
    from_bgr = pp.decode_image(photo_bgr)
    np.testing.assert_array_equal(from_bgr, rgb)
    np.testing.assert_array_equal(pp.decode_image(rgb, array_color=ColorOrder.RGB), rgb)
    # A reversed (negative-stride) view and the string form of the enum work too.
    np.testing.assert_array_equal(pp.decode_image(photo_bgr[:, :, ::-1], array_color="rgb"), rgb)


@pytest.mark.parametrize(
    ("ext", "params"),
    [(".bmp", ()), (".tiff", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101)), (".ppm", ())],
)
def test_decode_image_succeeds_with_lossless_formats(
    encode, ext: str, params: tuple[int, ...], photo_bgr: np.ndarray
) -> None:
    np.testing.assert_array_equal(pp.decode_image(encode(ext, photo_bgr, params)), photo_bgr[:, :, ::-1])


def test_decode_image_succeeds_with_bytes_after_jpeg_end(jpeg_file: Path) -> None:
    data = jpeg_file.read_bytes()
    np.testing.assert_array_equal(pp.decode_image(data + b"\x00" * 100 + b"trailer"), pp.decode_image(data))


def test_decode_image_succeeds_without_opencv_rgb_decoding(
    monkeypatch: pytest.MonkeyPatch, jpeg_file: Path, png_file: Path
) -> None:
    # OpenCV < 4.11 has no IMREAD_COLOR_RGB: decoding BGR and converting gives the same pixels
    # (PNG goes through OpenCV; JPEG through simplejpeg, unaffected).
    expected = [pp.decode_image(jpeg_file), pp.decode_image(png_file)]
    monkeypatch.setattr(pp_codecs, "_IMREAD_RGB", None)
    for path, pixels in zip((jpeg_file, png_file), expected, strict=True):
        np.testing.assert_array_equal(pp.decode_image(path), pixels)


# --------------------------------------------------------------------------- decode: pixel formats


def test_decode_image_succeeds_with_grayscale_png(encode, smooth_bgr) -> None:
    grey = smooth_bgr(30, 40)[:, :, 0].copy()
    image = pp.decode_image(encode(".png", grey))
    assert image.shape == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], grey)


def test_decode_image_succeeds_with_grayscale_arrays(smooth_bgr) -> None:
    grey = smooth_bgr(30, 40)[:, :, 0].copy()
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(pp.decode_image(grey), expected)
    np.testing.assert_array_equal(pp.decode_image(grey[:, :, None]), expected)


def test_decode_image_succeeds_with_rgba_png_dropping_alpha(encode, photo_bgr: np.ndarray) -> None:
    alpha = np.zeros(photo_bgr.shape[:2], np.uint8)
    alpha[:, ::2] = 255  # half fully transparent: their stored colour is kept, not composited
    image = pp.decode_image(encode(".png", np.dstack([photo_bgr, alpha])))
    np.testing.assert_array_equal(image, photo_bgr[:, :, ::-1])


def test_decode_image_succeeds_with_bgra_and_rgba_arrays(photo_bgr: np.ndarray) -> None:
    alpha = np.full(photo_bgr.shape[:2], 7, np.uint8)
    rgb = photo_bgr[:, :, ::-1]
    np.testing.assert_array_equal(pp.decode_image(np.dstack([photo_bgr, alpha])), rgb)
    np.testing.assert_array_equal(pp.decode_image(np.dstack([rgb, alpha]), array_color=ColorOrder.RGB), rgb)


def test_decode_image_succeeds_with_16bit_png_scaled_not_truncated(encode) -> None:
    # round(v / 257); truncation (v >> 8) would give 0, 1, 3 for 129, 400, 1000.
    values = np.array([0, 128, 129, 257, 400, 1000, 65535], np.uint16)
    expected = np.array([0, 0, 1, 1, 2, 4, 255], np.uint8)
    grey16 = np.tile(values, (3, 1))
    colour16 = np.dstack([grey16, grey16[:, ::-1], np.full_like(grey16, 65535)])  # BGR
    grey = pp.decode_image(encode(".png", grey16))
    np.testing.assert_array_equal(grey[0, :, 0], expected)
    colour = pp.decode_image(encode(".png", colour16))
    np.testing.assert_array_equal(colour[0, :, 2], expected)
    np.testing.assert_array_equal(colour[0, :, 1], expected[::-1])
    np.testing.assert_array_equal(colour[0, :, 0], 255)


def test_decode_image_succeeds_with_every_16bit_level_rounded() -> None:
    levels = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    image = pp.decode_image(levels)
    np.testing.assert_array_equal(image[:, :, 0], ((levels.astype(np.int64) + 128) // 257).astype(np.uint8))


def test_decode_image_succeeds_with_float_array_in_unit_range() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((20, 30, 3))
    values[0, 0] = (0.0, 1.0, 0.25)
    for dtype in (np.float64, np.float32, np.float16):
        image = pp.decode_image(values.astype(dtype), array_color=ColorOrder.RGB)
        expected = np.rint(values.astype(dtype).astype(np.float64) * 255)
        np.testing.assert_array_equal(image, expected.astype(np.uint8))
    assert tuple(pp.decode_image(values, array_color=ColorOrder.RGB)[0, 0]) == (0, 255, 64)


@pytest.mark.parametrize("bad", [255.0, -0.1, np.nan], ids=["0-255", "negative", "nan"])
def test_decode_image_fails_with_float_array_out_of_range(bad: float) -> None:
    values = np.full((4, 4, 3), 0.5, np.float32)
    values[1, 1, 1] = bad
    with pytest.raises(InputError, match=r"float pixels must be in \[0, 1\].*scale them"):
        pp.decode_image(values)


# --------------------------------------------------------------------------- decode: EXIF orientation


@pytest.mark.parametrize(
    ("orientation", "transform"),
    [
        (1, lambda x: x),
        (2, lambda x: x[:, ::-1]),  # mirrored
        (3, lambda x: np.rot90(x, 2)),
        (6, lambda x: np.rot90(x, -1)),  # rotate 90 clockwise to view
        (8, lambda x: np.rot90(x, 1)),  # rotate 90 counter-clockwise to view
    ],
)
def test_decode_image_succeeds_with_exif_orientation_applied(with_exif, encode, orientation: int, transform) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:20, :30] = (0, 0, 255)  # a red top-left quadrant (BGR)
    plain = encode(".jpg", image, (cv2.IMWRITE_JPEG_QUALITY, 95))
    upright = pp.decode_image(plain)
    decoded = pp.decode_image(with_exif(plain, orientation))
    # Same entropy-coded data: the pixels are exactly the plain decode, reoriented.
    np.testing.assert_array_equal(decoded, transform(upright))
    if orientation == 6:
        assert decoded.shape == (60, 40, 3)
        # red now top-right (a margin for JPEG's chroma bleeding at the edges)
        assert decoded[:26, 24:, 0].min() > 200 and decoded[:26, :16, 0].max() < 50


def test_decode_image_succeeds_with_exif_orientation_on_reduced_jpeg(with_exif, encode, smooth_bgr) -> None:
    plain = encode(".jpg", smooth_bgr(40, 60), (cv2.IMWRITE_JPEG_QUALITY, 95))
    decoded = pp.decode_image(with_exif(plain, 6), max_pixels=40 * 60 // 2)
    reduced = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)[:, :, ::-1]
    assert decoded.shape == (30, 20, 3)
    np.testing.assert_array_equal(decoded, np.rot90(reduced, -1))
