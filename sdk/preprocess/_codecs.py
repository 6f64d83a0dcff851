"""Encoded bytes -> pixels: one decoder per format, each strict and bounded before it allocates.

- JPEG: libjpeg-turbo through ``simplejpeg`` in strict mode, so every libjpeg warning
  ("Corrupt JPEG data: ...", "Premature end of JPEG file") is an error; OpenCV and Pillow
  both print or swallow those warnings and return the damaged pixels. Its header is
  libjpeg's own, read whatever the byte layout; an oversized single-scan JPEG is decoded at
  1/2, 1/4 or 1/8 scale inside the DCT. It is also the fastest of the three (see
  ``tests/bench/decode_bench.py``) and gives OpenCV's pixels bit for bit.
- PNG: OpenCV (libpng; exact 16-bit rounding, faster than Pillow) once
  :func:`sdk._image_headers.png_layout` has checked every chunk's length and CRC.
- WebP, BMP, TIFF, GIF, PNM, AVIF and animated PNG: Pillow, whose lazy ``Image.open`` reads
  the size from the header before any pixel buffer exists. Only these formats are opened:
  the other ~35 formats Pillow knows (EPS runs Ghostscript) are refused.

The caller (:mod:`sdk.preprocess.decode`) has checked the byte count; this module checks
pixels and aspect ratio against :class:`Limits` before decoding.
"""

from __future__ import annotations

import dataclasses
import io
import struct
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from sdk import _image_headers as headers
from sdk.errors import InputError

__all__ = ["Limits", "check_size", "decode_encoded", "to_uint8"]

# The formats Pillow may open (its plugin names); everything else is refused unopened.
PILLOW_FORMATS = ("WEBP", "BMP", "TIFF", "GIF", "PPM", "AVIF", "PNG")
# What Pillow's plugins raise on malformed data (Image.open turns parser slips into SyntaxError).
_PILLOW_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)
_JPEG_REDUCTIONS = (2, 4, 8)
# OpenCV >= 4.11 decodes straight to RGB, saving a colour conversion per image.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the view transform of an HxWxC array (1 = as stored).
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda x: x[:, ::-1],
    3: lambda x: x[::-1, ::-1],
    4: lambda x: x[::-1],
    5: lambda x: x.swapaxes(0, 1),
    6: lambda x: x.swapaxes(0, 1)[:, ::-1],
    7: lambda x: x[::-1, ::-1].swapaxes(0, 1),
    8: lambda x: x.swapaxes(0, 1)[::-1],
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """The caps an encoded image is held to (validated by the caller)."""

    max_pixels: int
    max_aspect_ratio: float


def check_shape(width: int, height: int, where: str, kind: str, limits: Limits) -> None:
    """Refuse an image with no pixels, or whose long side is over ``max_aspect_ratio`` times its short side.

    Raises:
        InputError: naming the size and the limit, saying what to do.
    """
    if width < 1 or height < 1:
        raise InputError(f"{where}: the {kind} image is {width}x{height}, it has no pixels; re-capture or re-upload it")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise InputError(
            f"{where}: the {kind} image is {width}x{height}, an aspect ratio over {limits.max_aspect_ratio:g}:1; "
            "crop it to the product first (or raise max_aspect_ratio)"
        )


def check_size(width: int, height: int, where: str, kind: str, limits: Limits) -> None:
    """:func:`check_shape`, and refuse more than ``max_pixels`` pixels.

    Raises:
        InputError: naming the size and the limit, saying what to do.
    """
    check_shape(width, height, where, kind, limits)
    if width * height > limits.max_pixels:
        raise too_large(where, kind, width, height, limits.max_pixels)


def too_large(where: str, kind: str, width: int, height: int, max_pixels: int, detail: str = "") -> InputError:
    """The error for an image over ``max_pixels``."""
    return InputError(
        f"{where}: the {kind} image is {width}x{height} ({width * height:,} pixels), more than "
        f"max_pixels={max_pixels:,}{detail}; downscale the image first (or raise max_pixels if "
        "the source is trusted and memory allows)"
    )


