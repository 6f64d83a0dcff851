"""Image decoding and preprocessing: the one implementation every runtime uses.

Parity between runtimes starts here: every adapter, the reference runtime and the
converters feed models through :func:`decode_image` and :func:`preprocess`, so an image
becomes the same tensor on every device. Decoding turns any source (path, encoded bytes,
camera frame) into an HxWx3 uint8 RGB array; preprocessing turns that into the input
tensor the bundle's manifest describes (size, crop, colour order, mean/std, layout,
dtype, quantization).

Conventions that decide pixel values, fixed here once:

- alpha is dropped, not composited: that is what ``cv2.IMREAD_COLOR``,
  ``PIL.Image.convert("RGB")`` and ``tf.io.decode_image(channels=3)`` do, i.e. what the
  server model saw in training;
- 16-bit samples become ``round(v / 257)`` (65535 -> 255), float samples in [0, 1]
  become ``round(v * 255)``;
- JPEG EXIF orientation is applied;
- sizes are rounded half up, centre crops start at ``(resized - size) // 2`` (as Keras'
  ``CenterCrop``), and ``pre.interpolation`` is followed exactly (no automatic switch to
  area interpolation when shrinking: all runtimes must do the same thing).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import cv2
import numpy as np

from sdk._image_headers import ImageHeader, sniff
from sdk.enums import ColorOrder, Interpolation, Layout, ResizeMode
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.tensors import TensorSpec

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_image",
    "load_and_preprocess",
    "preprocess",
    "preprocess_batch",
]

ImageSource = str | os.PathLike | bytes | np.ndarray

DEFAULT_MAX_PIXELS = 50_000_000

# Bilinear uses the bit-exact variant so x86 and ARM builds of OpenCV give identical
# pixels; nearest uses the variant that matches PIL/TF (plain INTER_NEAREST is shifted
# by half a pixel).
_CV2_INTERPOLATION: dict[Interpolation, int] = {
    Interpolation.NEAREST: cv2.INTER_NEAREST_EXACT,
    Interpolation.BILINEAR: cv2.INTER_LINEAR_EXACT,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
    Interpolation.AREA: cv2.INTER_AREA,
}

# OpenCV >= 4.11 decodes straight to RGB, saving a colour conversion per image.
_IMREAD_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
# JPEG shrink factors libjpeg applies while decoding (the DCT is scaled: little memory).
_JPEG_REDUCED = (
    (2, cv2.IMREAD_REDUCED_COLOR_2),
    (4, cv2.IMREAD_REDUCED_COLOR_4),
    (8, cv2.IMREAD_REDUCED_COLOR_8),
)


# --------------------------------------------------------------------------- decoding


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
        f"cannot read an image from a {type(source).__name__}; pass a file path, encoded "
        "image bytes or a numpy array"
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
        raise InputError(
            f"{path}: cannot read the image file ({e.strerror or e}); check its permissions"
        ) from e


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
        raise InputError(
            f"{where}: decoded to an unexpected shape {image.shape}; re-save it as JPEG or PNG"
        )
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
        raise InputError(
            f"{where}: shape {array.shape} is not an image; pass HxW, HxWx1, HxWx3 or HxWx4{hint}"
        )
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
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise InputError(
                f"{where}: float pixels must be in [0, 1], these span [{low:g}, {high:g}]; "
                "scale them to [0, 1] or convert to uint8 (0..255) first"
            )
        return cv2.convertScaleAbs(np.ascontiguousarray(image), alpha=255.0)
    raise InputError(
        f"{where}: dtype {dtype} is not a supported pixel type; pass uint8 (0..255), uint16 or "
        "float in [0, 1]"
    )


# --------------------------------------------------------------------------- preprocessing


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class _Plan:
    """Everything ``preprocess`` needs, derived once from (Preprocessing, TensorSpec)."""

    height: int
    width: int
    channels: int  # 1 (grey model) or 3
    nchw: bool
    resize_mode: ResizeMode
    crop_fraction: float
    interpolation: int  # cv2 flag
    to_bgr: bool
    dtype: np.dtype
    # Per channel, the output value of each of the 256 pixel levels: normalisation,
    # float16 cast and quantization are all per-pixel functions of a uint8 level, so a
    # table computes them exactly (the same float32 operations) at a fraction of the cost.
    # None: raw uint8 pixels.
    tables: tuple[np.ndarray, ...] | None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        if self.nchw:
            return (self.channels, self.height, self.width)
        return (self.height, self.width, self.channels)


def _plan(pre: Preprocessing, spec: TensorSpec) -> _Plan:
    where = f"input tensor {spec.name!r}"
    if len(spec.shape) != 4 or spec.layout not in (Layout.NHWC, Layout.NCHW):
        raise ConfigError(
            f"{where} has shape {tuple(spec.shape)} and layout {spec.layout.value}; an image input "
            "needs rank 4 with layout NHWC or NCHW: fix the bundle manifest"
        )
    nchw = spec.layout is Layout.NCHW
    channels, height, width = spec.shape[1:4] if nchw else (spec.shape[3], *spec.shape[1:3])
    channels = 3 if channels == -1 else channels
    if channels not in (1, 3):
        raise ConfigError(
            f"{where} has {channels} channels; preprocessing produces 1 (grey) or 3: fix the bundle manifest"
        )
    height = pre.size[0] if height == -1 else height
    width = pre.size[1] if width == -1 else width
    if (height, width) != tuple(pre.size):
        raise ConfigError(
            f"{where} is {height}x{width} but the preprocessing size is {pre.size[0]}x{pre.size[1]}; "
            "fix the bundle manifest so they agree"
        )
    dtype = np.dtype(spec.dtype)
    quantized = spec.quantization is not None and dtype.name in ("uint8", "int8", "int16")
    raw = dtype == np.uint8 and spec.quantization is None
    if raw and (tuple(pre.mean) != (0.0, 0.0, 0.0) or tuple(pre.std) != (1.0, 1.0, 1.0)):
        raise ConfigError(
            f"{where} is uint8 without quantization, so it takes raw pixels, but the preprocessing "
            f"has mean {tuple(pre.mean)} and std {tuple(pre.std)}; record the input's scale/zero-point "
            "in the manifest, or set mean 0 and std 1"
        )
    if dtype.kind in "iu" and not (raw or quantized):
        detail = " without quantization" if spec.quantization is None else ""
        raise ConfigError(
            f"{where} has dtype {spec.dtype}{detail}; an image input is float32, float16, uint8, or "
            "int8/int16 with a scale/zero-point: fix the bundle manifest"
        )
    tables = None
    if not raw:
        # A grey model uses the first channel's mean/std (Preprocessing always holds three).
        levels = np.arange(256, dtype=np.float32)[:, None]
        values = (levels - np.asarray(pre.mean[:channels], np.float32)) / np.asarray(
            pre.std[:channels], np.float32
        )
        if quantized:
            assert spec.quantization is not None
            values = spec.quantization.quantize(values, dtype.name)
        # (a quantization recorded on a float input means nothing for the pixels: ignored)
        values = values.astype(dtype, copy=False)
        tables = tuple(np.ascontiguousarray(values[:, c]) for c in range(channels))
    return _Plan(
        height=height,
        width=width,
        channels=channels,
        nchw=nchw,
        resize_mode=pre.resize_mode,
        crop_fraction=pre.crop_fraction,
        interpolation=_CV2_INTERPOLATION[pre.interpolation],
        to_bgr=pre.color_order is ColorOrder.BGR,
        dtype=dtype,
        tables=tables,
    )


def preprocess(image_rgb: np.ndarray, pre: Preprocessing, spec: TensorSpec) -> np.ndarray:
    """Turn one decoded image into a batch-of-one input tensor.

    Resize (``pre.resize_mode``: shorter side to ``round(size / crop_fraction)`` then centre
    crop, or stretch to ``size``) with ``pre.interpolation``; reorder channels to
    ``pre.color_order``; ``(pixel - mean) / std`` in float32; then cast to float16,
    quantize with the spec's scale/zero-point (uint8/int8/int16), or pass raw pixels
    (uint8 without quantization, which needs mean 0 and std 1).

    Args:
        image_rgb: an HxWx3 uint8 RGB image, as :func:`decode_image` returns.
        pre: the bundle's preprocessing.
        spec: the model's image input: shape (N, H, W, C) or (N, C, H, W) per its layout;
            H and W may be -1 (then ``pre.size``), C may be 1 (grey) or 3.

    Returns:
        An array of ``spec``'s dtype and layout, batch 1.

    Raises:
        InputError: ``image_rgb`` is not a non-empty HxWx3 uint8 array.
        ConfigError: ``spec`` and ``pre`` do not describe a feedable image input.
    """
    plan = _plan(pre, spec)
    out = np.empty((1, *plan.image_shape), plan.dtype)
    _fill(image_rgb, plan, out[0])
    return out


def preprocess_batch(images: Sequence[np.ndarray], pre: Preprocessing, spec: TensorSpec) -> np.ndarray:
    """Preprocess decoded images into one batch tensor, as stacking :func:`preprocess` would.

    Raises:
        InputError: the sequence is empty, or an image is unusable (the message gives its index).
        ConfigError: ``spec`` and ``pre`` do not describe a feedable image input.
    """
    if len(images) == 0:
        raise InputError("preprocess_batch got no images; pass at least one")
    plan = _plan(pre, spec)
    out = np.empty((len(images), *plan.image_shape), plan.dtype)
    for i, image in enumerate(images):
        try:
            _fill(image, plan, out[i])
        except InputError as e:
            raise InputError(f"image {i} of the batch: {e}") from e
    return out


def load_and_preprocess(
    source: ImageSource,
    pre: Preprocessing,
    spec: TensorSpec,
    *,
    array_color: ColorOrder = ColorOrder.BGR,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Decode ``source`` with :func:`decode_image` and :func:`preprocess` it: a batch of one.

    Raises:
        InputError: the source cannot be decoded or is unusable.
        ConfigError: ``spec`` and ``pre`` do not agree, or an argument is invalid.
    """
    plan = _plan(pre, spec)  # a manifest problem is reported before any decoding work
    out = np.empty((1, *plan.image_shape), plan.dtype)
    _fill(decode_image(source, array_color=array_color, max_pixels=max_pixels), plan, out[0])
    return out


