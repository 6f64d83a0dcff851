"""Write the hostile sample corpus: ``tests/data/hostile/images/`` and ``tests/data/hostile/manifests/``.

Each sample is small (< 50 KB) and reproduces one way a store device may be fed a hostile or
broken file: the cases measured in issue 10 (a PNG chunk length of 3.7 GB, a junk byte before
the JPEG frame header, 1x65000 and 1x1,000,000 strips, corrupt Huffman data, half a JPEG with an
end marker appended) and the valid-but-unusual images that must still decode (grayscale, CMYK,
16-bit, animated). The files are committed; ``tests/sdk/test_hostile_images.py`` says what each
must give, and the fuzz targets start from them.

Usage: ``python3 fuzz/make_corpus.py [--out tests/data/hostile]`` (deterministic output).
"""

from __future__ import annotations

import argparse
import io
import json
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_SAMPLE_BYTES = 50_000


def _photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, colourful BGR image: JPEG keeps it close to the original."""
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 3)


def _encode(ext: str, image: np.ndarray, params: tuple[int, ...] = ()) -> bytes:
    ok, buffer = cv2.imencode(ext, image, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return buffer.tobytes()


def _pil_bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, raw: bytes, *, depth: int = 8, colour: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 9))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg() -> bytes:
    return _encode(".jpg", _photo(), (cv2.IMWRITE_JPEG_QUALITY, 90))


def _scan_start(jpeg: bytes) -> int:
    sos = jpeg.index(b"\xff\xda")
    (length,) = struct.unpack_from(">H", jpeg, sos + 2)
    return sos + 2 + length


def _with_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0 or SOF2) claiming another size."""
    sof = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


def _junk_before_sof() -> bytes:
    # Issue 10: one junk byte before the frame header made the old header parser give up, so
    # a 20000x20000 claim skipped the reduced-scale decode (2.4 GB for a 2.8 KB file).
    jpeg = _with_size(_jpeg(), 20000, 20000)
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[:sof] + b"\x00" + jpeg[sof:]


def _corrupt_huffman() -> bytes:
    # 16 one-bits in a row are never a Huffman code (JPEG forbids the all-ones code): a run of
    # stuffed 0xFF bytes in the middle of the scan is corrupt entropy data, not a marker.
    jpeg = _jpeg()
    start = _scan_start(jpeg)
    middle = (start + len(jpeg) - 2) // 2
    return jpeg[:middle] + b"\xff\x00" * 8 + jpeg[middle + 16 :]


def _exif_app1(orientation: int, ifd_entries: bytes | None = None) -> bytes:
    entries = ifd_entries or struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    payload = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + entries + struct.pack("<I", 0)
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def _png_chunk_bomb() -> bytes:
    # Issue 10: a PNG whose chunk length field says 3.7 GB made OpenCV allocate 3.6 GB.
    good = _encode(".png", _photo())
    idat = good.index(b"IDAT") - 4
    return good[:idat] + struct.pack(">I", 3_700_000_000) + good[idat + 4 :]


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_photo(seed=s)[:, :, ::-1]).convert("P") for s in range(3)]
    return _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def _animated_png() -> bytes:
    frames = [Image.fromarray(_photo(seed=s)[:, :, ::-1]) for s in range(2)]
    return _pil_bytes(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def _bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\x80" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 54) + info + pixels


def _tiff_header(width: int, height: int) -> bytes:
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 8 + 16) + b"\x00" * 16 + ifd + struct.pack("<I", 0)


def _gif_canvas(width: int, height: int) -> bytes:
    image = _pil_bytes(Image.new("P", (4, 4)), "GIF")
    return image[:6] + struct.pack("<HH", width, height) + image[10:]


