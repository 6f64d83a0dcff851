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

Two modules, one concern each: :mod:`sdk.preprocess.decode` (sources -> validated RGB
pixels) and :mod:`sdk.preprocess.transform` (pixels -> the model's input tensor).
"""

from __future__ import annotations

from sdk.preprocess.decode import DEFAULT_MAX_PIXELS, ImageSource, decode_image
from sdk.preprocess.transform import load_and_preprocess, preprocess, preprocess_batch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_image",
    "load_and_preprocess",
    "preprocess",
    "preprocess_batch",
]
