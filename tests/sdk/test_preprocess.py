"""Decoding and preprocessing: every source gives the same pixels, every layout the same numbers.

All images are generated here with OpenCV; one optional test uses a real grocery photo.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pp
from sdk.enums import ColorOrder, Interpolation, Layout, ResizeMode
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.preprocess import decode as pp_decode
from sdk.tensors import Quantization, TensorSpec, check_feed

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- helpers


def _smooth_bgr(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like (smooth, colourful) BGR image: JPEG keeps it close to the original."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


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


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _spec(
    shape: tuple[int, ...],
    dtype: str = "float32",
    layout: Layout = Layout.NHWC,
    quantization: Quantization | None = None,
) -> TensorSpec:
    return TensorSpec(name="image", shape=shape, dtype=dtype, layout=layout, quantization=quantization)


def _refuse_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("cv2.imdecode must not be called for an image refused by its header")

    monkeypatch.setattr(pp_decode.cv2, "imdecode", boom)


@pytest.fixture
def photo_bgr() -> np.ndarray:
    return _smooth_bgr(120, 160)


@pytest.fixture
def png_file(tmp_path: Path, photo_bgr: np.ndarray) -> Path:
    path = tmp_path / "photo.png"
    path.write_bytes(_encode(".png", photo_bgr))
    return path


@pytest.fixture
def jpeg_file(tmp_path: Path, photo_bgr: np.ndarray) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encode(".jpg", photo_bgr, (cv2.IMWRITE_JPEG_QUALITY, 90)))
    return path


@pytest.fixture(scope="module")
def huge_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20000x20000 JPEG (6 MB). Encoding untouched zero pages is quick (~1.5 s) and
    barely raises RSS, so no crafted file is needed."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    path.write_bytes(_encode(".jpg", np.zeros((20000, 20000, 3), np.uint8), (cv2.IMWRITE_JPEG_QUALITY, 10)))
    return path


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
def test_decode_image_succeeds_with_lossless_formats(ext: str, params: tuple[int, ...], photo_bgr: np.ndarray) -> None:
    np.testing.assert_array_equal(pp.decode_image(_encode(ext, photo_bgr, params)), photo_bgr[:, :, ::-1])


def test_decode_image_succeeds_with_bytes_after_jpeg_end(jpeg_file: Path) -> None:
    data = jpeg_file.read_bytes()
    np.testing.assert_array_equal(pp.decode_image(data + b"\x00" * 100 + b"trailer"), pp.decode_image(data))


def test_decode_image_succeeds_without_opencv_rgb_decoding(
    monkeypatch: pytest.MonkeyPatch, jpeg_file: Path, png_file: Path
) -> None:
    # OpenCV < 4.11 has no IMREAD_COLOR_RGB: decoding BGR and converting gives the same pixels.
    expected = [pp.decode_image(jpeg_file), pp.decode_image(png_file)]
    monkeypatch.setattr(pp_decode, "_IMREAD_RGB", None)
    for path, pixels in zip((jpeg_file, png_file), expected, strict=True):
        np.testing.assert_array_equal(pp.decode_image(path), pixels)


# --------------------------------------------------------------------------- decode: pixel formats


def test_decode_image_succeeds_with_grayscale_png() -> None:
    grey = _smooth_bgr(30, 40)[:, :, 0].copy()
    image = pp.decode_image(_encode(".png", grey))
    assert image.shape == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[:, :, c], grey)


def test_decode_image_succeeds_with_grayscale_arrays() -> None:
    grey = _smooth_bgr(30, 40)[:, :, 0].copy()
    expected = np.repeat(grey[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(pp.decode_image(grey), expected)
    np.testing.assert_array_equal(pp.decode_image(grey[:, :, None]), expected)


def test_decode_image_succeeds_with_rgba_png_dropping_alpha(photo_bgr: np.ndarray) -> None:
    alpha = np.zeros(photo_bgr.shape[:2], np.uint8)
    alpha[:, ::2] = 255  # half fully transparent: their stored colour is kept, not composited
    image = pp.decode_image(_encode(".png", np.dstack([photo_bgr, alpha])))
    np.testing.assert_array_equal(image, photo_bgr[:, :, ::-1])


def test_decode_image_succeeds_with_bgra_and_rgba_arrays(photo_bgr: np.ndarray) -> None:
    alpha = np.full(photo_bgr.shape[:2], 7, np.uint8)
    rgb = photo_bgr[:, :, ::-1]
    np.testing.assert_array_equal(pp.decode_image(np.dstack([photo_bgr, alpha])), rgb)
    np.testing.assert_array_equal(pp.decode_image(np.dstack([rgb, alpha]), array_color=ColorOrder.RGB), rgb)


def test_decode_image_succeeds_with_16bit_png_scaled_not_truncated() -> None:
    # round(v / 257); truncation (v >> 8) would give 0, 1, 3 for 129, 400, 1000.
    values = np.array([0, 128, 129, 257, 400, 1000, 65535], np.uint16)
    expected = np.array([0, 0, 1, 1, 2, 4, 255], np.uint8)
    grey16 = np.tile(values, (3, 1))
    colour16 = np.dstack([grey16, grey16[:, ::-1], np.full_like(grey16, 65535)])  # BGR
    grey = pp.decode_image(_encode(".png", grey16))
    np.testing.assert_array_equal(grey[0, :, 0], expected)
    colour = pp.decode_image(_encode(".png", colour16))
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
def test_decode_image_succeeds_with_exif_orientation_applied(orientation: int, transform) -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[:20, :30] = (0, 0, 255)  # a red top-left quadrant (BGR)
    plain = _encode(".jpg", image, (cv2.IMWRITE_JPEG_QUALITY, 95))
    upright = pp.decode_image(plain)
    decoded = pp.decode_image(_with_exif(plain, orientation))
    # Same entropy-coded data: the pixels are exactly the plain decode, reoriented.
    np.testing.assert_array_equal(decoded, transform(upright))
    if orientation == 6:
        assert decoded.shape == (60, 40, 3)
        # red now top-right (a margin for JPEG's chroma bleeding at the edges)
        assert decoded[:26, 24:, 0].min() > 200 and decoded[:26, :16, 0].max() < 50


def test_decode_image_succeeds_with_exif_orientation_on_reduced_jpeg() -> None:
    plain = _encode(".jpg", _smooth_bgr(40, 60), (cv2.IMWRITE_JPEG_QUALITY, 95))
    decoded = pp.decode_image(_with_exif(plain, 6), max_pixels=40 * 60 // 2)
    reduced = cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)[:, :, ::-1]
    assert decoded.shape == (30, 20, 3)
    np.testing.assert_array_equal(decoded, np.rot90(reduced, -1))


# --------------------------------------------------------------------------- decode: size limits


def test_decode_image_succeeds_with_huge_jpeg_reduced_during_decode(huge_jpeg: Path) -> None:
    image = pp.decode_image(huge_jpeg, max_pixels=10_000_000)
    assert image.shape == (2500, 2500, 3)  # 1/8 scale: the first factor that fits
    assert image.max() <= 8  # black stays (nearly) black


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_decode_image_succeeds_with_huge_jpeg_in_bounded_memory(huge_jpeg: Path) -> None:
    # A fresh process, so the peak is this decode's and not an earlier test's. Its VmHWM,
    # not ru_maxrss: on Linux ru_maxrss carries the parent's peak across fork and exec.
    code = (
        "import re\n"
        "from sdk.preprocess import decode_image\n"
        f"image = decode_image({str(huge_jpeg)!r})\n"
        "status = open('/proc/self/status').read()\n"
        "peak_kb = int(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
        "print(image.shape[0], image.shape[1], peak_kb / 1024)\n"
    )
    python_path = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": python_path},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    height, width, peak_mb = done.stdout.split()
    assert (int(height), int(width)) == (5000, 5000)  # default max_pixels 50M: 1/4 scale
    full_mb = 20000 * 20000 * 3 / 2**20  # 1144 MB for the full-size decode alone
    assert float(peak_mb) < full_mb / 2, f"peak RSS {peak_mb} MB"


def test_decode_image_fails_with_huge_jpeg_too_large_even_at_one_eighth(
    huge_jpeg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _refuse_decoding(monkeypatch)
    message = r"20000x20000 .*max_pixels=1,000,000, even decoded at 1/8 scale; downscale"
    with pytest.raises(InputError, match=message):
        pp.decode_image(huge_jpeg, max_pixels=1_000_000)


def test_decode_image_fails_with_huge_png_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A structurally valid PNG whose header claims 20000x20000 RGB (1.2 GB decoded): it must
    # be refused from the header alone. PNG has no reduced decode in OpenCV.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 60001 * 16))
        + _png_chunk(b"IEND", b"")
    )
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    _refuse_decoding(monkeypatch)
    with pytest.raises(
        InputError,
        match=r"bomb\.png: the PNG image is 20000x20000 \(400,000,000 pixels\), "
        r"more than max_pixels=50,000,000; downscale the image first",
    ):
        pp.decode_image(path)


@pytest.mark.parametrize(
    ("ext", "params", "alpha"),
    [
        (".png", (), False),
        (".bmp", (), False),
        (".tiff", (), False),
        (".gif", (), False),
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), False),  # VP8
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 101), False),  # VP8L
        (".webp", (cv2.IMWRITE_WEBP_QUALITY, 80), True),  # VP8X
    ],
    ids=["png", "bmp", "tiff", "gif", "webp-lossy", "webp-lossless", "webp-extended"],
)
def test_decode_image_fails_with_max_pixels_exceeded_before_decoding(
    ext: str, params: tuple[int, ...], alpha: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = _smooth_bgr(40, 60)
    if alpha:
        image = np.dstack([image, np.full((40, 60), 200, np.uint8)])
    data = _encode(ext, image, params)
    assert pp.decode_image(data).shape == (40, 60, 3)
    _refuse_decoding(monkeypatch)
    with pytest.raises(InputError, match=r"image is 60x40 \(2,400 pixels\), more than max_pixels=2,399"):
        pp.decode_image(data, max_pixels=2399)


def test_decode_image_succeeds_with_jpeg_over_max_pixels_reduced(jpeg_file: Path) -> None:
    assert pp.decode_image(jpeg_file, max_pixels=120 * 160 // 4).shape == (60, 80, 3)
    assert pp.decode_image(jpeg_file, max_pixels=120 * 160 // 4 - 1).shape == (30, 40, 3)


# --------------------------------------------------------------------------- decode: errors


def test_decode_image_fails_with_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "shelf.jpg"
    with pytest.raises(InputError, match=rf"{missing}: no such image file; check the path") as info:
        pp.decode_image(missing)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_decode_image_fails_with_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=rf"{tmp_path}: is a directory, not an image file"):
        pp.decode_image(tmp_path)


def test_decode_image_fails_with_text_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.jpg"  # the extension lies; the content decides
    path.write_text("apple\nbanana\nmilk\n", encoding="utf-8")
    message = r"labels\.jpg: not an image, it looks like text \(starting 'apple banana"
    with pytest.raises(InputError, match=message):
        pp.decode_image(path)


def test_decode_image_fails_with_random_bytes() -> None:
    data = bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8))
    message = r"image data \(4,096 bytes\): not an image, it looks like unrecognised binary data"
    with pytest.raises(InputError, match=message):
        pp.decode_image(data)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "a PDF document"),
        (b"PK\x03\x04\x14\x00\x00\x00", "a ZIP archive"),
    ],
)
def test_decode_image_fails_with_known_non_image(data: bytes, kind: str) -> None:
    with pytest.raises(InputError, match=rf"not an image, it looks like {kind}"):
        pp.decode_image(data)


@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_decode_image_fails_with_truncated_jpeg(photo_bgr: np.ndarray, progressive: bool) -> None:
    data = _encode(".jpg", photo_bgr, (cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)))
    assert pp.decode_image(data).shape == (120, 160, 3)
    for cut in (len(data) // 2, len(data) - 2, 300, 20):
        with pytest.raises(InputError, match=r"truncated JPEG .*fetch or export it again"):
            pp.decode_image(data[:cut])


def test_decode_image_fails_with_truncated_jpeg_holding_a_thumbnail(photo_bgr: np.ndarray) -> None:
    # An EXIF thumbnail carries its own end-of-image marker before the main image's scan.
    thumbnail = _encode(".jpg", photo_bgr[::8, ::8])
    data = _with_exif(_encode(".jpg", photo_bgr), 1, extra=thumbnail)
    assert pp.decode_image(data).shape == (120, 160, 3)
    with pytest.raises(InputError, match=r"truncated JPEG \(no end-of-image marker\)"):
        pp.decode_image(data[: len(data) * 2 // 3])


def test_decode_image_fails_with_truncated_png(png_file: Path) -> None:
    data = png_file.read_bytes()
    for cut in (len(data) // 2, len(data) - 12, 12):
        with pytest.raises(InputError, match=r"truncated PNG"):
            pp.decode_image(data[:cut])


def test_decode_image_fails_with_corrupt_png_data() -> None:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"garbage!") + _png_chunk(b"IEND", b"")
    data = b"\x89PNG\r\n\x1a\n" + chunks
    with pytest.raises(InputError, match=r"cannot decode this PNG image: it is corrupt.*re-save it"):
        pp.decode_image(data)


def test_decode_image_fails_with_empty_bytes() -> None:
    with pytest.raises(InputError, match=r"image data \(0 bytes\): empty"):
        pp.decode_image(b"")


def test_decode_image_fails_with_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(InputError, match=rf"{path}: empty \(0 bytes\)"):
        pp.decode_image(path)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((8, 8, 5), np.uint8), r"shape \(8, 8, 5\) has 5 channels; pass HxW"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\) has 2 channels"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"shape \(1, 8, 8, 3\) is not an image.*one image at a time"),
        (np.zeros(64, np.uint8), r"shape \(64,\) is not an image"),
        (np.zeros((8, 8, 3), bool), r"dtype bool is a mask, not an image"),
        (np.zeros((8, 8, 3), np.int32), r"dtype int32 is not a supported pixel type"),
        (np.zeros((0, 8, 3), np.uint8), r"shape \(0, 8, 3\) has no pixels"),
        (np.zeros((8, 0), np.uint8), r"shape \(8, 0\) has no pixels"),
    ],
    ids=["5-channels", "2-channels", "4-d", "1-d", "bool", "int32", "zero-height", "zero-width"],
)
def test_decode_image_fails_with_bad_array(array: np.ndarray, message: str) -> None:
    with pytest.raises(InputError, match=rf"image array: {message}"):
        pp.decode_image(array)


@pytest.mark.parametrize("source", [12345, [[0, 0, 0]], None])
def test_decode_image_fails_with_unsupported_source_type(source: object) -> None:
    message = rf"cannot read an image from a {type(source).__name__}; pass a file path"
    with pytest.raises(InputError, match=message):
        pp.decode_image(source)  # type: ignore[arg-type]


def test_decode_image_fails_with_bad_options(photo_bgr: np.ndarray) -> None:
    with pytest.raises(ConfigError, match=r"array_color 'XYZ' is not one of: RGB, BGR"):
        pp.decode_image(photo_bgr, array_color="XYZ")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"max_pixels must be a positive integer"):
        pp.decode_image(photo_bgr, max_pixels=0)


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


def test_preprocess_succeeds_with_camera_frame_geometry() -> None:
    image = _smooth_bgr(480, 640)
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
    interpolation: Interpolation, flag: int
) -> None:
    image = _smooth_bgr(200, 300)
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


def test_preprocess_batch_succeeds_with_images_of_different_sizes(photo_bgr: np.ndarray) -> None:
    images = [photo_bgr[:, :, ::-1], _smooth_bgr(50, 30, seed=2), _smooth_bgr(300, 200, seed=3)]
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
