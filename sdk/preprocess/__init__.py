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
- EXIF orientation is applied, whatever the format (as OpenCV's ``imdecode`` does);
- sizes are rounded half up, centre crops start at ``(resized - size) // 2`` (as Keras'
  ``CenterCrop``), and ``pre.interpolation`` is followed exactly (no automatic switch to
  area interpolation when shrinking: all runtimes must do the same thing).

Three modules, one concern each: :mod:`sdk.preprocess.decode` (sources -> validated RGB
pixels, the limits), :mod:`sdk.preprocess._codecs` (encoded bytes -> pixels, one strict
decoder per format) and :mod:`sdk.preprocess.transform` (pixels -> the model's input tensor).

Hostile input costs nothing: the file must be a regular file of at most ``max_bytes``; the
pixel count and aspect ratio come from the header before any pixel buffer exists; decoder
warnings (corrupt JPEG data, a bad PNG CRC, a truncated file) are errors; and the resize in
:func:`preprocess` refuses an intermediate image over ``DEFAULT_MAX_PIXELS``.

Thread safety: every function here is safe to call from several threads at once (no
shared mutable state; the decoders release the GIL).
"""

from __future__ import annotations

from sdk.preprocess.decode import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageSource,
    decode_image,
)
from sdk.preprocess.transform import load_and_preprocess, preprocess, preprocess_batch

__all__ = [
    "DEFAULT_MAX_ASPECT_RATIO",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "decode_image",
    "load_and_preprocess",
    "preprocess",
    "preprocess_batch",
]
