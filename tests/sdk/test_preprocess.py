"""Decoding and preprocessing: every source gives the same pixels, every layout the same numbers.

All images are generated here with OpenCV; one optional test uses a real grocery photo.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pp
from sdk.enums import ColorOrder, Interpolation, Layout, ResizeMode
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.tensors import Quantization, TensorSpec, check_feed

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- helpers


def _spec(
    shape: tuple[int, ...],
    dtype: str = "float32",
    layout: Layout = Layout.NHWC,
    quantization: Quantization | None = None,
) -> TensorSpec:
    return TensorSpec(name="image", shape=shape, dtype=dtype, layout=layout, quantization=quantization)


# --------------------------------------------------------------------------- preprocess: numerics


def test_preprocess_succeeds_with_mean_std_computed_by_hand() -> None:
    image = np.array([[(10, 20, 30), (40, 50, 60)], [(0, 0, 0), (255, 255, 255)]], np.uint8)
    pre = Preprocessing(size=(2, 2), resize_mode=ResizeMode.STRETCH, mean=(10, 20, 30), std=(2, 4, 5))
    tensor = pp.preprocess(image, pre, _spec((1, 2, 2, 3)))
    expected = [[(0, 0, 0), (15, 7.5, 6)], [(-5, -5, -6), (122.5, 58.75, 45)]]
    assert tensor.dtype == np.float32 and tensor.shape == (1, 2, 2, 3)
    np.testing.assert_array_equal(tensor[0], np.array(expected, np.float32))


def test_preprocess_succeeds_with_bgr_color_order(photo_bgr: np.ndarray) -> None:
    rgb = photo_bgr[:, :, ::-1]
    mean, std = (120.0, 110.0, 100.0), (60.0, 55.0, 50.0)
    as_rgb = Preprocessing(size=(64, 64), mean=mean, std=std)
    as_bgr = Preprocessing(size=(64, 64), color_order=ColorOrder.BGR, mean=mean[::-1], std=std[::-1])
    spec = _spec((-1, 64, 64, 3))
    expected = pp.preprocess(rgb, as_rgb, spec)[..., ::-1]
    np.testing.assert_array_equal(pp.preprocess(rgb, as_bgr, spec), expected)


@pytest.mark.parametrize(
    ("dtype", "quantization", "expected"),
    [
        # x = (p - 127.5) / 127.5 = (-1, -0.498, 0.0039, 1); q = round(x / scale + zero_point), clipped
        ("uint8", Quantization(scale=1 / 128, zero_point=128), [0, 64, 129, 255]),
        ("int8", Quantization(scale=1 / 128, zero_point=0), [-128, -64, 1, 127]),
        ("int8", Quantization(scale=1 / 64, zero_point=-10), [-74, -42, -10, 54]),
        ("int16", Quantization(scale=1 / 1000, zero_point=5), [-995, -493, 9, 1005]),
    ],
)
def test_preprocess_succeeds_with_quantized_input(dtype: str, quantization: Quantization, expected: list[int]) -> None:
    levels = np.array([0, 64, 128, 255], np.uint8)
    image = np.repeat(levels[None, :, None], 3, axis=2)  # 1x4 grey
    pre = Preprocessing(size=(1, 4), resize_mode=ResizeMode.STRETCH, mean=(127.5,) * 3, std=(127.5,) * 3)
    spec = _spec((1, 1, 4, 3), dtype, quantization=quantization)
    tensor = pp.preprocess(image, pre, spec)
    assert tensor.dtype == np.dtype(dtype)
    for c in range(3):
        np.testing.assert_array_equal(tensor[0, 0, :, c], expected)
    check_feed([spec], {"image": tensor}, "test")


def test_preprocess_succeeds_with_quantize_matching_the_float_path(photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(32, 32), mean=(123.7, 116.3, 103.5), std=(58.4, 57.1, 57.4))
    quantization = Quantization(scale=0.0186, zero_point=-14)
    floats = pp.preprocess(photo_bgr, pre, _spec((1, 32, 32, 3)))
    quantized = pp.preprocess(photo_bgr, pre, _spec((1, 32, 32, 3), "int8", quantization=quantization))
    np.testing.assert_array_equal(quantized, quantization.quantize(floats, "int8"))


def test_preprocess_succeeds_with_raw_uint8_without_quantization(photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(100, 100), crop_fraction=1.0)
    tensor = pp.preprocess(photo_bgr, pre, _spec((1, 100, 100, 3), "uint8"))
    assert tensor.dtype == np.uint8
    resized = cv2.resize(photo_bgr, (133, 100), interpolation=cv2.INTER_LINEAR_EXACT)  # 160*100/120
    np.testing.assert_array_equal(tensor[0], resized[:, 16:116])


def test_preprocess_succeeds_with_float16(photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
    half = pp.preprocess(photo_bgr, pre, _spec((1, 32, 32, 3), "float16"))
    assert half.dtype == np.float16
    full = pp.preprocess(photo_bgr, pre, _spec((1, 32, 32, 3)))
    np.testing.assert_array_equal(half, full.astype(np.float16))


@pytest.mark.parametrize(
    ("dtype", "quantization"),
    [("float32", None), ("float16", None), ("uint8", None), ("int8", Quantization(scale=0.02, zero_point=3))],
)
@pytest.mark.parametrize("channels", [3, 1])
def test_preprocess_succeeds_with_nchw_as_nhwc_transposed(
    photo_bgr: np.ndarray, dtype: str, quantization: Quantization | None, channels: int
) -> None:
    identity = dtype == "uint8"
    pre = Preprocessing(
        size=(48, 40),
        color_order=ColorOrder.BGR,
        mean=(0.0,) * 3 if identity else (100.0, 110.0, 120.0),
        std=(1.0,) * 3 if identity else (50.0, 60.0, 70.0),
    )
    nhwc = pp.preprocess(photo_bgr, pre, _spec((1, 48, 40, channels), dtype, Layout.NHWC, quantization))
    nchw = pp.preprocess(photo_bgr, pre, _spec((1, channels, 48, 40), dtype, Layout.NCHW, quantization))
    assert nhwc.shape == (1, 48, 40, channels) and nchw.shape == (1, channels, 48, 40)
    assert nchw.dtype == nhwc.dtype == np.dtype(dtype)
    assert nchw.flags.c_contiguous
    np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))


def test_preprocess_succeeds_with_grey_model_using_first_mean_std(photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(24, 24), resize_mode=ResizeMode.STRETCH, mean=(100.0, 0.0, 0.0), std=(50.0, 1.0, 1.0))
    tensor = pp.preprocess(photo_bgr[:, :, ::-1], pre, _spec((1, 24, 24, 1)))
    resized = cv2.resize(photo_bgr, (24, 24), interpolation=cv2.INTER_LINEAR_EXACT)
    grey = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(tensor[0, :, :, 0], (grey.astype(np.float32) - 100) / 50)


def test_preprocess_succeeds_with_dynamic_height_and_width(photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(30, 20))
    assert pp.preprocess(photo_bgr, pre, _spec((-1, -1, -1, 3))).shape == (1, 30, 20, 3)
    assert pp.preprocess(photo_bgr, pre, _spec((-1, -1, -1, -1), layout=Layout.NCHW)).shape == (1, 3, 30, 20)


# --------------------------------------------------------------------------- preprocess: geometry


def _pattern(height: int, width: int) -> np.ndarray:
    """RGB pixels that name their coordinates: R = row, G = column % 256, B = column // 256."""
    rows, cols = np.mgrid[:height, :width]
    return np.dstack([rows, cols % 256, cols // 256]).astype(np.uint8)


def _raw(size: tuple[int, int], **changes: object) -> tuple[Preprocessing, TensorSpec]:
    return Preprocessing(size=size, **changes), _spec((1, *size, 3), "uint8")  # type: ignore[arg-type]


def test_preprocess_succeeds_with_shorter_side_crop_without_resizing() -> None:
    image = _pattern(200, 300)  # 300 wide, 200 high
    # shorter side round(100 / 0.5) = 200 is already the image's: only the centre crop acts
    pre, spec = _raw((100, 100), crop_fraction=0.5)
    np.testing.assert_array_equal(pp.preprocess(image, pre, spec)[0], image[50:150, 100:200])


def test_preprocess_succeeds_with_shorter_side_crop_after_resizing() -> None:
    image = _pattern(200, 300)
    # shorter side 200 -> 100: 150x100, centre crop columns 25..125; nearest picks 2i + 1
    pre, spec = _raw((100, 100), crop_fraction=1.0, interpolation=Interpolation.NEAREST)
    tensor = pp.preprocess(image, pre, spec)[0]
    rows, cols = np.mgrid[:100, :100]
    np.testing.assert_array_equal(tensor, image[2 * rows + 1, 2 * (cols + 25) + 1])


def test_preprocess_succeeds_with_shorter_side_crop_to_non_square_size() -> None:
    image = _pattern(300, 200)  # portrait
    # to cover 100 high x 150 wide the width sets the scale: 200 -> 150, 300 -> 225; top (225-100)//2 = 62
    pre, spec = _raw((100, 150), crop_fraction=1.0, interpolation=Interpolation.NEAREST)
    resized = cv2.resize(image, (150, 225), interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(pp.preprocess(image, pre, spec)[0], resized[62:162, :])


def test_preprocess_succeeds_with_camera_frame_geometry(smooth_bgr) -> None:
    image = smooth_bgr(480, 640)
    # 224 / 0.875 = 256: 640x480 -> 341x256 (341.33 rounded), crop at (16, 58)
    pre, spec = _raw((224, 224))
    resized = cv2.resize(image, (341, 256), interpolation=cv2.INTER_LINEAR_EXACT)
    np.testing.assert_array_equal(pp.preprocess(image, pre, spec)[0], resized[16:240, 58:282])


@pytest.mark.parametrize(
    ("interpolation", "flag"),
    [
        (Interpolation.NEAREST, cv2.INTER_NEAREST_EXACT),
        (Interpolation.BILINEAR, cv2.INTER_LINEAR_EXACT),
        (Interpolation.BICUBIC, cv2.INTER_CUBIC),
        (Interpolation.AREA, cv2.INTER_AREA),
    ],
)
def test_preprocess_succeeds_with_stretch_and_interpolation_followed_exactly(
    smooth_bgr, interpolation: Interpolation, flag: int
) -> None:
    image = smooth_bgr(200, 300)
    # A 6x shrink: the requested interpolation is used as is, never swapped for area.
    pre, spec = _raw((32, 50), resize_mode=ResizeMode.STRETCH, interpolation=interpolation)
    tensor = pp.preprocess(image, pre, spec)[0]
    np.testing.assert_array_equal(tensor, cv2.resize(image, (50, 32), interpolation=flag))
    if interpolation is not Interpolation.AREA:
        assert not np.array_equal(tensor, cv2.resize(image, (50, 32), interpolation=cv2.INTER_AREA))


# --------------------------------------------------------------------------- preprocess: errors


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            _spec((1, 32, 32, 3), layout=Layout.ANY),
            r"has shape \(1, 32, 32, 3\) and layout ANY; an image input needs rank 4 with layout NHWC",
        ),
        (_spec((1, 3072), layout=Layout.NC), r"has shape \(1, 3072\) and layout NC; an image input needs"),
        (_spec((1, 24, 24, 3)), r"is 24x24 but the preprocessing size is 32x32"),
        (_spec((1, 32, 32, 4)), r"has 4 channels"),
        (
            _spec((1, 32, 32, 3), "uint8"),
            r"is uint8 without quantization, so it takes raw pixels.*mean \(127\.5.*set mean 0 and std 1",
        ),
        (_spec((1, 32, 32, 3), "int8"), r"has dtype int8 without quantization; an image input is float32"),
        (
            _spec((1, 32, 32, 3), "int32", quantization=Quantization(scale=1.0, zero_point=0)),
            r"has dtype int32; an image input",
        ),
    ],
    ids=["layout-any", "rank-2", "size", "channels", "uint8-with-mean", "int8-unquantized", "int32"],
)
def test_preprocess_fails_with_spec_not_matching(spec: TensorSpec, message: str, photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
    with pytest.raises(ConfigError, match=rf"input tensor 'image' {message}"):
        pp.preprocess(photo_bgr, pre, spec)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.zeros((0, 8, 3), np.uint8),
        "photo.jpg",
    ],
    ids=["rgba", "grey", "float", "empty", "path"],
)
def test_preprocess_fails_with_image_not_rgb_uint8(image: object) -> None:
    with pytest.raises(InputError, match=r"preprocess expects an HxWx3 uint8 RGB image, got .*decode_image"):
        pp.preprocess(image, Preprocessing(size=(4, 4)), _spec((1, 4, 4, 3)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- batches and convenience


def test_preprocess_batch_succeeds_with_images_of_different_sizes(smooth_bgr, photo_bgr: np.ndarray) -> None:
    images = [photo_bgr[:, :, ::-1], smooth_bgr(50, 30, seed=2), smooth_bgr(300, 200, seed=3)]
    pre = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
    spec = _spec((-1, 3, 32, 32), layout=Layout.NCHW)
    batch = pp.preprocess_batch(images, pre, spec)
    assert batch.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(batch, np.concatenate([pp.preprocess(i, pre, spec) for i in images]))
    check_feed([spec], {"image": batch}, "test")


def test_preprocess_batch_fails_with_no_images() -> None:
    with pytest.raises(InputError, match=r"preprocess_batch got no images"):
        pp.preprocess_batch([], Preprocessing(size=(4, 4)), _spec((-1, 4, 4, 3)))


def test_preprocess_batch_fails_with_a_bad_image_named_by_index(photo_bgr: np.ndarray) -> None:
    with pytest.raises(InputError, match=r"image 1 of the batch: preprocess expects an HxWx3 uint8"):
        pp.preprocess_batch([photo_bgr, photo_bgr[:, :, 0]], Preprocessing(size=(4, 4)), _spec((-1, 4, 4, 3)))


def test_load_and_preprocess_succeeds_with_path_bytes_and_array_alike(png_file: Path, photo_bgr: np.ndarray) -> None:
    pre = Preprocessing(size=(64, 64), mean=(127.5,) * 3, std=(127.5,) * 3)
    spec = _spec((1, 64, 64, 3))
    expected = pp.load_and_preprocess(png_file, pre, spec)
    np.testing.assert_array_equal(pp.load_and_preprocess(png_file.read_bytes(), pre, spec), expected)
    np.testing.assert_array_equal(pp.load_and_preprocess(photo_bgr, pre, spec), expected)
    rgb = photo_bgr[:, :, ::-1]
    from_rgb = pp.load_and_preprocess(rgb, pre, spec, array_color=ColorOrder.RGB)
    np.testing.assert_array_equal(from_rgb, expected)


def test_load_and_preprocess_fails_with_spec_before_decoding(tmp_path: Path) -> None:
    # A manifest problem is reported as such even when the image is also bad.
    with pytest.raises(ConfigError, match=r"is 8x8 but the preprocessing size is 4x4"):
        pp.load_and_preprocess(tmp_path / "missing.jpg", Preprocessing(size=(4, 4)), _spec((1, 8, 8, 3)))


def _grocery_photo() -> Path | None:
    root = Path(os.environ.get("SHELFEDGE_DATA") or REPO.parent / "shared" / "data" / "grocery")
    return next(iter(sorted((root / "val").rglob("*.jpg"))), None) if (root / "val").is_dir() else None


@pytest.mark.skipif(_grocery_photo() is None, reason="the grocery dataset is not on this machine")
def test_load_and_preprocess_succeeds_with_real_grocery_photo() -> None:
    path = _grocery_photo()
    assert path is not None
    image = pp.decode_image(path)
    np.testing.assert_array_equal(image, cv2.imread(str(path))[:, :, ::-1])
    pre = Preprocessing(size=(224, 224), mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
    spec = _spec((-1, 3, 224, 224), layout=Layout.NCHW)
    tensor = pp.load_and_preprocess(path, pre, spec)
    check_feed([spec], {"image": tensor}, str(path))
    assert np.isfinite(tensor).all() and -2.2 < tensor.min() < tensor.max() < 2.7
