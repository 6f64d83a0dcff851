"""Decoding: any image source (path, encoded bytes, camera frame) -> an HxWx3 uint8 RGB array.

Validation lives here too: a file that is missing, not an image, truncated, too large or of
an unusable pixel type is refused with a message naming it and the fix, before (where the
header allows) any memory is spent on decoding. See :mod:`sdk.preprocess` for the pixel
conventions fixed here.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from sdk._image_headers import ImageHeader, sniff
from sdk.enums import ColorOrder
from sdk.errors import ConfigError, InputError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageSource", "decode_image"]

ImageSource = str | os.PathLike | bytes | np.ndarray

DEFAULT_MAX_PIXELS = 50_000_000

# OpenCV >= 4.11 decodes straight to RGB, saving a colour conversion per image.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
# JPEG shrink factors libjpeg applies while decoding (the DCT is scaled: little memory).
_JPEG_REDUCED = (
    (2, cv2.IMREAD_REDUCED_COLOR_2),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (8, cv2.IMREAD_REDUCED_COLOR_8),
)


def decode_image(
    source: ImageSource,
    *,
    array_color: ColorOrder = ColorOrder.BGR,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode an image into an HxWx3 uint8 RGB array.

    Args:
        source: a file path, encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF, AVIF, ... as
            OpenCV reads them), or an HxW / HxWxC array (C = 1, 3 or 4) of uint8, uint16 or
            float in [0, 1].
        array_color: channel order of a 3- or 4-channel array: BGR(A), OpenCV's and most
            cameras' order, or RGB(A). Ignored for paths and bytes.
        max_pixels: the most pixels an encoded image may decode to. A larger JPEG is
            decoded at 1/2, 1/4 or 1/8 scale (libjpeg scales while decoding); any other
            larger image is refused before it is decoded when its header tells its size.
            Arrays are already decoded and are not limited.

    Returns:
        A C-contiguous HxWx3 uint8 RGB array. For an RGB uint8 array input it may be the
        input itself (no copy); treat it as read-only.

    Raises:
        InputError: the file is missing or unreadable, the data is empty, not an image,
            truncated, corrupt or too large; the array has a bad shape, dtype or range.
        ConfigError: ``array_color`` or ``max_pixels`` is invalid.
    """
    color = _parse_color(array_color)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        return _from_array(source, color)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source) if not isinstance(source, bytes) else source
        return _from_encoded(data, f"image data ({len(data):,} bytes)", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        return _from_encoded(_read_file(path), path, max_pixels)
    raise InputError(
        f"cannot read an image from a {type(source).__name__}; pass a file path, encoded image bytes or a numpy array"
    )


def _parse_color(value: ColorOrder | str) -> ColorOrder:
    try:
        return ColorOrder.parse(value, "array_color")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _read_file(path: str) -> bytes:
    # Reading the bytes ourselves (not cv2.imread) gives clear errors, handles non-ASCII
    # paths on every OS, and lets the header be checked before anything is decoded.
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such image file; check the path") from e
    except IsADirectoryError as e:
        raise InputError(f"{path}: is a directory, not an image file; pass the path of one image") from e
    except OSError as e:
        if os.path.isdir(path):  # Windows reports a directory as PermissionError
            raise InputError(f"{path}: is a directory, not an image file; pass the path of one image") from e
        raise InputError(f"{path}: cannot read the image file ({e.strerror or e}); check its permissions") from e


def _from_encoded(data: bytes, where: str, max_pixels: int) -> np.ndarray:
    if not data:
        raise InputError(f"{where}: empty (0 bytes), no image in it; check the upload, download or file")
    header = sniff(data)
    if header.is_image is False:
        raise InputError(_not_an_image(where, header.kind))
    if header.truncated:
        raise InputError(
            f"{where}: truncated {header.kind} ({header.truncated}); the file was cut short, "
            "e.g. by an interrupted download or copy: fetch or export it again"
        )
    flags = None  # full-size decode
    if header.width and header.height and header.width * header.height > max_pixels:
        flags = _reduced_flags_or_refuse(header, where, max_pixels)
    buffer = np.frombuffer(data, np.uint8)
    try:
        if flags is not None:
            image = cv2.imdecode(buffer, flags)
            if image is not None:
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)  # in place: the image may be large
        elif _IMREAD_RGB is not None:
            image = cv2.imdecode(buffer, _IMREAD_RGB | cv2.IMREAD_ANYDEPTH)
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
            if image is not None:
                cv2.cvtColor(image, cv2.COLOR_BGR2RGB, dst=image)
    except cv2.error as e:
        raise InputError(f"{where}: OpenCV cannot decode this {header.kind} data: {e}") from e
    if image is None and flags is not None:
        raise InputError(
            f"{where}: cannot decode this {header.width}x{header.height} {header.kind} image even at "
            "reduced scale: it is corrupt, or beyond OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS); "
            "downscale the image first"
        )
    if image is None:
        if header.is_image is None:
            raise InputError(_not_an_image(where, header.kind))
        raise InputError(
            f"{where}: cannot decode this {header.kind} image: it is corrupt or a variant this OpenCV "
            "build does not read; re-save it as JPEG or PNG"
        )
    if image.ndim != 3 or image.shape[2] != 3:  # defensive: the flags above ask for 3 channels
        raise InputError(f"{where}: decoded to an unexpected shape {image.shape}; re-save it as JPEG or PNG")
    height, width = image.shape[:2]
    if flags is None and height * width > max_pixels:
        # Only formats whose header we cannot read get here; refusing keeps the promise
        # that no decoded image exceeds max_pixels.
        raise InputError(_too_large(where, header.kind, width, height, max_pixels))
    return _to_uint8(image, where)


