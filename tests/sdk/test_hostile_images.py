"""Hostile images cost nothing: every sample of the committed corpus gives its specific answer.

The corpus is ``tests/data/hostile/images/`` (written by ``fuzz/make_corpus.py``): refused
samples must raise the InputError that names what is wrong and what to do, before memory is
spent; the valid-but-unusual ones must decode to the right pixels. FIFOs, devices and
directories are refused without being read.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from sdk import preprocess as pp
from sdk.enums import Layout
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.tensors import TensorSpec

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "data" / "hostile" / "images"

DAMAGED = r"the {} image is damaged \({}\); re-capture or re-upload it"
TRUNCATED = r"truncated {} \({}\); the file was cut short.*fetch or export it again"
ASPECT = r"the {} image is {}, an aspect ratio over 20:1; crop it to the product first"
TOO_LARGE = r"the {} image is {} \([\d,]+ pixels\), more than max_pixels=50,000,000{}; downscale the image first"
NOT_IMAGE = r"not an image, it looks like {}; pass a JPEG, PNG, WebP, BMP, TIFF or GIF image"
BOMB = r"the {} is over Pillow's decompression-bomb limit .*; downscale the image first"

# Refused samples: the message each must give (after "<path>: ").
REFUSED: dict[str, str] = {
    "jpeg_truncated.jpg": TRUNCATED.format("JPEG", "it ends inside the header"),
    "jpeg_header_only.jpg": TRUNCATED.format("JPEG", "Premature end of JPEG file"),
    "jpeg_progressive_half_plus_eoi.jpg": TRUNCATED.format("JPEG", "Premature end of JPEG file"),
    "jpeg_junk_before_sof_20000x20000.jpg": DAMAGED.format(
        "JPEG", "Corrupt JPEG data: 1 extraneous bytes before marker 0xc0"
    ),
    "jpeg_corrupt_huffman.jpg": DAMAGED.format("JPEG", "Corrupt JPEG data: bad Huffman code"),
    "jpeg_half_plus_eoi.jpg": DAMAGED.format("JPEG", "Corrupt JPEG data: premature end of data segment"),
    "jpeg_65000x65000.jpg": TOO_LARGE.format("JPEG", "65000x65000", ", even decoded at 1/8 scale"),
    "jpeg_progressive_8000x8000.jpg": TOO_LARGE.format(
        "JPEG", "8000x8000", ", counted double as a progressive or multi-scan JPEG .libjpeg buffers all of it."
    ),
    "jpeg_1x60000.jpg": ASPECT.format("JPEG", "60000x1"),
    "png_chunk_length_3_7gb.png": TRUNCATED.format(
        "PNG", "chunk 'IDAT' of 3,700,000,000 bytes runs past the end of the data"
    ),
    "png_bomb_20000x20000.png": TOO_LARGE.format("PNG", "20000x20000", ""),
    "png_1x65000.png": ASPECT.format("PNG", "65000x1"),
    "png_1x1000000.png": ASPECT.format("PNG", "1000000x1"),
    "png_truncated.png": TRUNCATED.format("PNG", "chunk 'IDAT' of [\\d,]+ bytes runs past the end of the data"),
    "png_bad_crc.png": DAMAGED.format("PNG", "chunk 'IDAT' at byte 33 fails its CRC check"),
    "png_not_enough_data.png": DAMAGED.format("PNG", "libpng cannot decode its image data"),
    "bmp_100000x100000.bmp": BOMB.format("BMP"),
    "tiff_100000x100000.tif": BOMB.format("TIFF"),
    "gif_canvas_65535x65535.gif": BOMB.format("GIF"),
    "webp_truncated.webp": DAMAGED.format("WebP", "could not create decoder object"),
    "zero_bytes.jpg": r"empty \(0 bytes\), no image in it; check the upload, download or file",
    "text.jpg": NOT_IMAGE.format(r"text \(starting 'apple banana milk'\)"),
    "document.pdf": NOT_IMAGE.format("a PDF document"),
    "photo.heic": NOT_IMAGE.format("a HEIC/HEIF image, which shelfedge does not decode"),
    "targa.tga": NOT_IMAGE.format("unrecognised binary data"),
}
# Decoded samples: (height, width) of the RGB result. Pixels are checked in the tests below.
DECODED: dict[str, tuple[int, int]] = dict.fromkeys(
    (
        "grayscale.jpg",
        "cmyk.jpg",
        "progressive.jpg",
        "exif_damaged.jpg",
        "jpeg_trailing_bytes.jpg",
        "rgb16.png",
        "grey16.png",
        "rgba.png",
        "animated.gif",
        "animated.png",
        "lossless.webp",
        "photo.bmp",
        "photo.tif",
        "photo.ppm",
    ),
    (48, 64),
) | {"exif_orientation_6.jpg": (64, 48)}


def _photo() -> np.ndarray:
    """The BGR photo fuzz/make_corpus.py encodes."""
    noise = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def _opencv(name: str) -> np.ndarray:
    return cv2.imdecode(np.fromfile(CORPUS / name, np.uint8), cv2.IMREAD_COLOR_RGB)


def test_hostile_corpus_succeeds_with_an_expectation_for_every_sample() -> None:
    on_disk = {p.name for p in CORPUS.iterdir()}
    assert on_disk == set(REFUSED) | set(DECODED)
    assert all((CORPUS / name).stat().st_size < 50_000 for name in on_disk)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_decode_image_fails_with_hostile_sample(name: str) -> None:
    path = CORPUS / name
    for source, where in ((path, str(path)), (path.read_bytes(), r"image data \([\d,]+ bytes\)")):
        with pytest.raises(InputError, match=rf"^{re.escape(str(path)) if source is path else where}: {REFUSED[name]}"):
            pp.decode_image(source)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(DECODED))
def test_decode_image_succeeds_with_unusual_valid_sample(name: str) -> None:
    image = pp.decode_image(CORPUS / name)
    assert image.shape == (*DECODED[name], 3) and image.dtype == np.uint8 and image.flags.c_contiguous


def test_decode_image_succeeds_with_unusual_samples_as_opencv_decodes_them() -> None:
    # Today's pixels: OpenCV's, for every format both read (CMYK: its inverted-CMYK formula).
    for name in ("grayscale.jpg", "cmyk.jpg", "progressive.jpg", "exif_orientation_6.jpg", "rgba.png"):
        np.testing.assert_array_equal(pp.decode_image(CORPUS / name), _opencv(name), err_msg=name)
    for name in ("photo.bmp", "photo.tif", "photo.ppm", "lossless.webp", "rgba.png", "rgb16.png"):
        np.testing.assert_array_equal(pp.decode_image(CORPUS / name), _photo()[:, :, ::-1], err_msg=name)
    grey = pp.decode_image(CORPUS / "grayscale.jpg")
    assert (grey[:, :, 0] == grey[:, :, 1]).all() and (grey[:, :, 1] == grey[:, :, 2]).all()


def test_decode_image_succeeds_with_16bit_grey_rounded_and_first_frames() -> None:
    levels = np.arange(64 * 48, dtype=np.int64).reshape(48, 64) * 21
    expected = ((levels + 128) // 257).astype(np.uint8)  # round(v / 257)
    np.testing.assert_array_equal(pp.decode_image(CORPUS / "grey16.png")[:, :, 1], expected)
    for name in ("animated.gif", "animated.png"):
        with Image.open(io.BytesIO((CORPUS / name).read_bytes())) as frames:
            assert getattr(frames, "n_frames", 1) > 1
            first = np.asarray(frames.convert("RGB"))
        np.testing.assert_array_equal(pp.decode_image(CORPUS / name), first, err_msg=name)


def test_decode_image_succeeds_with_damaged_exif_shown_as_stored() -> None:
    np.testing.assert_array_equal(
        pp.decode_image(CORPUS / "exif_damaged.jpg"), pp.decode_image(CORPUS / "jpeg_trailing_bytes.jpg")
    )


# --------------------------------------------------------------------------- memory


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc (Linux)")
def test_decode_image_succeeds_with_bombs_refused_in_bounded_memory() -> None:
    # A fresh process: its VmHWM (peak RSS) after the imports, then after each refusal.
    names = ["png_chunk_length_3_7gb.png", "jpeg_junk_before_sof_20000x20000.jpg", "png_bomb_20000x20000.png"]
    names += ["jpeg_progressive_8000x8000.jpg", "png_1x1000000.png", "gif_canvas_65535x65535.gif"]
    code = (
        "import re, sys\n"
        "from sdk.errors import InputError\n"
        "from sdk.preprocess import decode_image\n"
        "def peak():\n"
        "    return int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) / 1024\n"
        "decode_image(sys.argv[1])  # warm up: the decoders' libraries are loaded\n"
        "start = peak()\n"
        "for path in sys.argv[2:]:\n"
        "    try:\n"
        "        decode_image(path)\n"
        "    except InputError:\n"
        "        print(path, peak() - start)\n"
    )
    paths = [str(CORPUS / n) for n in ("photo.bmp", *names)]
    done = subprocess.run(
        [sys.executable, "-c", code, *paths], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    growth = {Path(line.split()[0]).name: float(line.split()[1]) for line in done.stdout.splitlines()}
    assert set(growth) == set(names), done.stdout
    assert max(growth.values()) < 100, growth


# --------------------------------------------------------------------------- files that are not files


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_decode_image_fails_with_fifo_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)  # no writer: a plain open() would wait forever
    with pytest.raises(InputError, match=r"camera\.jpg: not a regular file \(a FIFO/pipe\); save the image to a file"):
        pp.decode_image(fifo)


@pytest.mark.timeout(10)
@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_decode_image_fails_with_dev_zero_without_reading_it() -> None:
    with pytest.raises(InputError, match=r"/dev/zero: not a regular file \(a character device\)"):
        pp.decode_image("/dev/zero")


@pytest.mark.timeout(10)
def test_decode_image_fails_with_symlink_to_a_device(tmp_path: Path) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("needs /dev/null")
    link = tmp_path / "photo.jpg"
    link.symlink_to("/dev/null")
    with pytest.raises(InputError, match=r"photo\.jpg: not a regular file \(a character device\)"):
        pp.decode_image(link)


def test_decode_image_fails_with_more_bytes_than_max_bytes(tmp_path: Path) -> None:
    data = (CORPUS / "photo.bmp").read_bytes()
    path = tmp_path / "big.bmp"
    path.write_bytes(data)
    message = rf"{len(data):,} bytes, more than max_bytes=1,000; .*downscale or re-compress it"
    with pytest.raises(InputError, match=rf"big\.bmp: {message}"):
        pp.decode_image(path, max_bytes=1000)
    with pytest.raises(InputError, match=rf"image data .*: {message}"):
        pp.decode_image(data, max_bytes=1000)
    assert pp.decode_image(path, max_bytes=len(data)).shape == (48, 64, 3)


# --------------------------------------------------------------------------- arrays and the resize


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 65000, 3), r"the decoded image is 65000x1, an aspect ratio over 20:1"),
        ((21, 1), r"the decoded image is 1x21, an aspect ratio over 20:1"),
        ((2000, 1000), r"the decoded image is 1000x2000 \(2,000,000 pixels\), more than max_pixels=1,000,000"),
    ],
)
def test_decode_image_fails_with_array_over_a_cap(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(InputError, match=rf"image array: {message}"):
        pp.decode_image(np.zeros(shape, np.uint8), max_pixels=1_000_000)


def test_decode_image_succeeds_with_aspect_ratio_raised_for_a_trusted_strip() -> None:
    strip = np.zeros((2, 90, 3), np.uint8)
    assert pp.decode_image(strip, max_aspect_ratio=45).shape == (2, 90, 3)


def test_preprocess_fails_with_resize_intermediate_over_the_cap() -> None:
    pre = Preprocessing(size=(224, 224), mean=(127.5,) * 3, std=(127.5,) * 3)
    spec = TensorSpec(name="image", shape=(1, 224, 224, 3), dtype="float32", layout=Layout.NHWC)
    strip = np.zeros((1, 65000, 3), np.uint8)  # 256 x 16.6M pixels after scaling the short side
    with pytest.raises(InputError, match=r"a 65000x1 image would be resized to 16640000x256 .* crop it"):
        pp.preprocess(strip, pre, spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_bytes": 0}, r"max_bytes must be a positive integer"),
        ({"max_aspect_ratio": 0.5}, r"max_aspect_ratio must be a number >= 1"),
        ({"max_aspect_ratio": float("nan")}, r"max_aspect_ratio must be a number >= 1"),
    ],
)
def test_decode_image_fails_with_bad_limits(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pp.decode_image(np.zeros((4, 4, 3), np.uint8), **options)  # type: ignore[arg-type]