def damaged(where: str, kind: str, detail: str) -> InputError:
    """The error for an image whose data is corrupt."""
    return InputError(f"{where}: the {kind} image is damaged ({detail}); re-capture or re-upload it")


def truncated(where: str, kind: str, detail: str) -> InputError:
    """The error for an image cut short."""
    return InputError(
        f"{where}: truncated {kind} ({detail}); the file was cut short, e.g. by an interrupted "
        "download or copy: fetch or export it again"
    )


def decode_encoded(data: bytes, where: str, limits: Limits) -> np.ndarray:
    """Decode non-empty encoded bytes to an HxWx3 RGB array (uint8, or uint16/float for deep PNG/TIFF).

    Raises:
        InputError: not an image, an unsupported format, truncated, damaged, or over a limit.
    """
    if data.startswith(headers.JPEG_SIGNATURE):
        return _decode_jpeg(data, where, limits)
    if data.startswith(headers.PNG_SIGNATURE):
        layout = headers.png_layout(data)
        if layout.truncated:
            raise truncated(where, "PNG", layout.truncated)
        if layout.damaged:
            raise damaged(where, "PNG", layout.damaged)
        check_size(layout.width, layout.height, where, "PNG", limits)
        if not layout.animated:  # OpenCV's APNG reader is young: animated PNGs go to Pillow
            return _decode_png(data, where)
    return _decode_pillow(data, where, limits)