def image_samples() -> dict[str, bytes]:
    """Every image sample, by file name."""
    jpeg = _jpeg()
    photo = _photo()
    scan = _scan_start(jpeg)
    progressive = _encode(".jpg", photo, (cv2.IMWRITE_JPEG_PROGRESSIVE, 1))
    grey16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 21).astype(np.uint16)
    png = _encode(".png", photo)
    cmyk = _pil_bytes(Image.fromarray(photo[:, :, ::-1]).convert("CMYK"), "JPEG", quality=90)
    bad_exif = _exif_app1(1, struct.pack("<H", 40) + b"\xff" * 30)
    makers: dict[str, Callable[[], bytes]] = {
        # refused: damaged, truncated or over a limit
        "jpeg_truncated.jpg": lambda: jpeg[: len(jpeg) // 2],
        "jpeg_header_only.jpg": lambda: jpeg[:scan],
        "jpeg_junk_before_sof_20000x20000.jpg": _junk_before_sof,
        "jpeg_corrupt_huffman.jpg": _corrupt_huffman,
        "jpeg_half_plus_eoi.jpg": lambda: jpeg[: (scan + len(jpeg)) // 2] + b"\xff\xd9",
        "jpeg_progressive_half_plus_eoi.jpg": lambda: progressive[: len(progressive) // 2] + b"\xff\xd9",
        "jpeg_65000x65000.jpg": lambda: _with_size(jpeg, 65000, 65000),
        "jpeg_progressive_8000x8000.jpg": lambda: _with_size(progressive, 8000, 8000),
        "jpeg_1x60000.jpg": lambda: _with_size(jpeg, 60000, 1),
        "png_chunk_length_3_7gb.png": _png_chunk_bomb,
        "png_bomb_20000x20000.png": lambda: _png(20000, 20000, b"\x00" * 20001 * 8),
        "png_1x65000.png": lambda: _png(65000, 1, b"\x00" + b"\x80" * 65000),
        "png_1x1000000.png": lambda: _png(1_000_000, 1, b"\x00" + b"\x80" * 1_000_000),
        "png_truncated.png": lambda: png[: len(png) // 2],
        "png_bad_crc.png": lambda: png[:-20] + bytes([png[-20] ^ 0xFF]) + png[-19:],
        "png_not_enough_data.png": lambda: _png(64, 48, b"\x00" * (64 + 1) * 10),
        "bmp_100000x100000.bmp": lambda: _bmp_header(100000, 100000),
        "tiff_100000x100000.tif": lambda: _tiff_header(100000, 100000),
        "gif_canvas_65535x65535.gif": lambda: _gif_canvas(65535, 65535),
        "webp_truncated.webp": lambda: _encode(".webp", photo)[:200],
        "zero_bytes.jpg": lambda: b"",
        "text.jpg": lambda: b"apple\nbanana\nmilk\n",
        "document.pdf": lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n",
        "photo.heic": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
        "targa.tga": lambda: _pil_bytes(Image.new("RGB", (8, 8)), "TGA"),
        # decoded: valid but unusual
        "grayscale.jpg": lambda: _encode(".jpg", photo[:, :, 0]),
        "cmyk.jpg": lambda: cmyk,
        "progressive.jpg": lambda: progressive,
        "exif_orientation_6.jpg": lambda: jpeg[:2] + _exif_app1(6) + jpeg[2:],
        "exif_damaged.jpg": lambda: jpeg[:2] + bad_exif + jpeg[2:],
        "jpeg_trailing_bytes.jpg": lambda: jpeg + b"\x00" * 16 + b"trailer",
        "rgb16.png": lambda: _encode(".png", (photo.astype(np.uint16) * 257)),
        "grey16.png": lambda: _encode(".png", grey16),
        "rgba.png": lambda: _encode(".png", np.dstack([photo, np.full(photo.shape[:2], 9, np.uint8)])),
        "animated.gif": _animated_gif,
        "animated.png": _animated_png,
        "lossless.webp": lambda: _encode(".webp", photo, (cv2.IMWRITE_WEBP_QUALITY, 101)),
        "photo.bmp": lambda: _encode(".bmp", photo),
        "photo.tif": lambda: _encode(".tiff", photo),
        "photo.ppm": lambda: _encode(".ppm", photo),
    }
    return {name: make() for name, make in makers.items()}


def _valid_manifest() -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from sdk.enums import Layout, ModelFormat, OutputKind, Precision, Task
    from sdk.manifest import Manifest, Preprocessing, Provenance
    from sdk.tensors import TensorSpec

    manifest = Manifest(
        name="tiny",
        task=Task.IMAGE_CLASSIFICATION,
        format=ModelFormat.ONNX,
        precision=Precision.FP32,
        model_file="model.onnx",
        inputs=(TensorSpec(name="image", shape=(-1, 32, 32, 3), dtype="float32", layout=Layout.NHWC),),
        outputs=(TensorSpec(name="logits", shape=(-1, 3), dtype="float32", layout=Layout.NC),),
        output_kind=OutputKind.LOGITS,
        preprocessing=Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3),
        labels_file="labels.txt",
        provenance=Provenance(source="tiny.keras", source_sha256="0" * 64, created_utc="2026-01-01T00:00:00Z"),
        files={"model.onnx": "1" * 64, "labels.txt": "2" * 64},
    )
    return manifest.to_dict()


def manifest_samples() -> dict[str, bytes]:
    """Seeds for the manifest fuzz target: one valid manifest and the hostile shapes issue 10 lists."""
    valid = _valid_manifest()
    text = json.dumps(valid, indent=1)
    first_key = next(iter(valid))
    samples = {
        "valid.json": text,
        "deeply_nested.json": text[:-1] + ', "metrics": ' + "[" * 5000 + "]" * 5000 + "}",
        "huge_number.json": text.replace('"schema_version": 1', '"schema_version": 1' + "0" * 5000),
        "duplicate_key.json": text.replace("{", '{"' + first_key + '": 0, ', 1),
        "nan_mean.json": text.replace("127.5", "NaN", 1),
        "zero_std.json": text.replace('"std": [\n   127.5', '"std": [\n   0.0', 1),
        "wrong_types.json": text.replace('"name": "tiny"', '"name": ["tiny"]'),
        "truncated.json": text[: len(text) // 2],
        "not_utf8.json": "",
        "empty.json": "",
    }
    out = {name: value.encode("utf-8") for name, value in samples.items()}
    out["not_utf8.json"] = b'{"name": "\xff\xfe"}'
    return out


def write(out: Path) -> list[tuple[str, int]]:
    """Write both corpora under ``out``; the (path, size) of each file.

    Raises:
        ValueError: a sample is over MAX_SAMPLE_BYTES.
    """
    written = []
    for folder, samples in (("images", image_samples()), ("manifests", manifest_samples())):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name, data in samples.items():
            if len(data) > MAX_SAMPLE_BYTES:
                raise ValueError(f"{folder}/{name} is {len(data):,} bytes, over {MAX_SAMPLE_BYTES:,}: make it smaller")
            (out / folder / name).write_bytes(data)
            written.append((f"{folder}/{name}", len(data)))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "hostile")
    args = parser.parse_args(argv)
    written = write(args.out)
    for name, size in written:
        print(f"{size:>8,}  {name}")
    print(f"{len(written)} samples written under {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