def _fill(image: np.ndarray, plan: _Plan, out: np.ndarray) -> None:
    """Write one image's tensor (model layout, no batch axis) into ``out``."""
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or image.shape[0] == 0
        or image.shape[1] == 0
    ):
        described = (
            f"a {image.dtype} array of shape {image.shape}"
            if isinstance(image, np.ndarray)
            else f"a {type(image).__name__}"
        )
        raise InputError(
            f"preprocess expects an HxWx3 uint8 RGB image, got {described}; decode it with "
            "decode_image (or use load_and_preprocess)"
        )
    pixels = _resize_and_crop(image, plan)  # (H, W, 3) uint8 RGB, possibly a view
    if plan.channels == 1:
        planes: Sequence[np.ndarray] = (cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY),)
        out = out.reshape(1, plan.height, plan.width)  # (H, W, 1) and (1, H, W) alike
    else:
        if plan.to_bgr:
            pixels = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
        if not plan.nchw:
            _lookup(pixels, plan.tables, out)
            return
        planes = cv2.split(pixels)
    for c, plane in enumerate(planes):
        _lookup(plane, plan.tables and plan.tables[c:c + 1], out[c])


def _lookup(pixels: np.ndarray, tables: tuple[np.ndarray, ...] | None, out: np.ndarray) -> None:
    """out = table[pixel] per channel (cv2.LUT), or the pixels themselves when there is no table."""
    if tables is None:
        out[...] = pixels
        return
    table = tables[0] if len(tables) == 1 else np.stack(tables, axis=-1)[None]
    result = cv2.LUT(pixels, table, dst=out)
    if not np.may_share_memory(result, out):  # OpenCV allocated instead of writing in place
        out[...] = result.reshape(out.shape)


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even; half up is what ports to other languages do.
    return math.floor(x + 0.5)


def _resize_and_crop(image: np.ndarray, plan: _Plan) -> np.ndarray:
    h, w = image.shape[:2]
    th, tw = plan.height, plan.width
    if plan.resize_mode is ResizeMode.STRETCH:
        if (h, w) == (th, tw):
            return image
        return cv2.resize(image, (tw, th), interpolation=plan.interpolation)
    # Scale, keeping the aspect ratio, until the image covers size / crop_fraction; for a
    # square size that puts the shorter side at round(size / crop_fraction).
    sh = _round_half_up(th / plan.crop_fraction)
    sw = _round_half_up(tw / plan.crop_fraction)
    if sh * w >= sw * h:
        nh, nw = sh, _round_half_up(w * sh / h)
    else:
        nh, nw = _round_half_up(h * sw / w), sw
    resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=plan.interpolation)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return resized[top : top + th, left : left + tw]
