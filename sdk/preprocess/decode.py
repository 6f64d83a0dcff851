"""Decoding: any image source (path, encoded bytes, camera frame) -> an HxWx3 uint8 RGB array.

Validation lives here too: a file that is missing, not a regular file, not an image,
truncated, damaged, too large or of an unusable pixel type is refused with a message naming
it and the fix, before any memory is spent on decoding: the byte count from the file
system, the pixel count and aspect ratio from the header (:mod:`sdk.preprocess._codecs`).
Arrays are held to the same pixel and aspect-ratio caps. See :mod:`sdk.preprocess` for the
pixel conventions fixed here.
"""

from __future__ import annotations

import errno
import os
import stat

import cv2
import numpy as np

from sdk.enums import ColorOrder
from sdk.errors import ConfigError, InputError
from sdk.preprocess._codecs import Limits, check_size, decode_encoded, to_uint8

__all__ = ["DEFAULT_MAX_ASPECT_RATIO", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "ImageSource", "decode_image"]

ImageSource = str | os.PathLike | bytes | np.ndarray

DEFAULT_MAX_PIXELS = 50_000_000
# A 50 Mpx camera JPEG is ~25 MB; a file far larger is not a photo to classify.
DEFAULT_MAX_BYTES = 64 * 2**20
# A product or shelf photo is never a strip: 1x65000 would be resized to 256x16.6M pixels.
DEFAULT_MAX_ASPECT_RATIO = 20.0


def decode_image(
    source: ImageSource,
    *,
    array_color: ColorOrder = ColorOrder.BGR,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> np.ndarray:
    """Decode an image into an HxWx3 uint8 RGB array, refusing hostile input before it costs memory.

    Args:
        source: a path to a regular file, encoded bytes (JPEG, PNG, WebP, BMP, TIFF, GIF,
            PNM, AVIF), or an HxW / HxWxC array (C = 1, 3 or 4) of uint8, uint16 or float
            in [0, 1].
        array_color: channel order of a 3- or 4-channel array: BGR(A), OpenCV's and most
            cameras' order, or RGB(A). Ignored for paths and bytes.
        max_pixels: the most pixels an image may have. A larger single-scan JPEG is decoded
            at 1/2, 1/4 or 1/8 scale (libjpeg scales inside the DCT); any other larger image
            or array is refused, an encoded one from its header before it is decoded.
        max_bytes: the largest file or byte string read; a larger file is refused unread.
        max_aspect_ratio: the most the long side may exceed the short side, as a factor.

    Returns:
        A C-contiguous HxWx3 uint8 RGB array. For an RGB uint8 array input it may be the
        input itself (no copy); treat it as read-only.

    Raises:
        InputError: the file is missing, unreadable or not a regular file (a FIFO, device or
            directory); the data is empty, not an image, of an unsupported format, truncated
            or damaged (any decoder warning counts); the image is over a limit; the array has
            a bad shape, dtype or range.
        ConfigError: ``array_color`` or a limit is invalid.
    """
    color = _parse_color(array_color)
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if (
        isinstance(max_aspect_ratio, bool)
        or not isinstance(max_aspect_ratio, (int, float))
        or not max_aspect_ratio >= 1
    ):
        raise ConfigError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")
    limits = Limits(max_pixels=max_pixels, max_aspect_ratio=float(max_aspect_ratio))
    if isinstance(source, np.ndarray):
        return _from_array(source, color, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source) if not isinstance(source, bytes) else source
        where = f"image data ({len(data):,} bytes)"
        if len(data) > max_bytes:
            raise InputError(_too_many_bytes(where, len(data), max_bytes))
        return _from_encoded(data, where, limits)
    if isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        return _from_encoded(_read_file(path, max_bytes), path, limits)
    raise InputError(
        f"cannot read an image from a {type(source).__name__}; pass a file path, encoded image bytes or a numpy array"
    )


def _parse_color(value: ColorOrder | str) -> ColorOrder:
    try:
        return ColorOrder.parse(value, "array_color")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _too_many_bytes(where: str, size: int, max_bytes: int) -> str:
    return (
        f"{where}: {size:,} bytes, more than max_bytes={max_bytes:,}; a photo to classify is far smaller: "
        "downscale or re-compress it (or raise max_bytes if the source is trusted)"
    )


def _read_file(path: str, max_bytes: int) -> bytes:
    # os.open with O_NONBLOCK: opening a FIFO must not wait for a writer. Only a regular
    # file is read (a FIFO, /dev/zero or a socket could block or never end), never more
    # than max_bytes + 1 bytes, and the header is checked before anything is decoded.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such image file; check the path") from e
    except OSError as e:
        if os.path.isdir(path):  # Windows reports a directory as PermissionError
            raise InputError(f"{path}: is a directory, not an image file; pass the path of one image") from e
        raise InputError(f"{path}: cannot open the image file ({e.strerror or e}); check its permissions") from e
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise InputError(f"{path}: is a directory, not an image file; pass the path of one image")
        if not stat.S_ISREG(mode):
            raise InputError(
                f"{path}: not a regular file (a {_file_type(mode)}); save the image to a file and pass that path"
            )
        if info.st_size > max_bytes:
            raise InputError(_too_many_bytes(path, info.st_size, max_bytes))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise InputError(f"{path}: is a directory, not an image file; pass the path of one image") from e
        raise InputError(f"{path}: cannot read the image file ({e.strerror or e}); check its permissions") from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew while being read
        raise InputError(_too_many_bytes(path, len(data), max_bytes))
    return data


def _file_type(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "FIFO/pipe"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))
    for test, name in (*kinds, (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _from_encoded(data: bytes, where: str, limits: Limits) -> np.ndarray:
    if not data:
        raise InputError(f"{where}: empty (0 bytes), no image in it; check the upload, download or file")
    image = decode_encoded(data, where, limits)
    if image.ndim != 3 or image.shape[2] != 3:  # defensive: every decoder above gives 3 channels
        raise InputError(f"{where}: decoded to an unexpected shape {image.shape}; re-save it as JPEG or PNG")
    return to_uint8(image, where)


def _from_array(array: np.ndarray, color: ColorOrder, limits: Limits) -> np.ndarray:
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
    check_size(array.shape[1], array.shape[0], where, "decoded", limits)
    image = to_uint8(array, where)
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        code = cv2.COLOR_BGRA2RGB if color is ColorOrder.BGR else cv2.COLOR_RGBA2RGB
        return cv2.cvtColor(np.ascontiguousarray(image), code)
    if color is ColorOrder.BGR:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)
