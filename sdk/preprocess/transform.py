"""The tensor transform: a decoded RGB image -> the input tensor a bundle's manifest describes.

Resize and crop, colour order, ``(pixel - mean) / std``, layout, dtype and quantization, the
same on every runtime. See :mod:`sdk.preprocess` for the conventions fixed here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

from sdk.enums import ColorOrder, Interpolation, Layout, ResizeMode
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.preprocess.decode import DEFAULT_MAX_PIXELS, ImageSource, decode_image
from sdk.tensors import TensorSpec

__all__ = ["load_and_preprocess", "preprocess", "preprocess_batch"]

# Bilinear uses the bit-exact variant so x86 and ARM builds of OpenCV give identical
# pixels; nearest uses the variant that matches PIL/TF (plain INTER_NEAREST is shifted
# by half a pixel).
_CV2_INTERPOLATION: dict[Interpolation, int] = {
    Interpolation.NEAREST: cv2.INTER_NEAREST_EXACT,
    Interpolation.BILINEAR: cv2.INTER_LINEAR_EXACT,
    Interpolation.BICUBIC: cv2.INTER_CUBIC,
    Interpolation.AREA: cv2.INTER_AREA,
}


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
        values = (levels - np.asarray(pre.mean[:channels], np.float32)) / np.asarray(pre.std[:channels], np.float32)
        if quantized:
            assert spec.quantization is not None
            values = spec.quantization.quantize(values, dtype.name)
        # (a quantization recorded on a float input means nothing for the pixels: ignored)
        with np.errstate(over="ignore"):  # an overflow is reported just below, as a ConfigError
            values = values.astype(dtype, copy=False)
        if dtype.kind == "f" and not np.isfinite(values).all():
            raise ConfigError(
                f"{where}: (pixel - mean) / std with mean {tuple(pre.mean)} and std {tuple(pre.std)} "
                f"overflows {dtype.name} for some pixel values; fix the manifest's preprocessing"
            )
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
        InputError: ``image_rgb`` is not a non-empty HxWx3 uint8 array, or its resize before
            the centre crop would exceed ``DEFAULT_MAX_PIXELS`` (an extreme aspect ratio).
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
        _lookup(plane, plan.tables and plan.tables[c : c + 1], out[c])


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
    if nh * nw > DEFAULT_MAX_PIXELS:
        # Scaling the short side of a strip (1x65000 -> 256x16.6M) would allocate gigabytes.
        raise InputError(
            f"a {w}x{h} image would be resized to {nw}x{nh} ({nh * nw:,} pixels, more than "
            f"{DEFAULT_MAX_PIXELS:,}) before the centre crop; crop it to the product first"
        )
    resized = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=plan.interpolation)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return resized[top : top + th, left : left + tw]