def _decode_jpeg(data: bytes, where: str, limits: Limits) -> np.ndarray:
    layout = headers.jpeg_layout(data)
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as e:
        if layout.header_cut:
            raise truncated(where, "JPEG", "it ends inside the header") from e
        raise _jpeg_error(where, e) from e
    check_shape(width, height, where, "JPEG", limits)
    scale = 1
    if width * height > limits.max_pixels or not layout.single_scan:
        scale = _jpeg_scale(width, height, where, limits, single_scan=layout.single_scan)
    cmyk = colorspace in ("CMYK", "YCCK")
    try:
        pixels = simplejpeg.decode_jpeg(
            data,
            "CMYK" if cmyk else "RGB",
            min_height=-(-height // scale),
            min_width=-(-width // scale),
        )
    except ValueError as e:
        raise _jpeg_error(where, e) from e
    if cmyk:
        pixels = _cmyk_to_rgb(pixels)
    return _orient(pixels, _exif_orientation(layout.exif))


def _jpeg_scale(width: int, height: int, where: str, limits: Limits, *, single_scan: bool) -> int:
    """The reduction that fits max_pixels, or the refusal.

    A progressive or multi-scan JPEG keeps 2 bytes per DCT coefficient of the whole image
    while decoding (about twice its RGB pixels' memory) at any output scale: it must fit
    at full size, counted double.
    """
    if not single_scan:
        if 2 * width * height > limits.max_pixels:
            detail = ", counted double as a progressive or multi-scan JPEG (libjpeg buffers all of it)"
            raise too_large(where, "JPEG", width, height, limits.max_pixels, detail)
        return 1
    for factor in _JPEG_REDUCTIONS:
        if -(-width // factor) * -(-height // factor) <= limits.max_pixels:
            return factor
    raise too_large(where, "JPEG", width, height, limits.max_pixels, ", even decoded at 1/8 scale")


def _jpeg_error(where: str, error: ValueError) -> InputError:
    message = str(error)
    if "Premature end of JPEG file" in message:
        return truncated(where, "JPEG", message)
    if message.startswith(("Corrupt JPEG data", "Bogus", "Invalid", "Huffman table", "Quantization table")):
        return damaged(where, "JPEG", message)
    # Anything else is a damaged file or a variant libjpeg-turbo does not read (12-bit, odd sampling).
    return InputError(
        f"{where}: the JPEG image cannot be decoded ({message}): it is damaged or an unusual JPEG variant; "
        "re-capture or re-upload it, or re-save it as a standard JPEG"
    )


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    # OpenCV's conversion (Adobe's inverted CMYK, as libjpeg hands it over), kept for identical pixels.
    values = cmyk.astype(np.int32)
    k = values[:, :, 3:4]
    rgb = k - (((255 - values[:, :, :3]) * k) >> 8)
    return np.ascontiguousarray(rgb.astype(np.uint8))


def _exif_orientation(exif: bytes | None) -> int:
    if not exif:
        return 1

    def parse() -> Image.Exif:
        value = Image.Exif()
        value.load(exif)
        return value

    return _orientation(parse)


def _orientation(read_exif: Callable[[], Image.Exif]) -> int:
    try:
        orientation = read_exif().get(_ORIENTATION_TAG, 1)
    except _PILLOW_DATA_ERRORS:
        return 1  # damaged metadata: the pixels are still whole, shown as stored (as OpenCV does)
    return orientation if isinstance(orientation, int) else 1


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    transform = _ORIENT.get(orientation)
    return pixels if transform is None else np.ascontiguousarray(transform(pixels))


def _decode_png(data: bytes, where: str) -> np.ndarray:
    buffer = np.frombuffer(data, np.uint8)
    try:
        if _IMREAD_RGB is not None:
            image = cv2.imdecode(buffer, _IMREAD_RGB | cv2.IMREAD_ANYDEPTH)
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
            if image is not None:
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    except cv2.error as e:
        raise damaged(where, "PNG", f"OpenCV: {e}") from e
    if image is None:
        raise damaged(where, "PNG", "libpng cannot decode its image data")
    return image


def _decode_pillow(data: bytes, where: str, limits: Limits) -> np.ndarray:
    kind = headers.image_kind(data)
    try:
        # (Pillow warns past 89 Mpx, raises past 179 Mpx; max_pixels is checked right after.)
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{where}: the {kind or 'image'} is over Pillow's decompression-bomb limit ({e}); downscale the image first"
        ) from e
    except UnidentifiedImageError as e:
        if kind is None:
            raise InputError(
                f"{where}: not an image, it looks like {headers.describe_non_image(data)}; "
                "pass a JPEG, PNG, WebP, BMP, TIFF or GIF image"
            ) from e
        raise damaged(where, kind, "its header cannot be read") from e
    except _PILLOW_DATA_ERRORS as e:
        raise damaged(where, kind or "image", str(e) or type(e).__name__) from e
    kind = image.format or kind or "image"
    with image:
        check_size(image.width, image.height, where, kind, limits)
        try:
            image.load()
            pixels = _pillow_pixels(image)
        except _PILLOW_DATA_ERRORS as e:
            if "truncated" in str(e):
                raise truncated(where, kind, str(e)) from e
            raise damaged(where, kind, str(e) or type(e).__name__) from e
        orientation = _orientation(image.getexif)
    return _orient(pixels, orientation)


def _pillow_pixels(image: Image.Image) -> np.ndarray:
    """RGB (alpha dropped), or deep grey/float samples kept for :func:`to_uint8`."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F", "L"):
        grey = np.asarray(image)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def to_uint8(image: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is; uint16 -> round(v / 257); float in [0, 1] -> round(v * 255).

    Raises:
        InputError: float values outside [0, 1] (or NaN), or another dtype.
    """
    dtype = image.dtype
    if dtype == np.uint8:
        return image
    if dtype == np.uint16:
        # convertScaleAbs rounds to nearest; v / 257 is never a tie for an integer v.
        return cv2.convertScaleAbs(np.ascontiguousarray(image), alpha=1.0 / 257.0)
    if dtype.kind == "f":
        if image.dtype not in (np.float32, np.float64):
            image = image.astype(np.float32)
        low, high = float(image.min()), float(image.max())
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise InputError(
                f"{where}: float pixels must be in [0, 1], these span [{low:g}, {high:g}]; "
                "scale them to [0, 1] or convert to uint8 (0..255) first"
            )
        return cv2.convertScaleAbs(np.ascontiguousarray(image), alpha=255.0)
    raise InputError(
        f"{where}: dtype {dtype} is not a supported pixel type; pass uint8 (0..255), uint16 or float in [0, 1]"
    )
