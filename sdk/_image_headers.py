"""Image-header sniffing: the format, size and completeness an encoded image's first bytes tell.

:mod:`sdk.preprocess` reads the header before decoding so that non-images, truncated files
and images too large to decode are refused with a clear message, without spending memory
on a decode. Nothing here decodes pixels or raises: a header that cannot be parsed is
described in the returned :class:`ImageHeader`.
"""

from __future__ import annotations

import dataclasses
import struct

__all__ = ["ImageHeader", "sniff"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageHeader:
    """What the first bytes tell: the format and, where cheap to read, size and completeness."""

    kind: str  # "JPEG", "PNG", ... for images; a description of the content otherwise
    # True: a known image format; False: known not to be an image (PDF, ZIP, ...), never
    # decoded; None: unrecognised here, left to OpenCV (PNM, JPEG 2000, HDR, ...).
    is_image: bool | None
    width: int | None = None
    height: int | None = None
    truncated: str | None = None  # why the data looks cut short


# Signatures of common files that are certainly not images: refused without decoding.
_NOT_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\x7fELF", "an executable"),
    (b"MZ", "a Windows executable"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
)


def sniff(data: bytes) -> ImageHeader:
    """Identify the format from the first bytes; read the size for JPEG, PNG, WebP, BMP, GIF, TIFF.

    Args:
        data: the encoded file's bytes (all of them: truncation is judged from the end).

    Returns:
        The format (or a description of non-image content), the size where the header
        gives it, and why the data looks cut short, if it does. Never raises: a header cut
        short is reported through ``truncated``.
    """
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_header(data)
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return _png_header(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_header(data)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack_from("<HH", data, 6)
            return ImageHeader(kind="GIF", is_image=True, width=w, height=h)
        if data[:2] == b"BM":
            return _bmp_header(data)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_header(data)
    except struct.error:
        # The header ends before its size fields: too short to hold an image.
        return ImageHeader(kind=_image_kind(data), is_image=True, truncated="the header is incomplete")
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in (b"avif", b"avis"):
            return ImageHeader(kind="AVIF", is_image=True)
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return ImageHeader(kind="HEIC/HEIF", is_image=True)
        return ImageHeader(kind="an MP4/QuickTime video", is_image=False)
    for magic, kind in _NOT_IMAGES:
        if data.startswith(magic):
            return ImageHeader(kind=kind, is_image=False)
    # Anything else (PNM, JPEG 2000, HDR, Sun raster, ...) is left to OpenCV to recognise.
    return ImageHeader(kind=_describe_unknown(data), is_image=None)


def _image_kind(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:4] == b"\x89PNG":
        return "PNG"
    if data[:4] == b"RIFF":
        return "WebP"
    if data[:3] == b"GIF":
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    return "TIFF"


def _describe_unknown(data: bytes) -> str:
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


# JPEG start-of-frame markers (C4, C8 and CC are DHT, JPG and DAC, not frames).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_header(data: bytes) -> ImageHeader:
    # Walk the marker segments up to the first start-of-scan: the frame header gives the
    # size, and from there on an FF D9 can only be the end-of-image marker (entropy-coded
    # data stuffs FF with 00), so a file without one after it is truncated. An EXIF
    # thumbnail's own FF D9 lies inside APP1, before the scan, and does not count.
    n = len(data)
    pos = 2
    width = height = None
    while pos < n:
        if data[pos] != 0xFF:
            return ImageHeader(kind="JPEG", is_image=True)  # malformed: let the decoder report it
        while pos < n and data[pos] == 0xFF:  # fill bytes before the marker code
            pos += 1
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            continue
        if marker == 0xD9:
            return ImageHeader(kind="JPEG", is_image=True)  # EOI before any scan: the decoder says no
        if pos + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            return ImageHeader(kind="JPEG", is_image=True)
        if marker in _JPEG_SOF and pos + 7 <= n:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            height = height or None  # 0: the height comes later in a DNL marker
        if marker == 0xDA:
            truncated = None if data.rfind(b"\xff\xd9", pos) != -1 else "no end-of-image marker"
            return ImageHeader(kind="JPEG", is_image=True, width=width, height=height, truncated=truncated)
        pos += length
    truncated = "it ends inside the header"
    return ImageHeader(kind="JPEG", is_image=True, width=width, height=height, truncated=truncated)


def _png_header(data: bytes) -> ImageHeader:
    width, height = struct.unpack_from(">II", data, 16) if data[12:16] == b"IHDR" else (None, None)
    # The IEND chunk (empty, fixed CRC) closes every complete PNG.
    truncated = None if data.rfind(b"IEND\xaeB`\x82") != -1 else "no IEND chunk"
    return ImageHeader(kind="PNG", is_image=True, width=width, height=height, truncated=truncated)


def _webp_header(data: bytes) -> ImageHeader:
    (riff_size,) = struct.unpack_from("<I", data, 4)
    truncated = f"{len(data):,} of {riff_size + 8:,} bytes" if len(data) < riff_size + 8 else None
    chunk = data[12:16]
    width = height = None
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", data, 26)
        width, height = w & 0x3FFF, h & 0x3FFF
    elif chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", data, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
    return ImageHeader(kind="WebP", is_image=True, width=width, height=height, truncated=truncated)


def _bmp_header(data: bytes) -> ImageHeader:
    (dib_size,) = struct.unpack_from("<I", data, 14)
    if dib_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return ImageHeader(kind="BMP", is_image=True, width=abs(width), height=abs(height))


def _tiff_header(data: bytes) -> ImageHeader:
    endian = "<" if data[:2] == b"II" else ">"
    (offset,) = struct.unpack_from(endian + "I", data, 4)
    (count,) = struct.unpack_from(endian + "H", data, offset)
    size: dict[int, int] = {}
    for i in range(count):
        tag, kind = struct.unpack_from(endian + "HH", data, offset + 2 + 12 * i)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            fmt = "H" if kind == 3 else "I"
            (size[tag],) = struct.unpack_from(endian + fmt, data, offset + 2 + 12 * i + 8)
    return ImageHeader(kind="TIFF", is_image=True, width=size.get(256), height=size.get(257))
