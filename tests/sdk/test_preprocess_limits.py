"""Decoding under hostile input: size limits before decoding, and every kind of broken file refused.

All images are generated here with OpenCV; one optional test uses a real grocery photo.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import preprocess as pp
from sdk.errors import ConfigError, InputError
from sdk.preprocess import decode as pp_decode

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- helpers


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _refuse_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("cv2.imdecode must not be called for an image refused by its header")

    monkeypatch.setattr(pp_decode.cv2, "imdecode", boom)


@pytest.fixture(scope="module")
def huge_jpeg(encode: Callable[..., bytes], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 20000x20000 JPEG (6 MB). Encoding untouched zero pages is quick (~1.5 s) and
    barely raises RSS, so no crafted file is needed."""
    path = tmp_path_factory.mktemp("huge") / "huge.jpg"
    path.write_bytes(encode(".jpg", np.zeros((20000, 20000, 3), np.uint8), (cv2.IMWRITE_JPEG_QUALITY, 10)))
    return path


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
    encode, smooth_bgr, ext: str, params: tuple[int, ...], alpha: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = smooth_bgr(40, 60)
    if alpha:
        image = np.dstack([image, np.full((40, 60), 200, np.uint8)])
    data = encode(ext, image, params)
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
def test_decode_image_fails_with_truncated_jpeg(encode, photo_bgr: np.ndarray, progressive: bool) -> None:
    data = encode(".jpg", photo_bgr, (cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)))
    assert pp.decode_image(data).shape == (120, 160, 3)
    for cut in (len(data) // 2, len(data) - 2, 300, 20):
        with pytest.raises(InputError, match=r"truncated JPEG .*fetch or export it again"):
            pp.decode_image(data[:cut])


def test_decode_image_fails_with_truncated_jpeg_holding_a_thumbnail(with_exif, encode, photo_bgr: np.ndarray) -> None:
    # An EXIF thumbnail carries its own end-of-image marker before the main image's scan.
    thumbnail = encode(".jpg", photo_bgr[::8, ::8])
    data = with_exif(encode(".jpg", photo_bgr), 1, extra=thumbnail)
    assert pp.decode_image(data).shape == (120, 160, 3)
    with pytest.raises(InputError, match=r"truncated JPEG \(Premature end of JPEG file\)"):
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
    with pytest.raises(InputError, match=r"the PNG image is damaged \(libpng cannot decode.*re-capture or re-upload"):
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
