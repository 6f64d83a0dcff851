"""What an encoded image's bytes say before any decoder runs: its kind, and for PNG and JPEG the layout.

Pillow reads the headers of the other formats (see :mod:`sdk.preprocess._codecs`). Two
questions no decoder library answers are answered here, by walking the container only
(no pixel is decoded, nothing is allocated in proportion to a length field):

- PNG (:func:`png_layout`): is every chunk inside the data with a correct CRC, is there an
  IEND, is it animated? OpenCV's PNG reader trusts chunk lengths (a 200 KB file whose chunk
  says 3.7 GB made it allocate 3.6 GB) and skips the CRC of image data.
- JPEG (:func:`jpeg_layout`): is the image one interleaved sequential scan? Only then does
  a reduced-scale decode need little memory: libjpeg keeps the whole image's DCT
  coefficients for a progressive or multi-scan JPEG, whatever the output scale.

:func:`image_kind` and :func:`describe_non_image` name what the data is for error messages.
Nothing here raises on malformed data: problems are returned as values.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib

__all__ = ["JpegLayout", "PngLayout", "describe_non_image", "image_kind", "jpeg_layout", "png_layout"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"

# Magic numbers of the image formats, for messages about data no decoder could open.
_IMAGE_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (JPEG_SIGNATURE, 0, "JPEG"),
    (PNG_SIGNATURE[:4], 0, "PNG"),
    (b"GIF8", 0, "GIF"),
    (b"WEBP", 8, "WebP"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)

# Signatures of common files that are certainly not images.
_NOT_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")


def image_kind(data: bytes) -> str | None:
    """The image format the first bytes announce ("JPEG", "PNG", ...), or None."""
    for magic, offset, kind in _IMAGE_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return kind
    return None


def describe_non_image(data: bytes) -> str:
    """Say what data that no image decoder recognised looks like: "a PDF document", "text (starting '...')"."""
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIF_BRANDS:
            return "a HEIC/HEIF image, which shelfedge does not decode"
        if brand in (b"avif", b"avis"):
            return "an AVIF image Pillow could not open (damaged, or a Pillow build without AVIF)"
        return "an MP4/QuickTime video"
    for magic, kind in _NOT_IMAGES:
        if data.startswith(magic):
            return kind
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a multi-byte character cut at the end
            return "unrecognised binary data"
        text = head[: e.start].decode("utf-8")
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        preview = " ".join(text.split())[:40]
        return f"text (starting {preview!r})"
    return "unrecognised binary data"


@dataclasses.dataclass(frozen=True, kw_only=True)
class PngLayout:
    """A PNG's chunk structure: its size from IHDR and what is wrong with it, if anything."""

    width: int = 0
    height: int = 0
    animated: bool = False  # an acTL chunk: APNG
    truncated: str | None = None  # why the data looks cut short
    damaged: str | None = None  # why the data looks corrupt


def png_layout(data: bytes) -> PngLayout:
    """Walk a PNG's chunks: every length inside the data, every CRC right, IHDR first, IEND last.

    Args:
        data: the whole file, starting with the PNG signature.

    Returns:
        The layout; ``truncated`` or ``damaged`` say what is wrong. Never raises.
    """
    pos, n = len(PNG_SIGNATURE), len(data)
    view = memoryview(data)  # CRCs over slices of it copy nothing
    width = height = 0
    animated = False
    first = True
    while pos + 8 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        name = kind.decode("latin-1")
        if end > n:
            return PngLayout(truncated=f"chunk {name!r} of {length:,} bytes runs past the end of the data")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            return PngLayout(damaged=f"chunk {name!r} at byte {pos:,} fails its CRC check")
        if first:
            if kind != b"IHDR" or length != 13:
                return PngLayout(damaged="the first chunk is not a 13-byte IHDR")
            width, height = struct.unpack_from(">II", data, pos + 8)
            first = False
        animated = animated or kind == b"acTL"
        if kind == b"IEND":
            return PngLayout(width=width, height=height, animated=animated)
        pos = end
    return PngLayout(truncated="no IEND chunk")


@dataclasses.dataclass(frozen=True, kw_only=True)
class JpegLayout:
    """What the JPEG marker segments before the first scan tell."""

    single_scan: bool  # one interleaved sequential scan: reduced-scale decoding needs little memory
    exif: bytes | None  # the APP1 payload starting b"Exif\\0\\0", if any
    header_cut: bool = False  # the data ends inside a segment before the first scan


# Sequential (baseline, extended, arithmetic) frames; every other SOF type is multi-scan by nature.
_SEQUENTIAL_SOF = frozenset({0xC0, 0xC1, 0xC9})
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4, C8, CC are DHT, JPG and DAC


def jpeg_layout(data: bytes) -> JpegLayout:
    """Walk the marker segments up to the first start-of-scan.

    A sequential frame whose first scan holds all of the frame's components has exactly one
    scan (each component appears in one scan only). Anything unexpected gives
    ``single_scan=False``, the cautious answer; the decoder judges the data itself.

    Returns:
        The layout. Never raises.
    """
    pos, n = 2, len(data)
    exif: bytes | None = None
    sof: int | None = None
    components = 0
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        segment = data[pos + 4 : pos + 2 + length]
        if len(segment) != length - 2 and length >= 2:
            return JpegLayout(single_scan=False, exif=exif, header_cut=True)
        if length < 2:
            break
        if marker == 0xE1 and exif is None and segment.startswith(b"Exif\x00\x00"):
            exif = segment
        elif marker in _SOF and sof is None and len(segment) >= 6:
            sof, components = marker, segment[5]
        elif marker == 0xDA:
            scan_components = segment[0] if segment else 0
            single = sof in _SEQUENTIAL_SOF and components > 0 and scan_components == components
            return JpegLayout(single_scan=single, exif=exif)
        pos += 2 + length
    return JpegLayout(single_scan=False, exif=exif, header_cut=pos + 4 > n)
