"""Fuzz target: encoded bytes (or a raw array) -> ``decode_image`` -> ``preprocess``.

Coverage-guided over shelfedge's own code and Pillow's Python parsers (instrumented by
atheris); the C decoders (libjpeg-turbo, libpng, libwebp, ...) run uninstrumented but under
the same timeout and memory limit. Only shelfedge errors are expected answers.

Usage: ``python3 fuzz/fuzz_decode.py [libFuzzer flags] CORPUS_DIR [SEED_DIR ...]``;
``python3 fuzz/run.py`` runs it with the right flags and seeds.
"""

from __future__ import annotations

import struct

import _harness
import atheris
import numpy as np

with atheris.instrument_imports(include=["sdk", "PIL"]):
    from PIL import Image

    from sdk import preprocess as pp
    from sdk.enums import Layout
    from sdk.errors import ShelfedgeError
    from sdk.manifest import Preprocessing
    from sdk.tensors import TensorSpec

    Image.init()  # Pillow imports its format plugins lazily: import them here, instrumented

ARRAY_MAGIC = b"NDAR"  # inputs starting with this are raw arrays: height, width, channels, dtype
_DTYPES = (np.uint8, np.uint16, np.float32, np.float64, np.int32, np.bool_)
_PRE = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
_SPEC = TensorSpec(name="image", shape=(1, 32, 32, 3), dtype="float32", layout=Layout.NHWC)


def _array(data: bytes) -> np.ndarray:
    height, width, channels, kind = struct.unpack_from("<HHBB", data, len(ARRAY_MAGIC))
    dtype = np.dtype(_DTYPES[kind % len(_DTYPES)])
    shape = (height, width) if channels == 0 else (height, width, channels)
    count = int(np.prod(shape))
    payload = data[len(ARRAY_MAGIC) + 6 :]
    raw = (payload * (count * dtype.itemsize // max(len(payload), 1) + 1))[: count * dtype.itemsize]
    return np.frombuffer(raw, dtype).reshape(shape) if raw or count == 0 else np.zeros(shape, dtype)


def decode_and_preprocess(data: bytes) -> None:
    """The target body: one input through decode and preprocessing."""
    if data.startswith(ARRAY_MAGIC) and len(data) >= len(ARRAY_MAGIC) + 6:
        source: bytes | np.ndarray = _array(data)
    else:
        source = data
    image = pp.decode_image(source)
    tensor = pp.preprocess(image, _PRE, _SPEC)
    if tensor.shape != (1, 32, 32, 3) or not np.isfinite(tensor).all():
        raise AssertionError(f"preprocess gave shape {tensor.shape} or non-finite values")


if __name__ == "__main__":
    _harness.fuzz(decode_and_preprocess, (ShelfedgeError,))