def _reduced_flags_or_refuse(header: ImageHeader, where: str, max_pixels: int) -> int:
    assert header.width and header.height
    if header.kind == "JPEG":
        for factor, flags in _JPEG_REDUCED:
            if -(-header.width // factor) * -(-header.height // factor) <= max_pixels:
                return flags
        detail = ", even decoded at 1/8 scale"
        raise InputError(_too_large(where, header.kind, header.width, header.height, max_pixels, detail))
    raise InputError(_too_large(where, header.kind, header.width, header.height, max_pixels))


def _too_large(where: str, kind: str, width: int, height: int, max_pixels: int, detail: str = "") -> str:
    return (
        f"{where}: the {kind} image is {width}x{height} ({width * height:,} pixels), more than "
        f"max_pixels={max_pixels:,}{detail}; downscale the image first (or raise max_pixels if "
        "the source is trusted and memory allows)"
    )


def _not_an_image(where: str, kind: str) -> str:
    return f"{where}: not an image, it looks like {kind}; pass a JPEG, PNG, WebP, BMP or TIFF image"


def _from_array(array: np.ndarray, color: ColorOrder) -> np.ndarray:
    where = "image array"
    if array.dtype == np.bool_:
        raise InputError(f"{where}: dtype bool is a mask, not an image; pass uint8 pixels (0..255)")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise InputError(
            f"{where}: shape {array.shape} has {array.shape[2]} channels; pass HxW (grey), "
            "HxWx1, HxWx3 (BGR or RGB) or HxWx4 (BGRA or RGBA)"
        )
    if array.ndim not in (2, 3):
        hint = "; pass one image at a time (preprocess_batch takes a list)" if array.ndim == 4 else ""
        raise InputError(f"{where}: shape {array.shape} is not an image; pass HxW, HxWx1, HxWx3 or HxWx4{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{where}: shape {array.shape} has no pixels; pass a non-empty image")
    image = _to_uint8(array, where)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        code = cv2.COLOR_BGRA2RGB if color is ColorOrder.BGR else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    if color is ColorOrder.BGR:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def _to_uint8(image: np.ndarray, where: str) -> np.ndarray:
    """uint8 as is; uint16 -> round(v / 257); float in [0, 1] -> round(v * 255)."""
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
