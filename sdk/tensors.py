"""Tensor specs: the names, shapes, dtypes and quantization every adapter speaks."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sdk.enums import Layout
from sdk.errors import InputError

# dtypes a model input or output may have; names are numpy's.
SUPPORTED_DTYPES = ("float32", "float16", "int8", "uint8", "int16", "int32", "int64")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantization:
    """Affine quantization: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int

    def quantize(self, values: np.ndarray, dtype: str) -> np.ndarray:
        info = np.iinfo(np.dtype(dtype))
        q = np.round(values / self.scale + self.zero_point)
        return np.clip(q, info.min, info.max).astype(dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float32) - self.zero_point) * np.float32(self.scale)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": float(self.scale), "zero_point": int(self.zero_point)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorSpec:
    """One model input or output.

    ``shape`` uses -1 for a dynamic dimension (usually the batch).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: Layout = Layout.ANY
    quantization: Quantization | None = None

    def __post_init__(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"tensor {self.name!r} has dtype {self.dtype!r}; supported: {', '.join(SUPPORTED_DTYPES)}")

    def with_batch(self, batch: int) -> tuple[int, ...]:
        """The concrete shape for a batch of ``batch`` (dynamic dims other than batch stay -1)."""
        if not self.shape:
            return self.shape
        return (batch, *self.shape[1:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout.value,
            "quantization": self.quantization.to_dict() if self.quantization else None,
        }


def check_feed(specs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray], where: str) -> None:
    """Refuse a feed whose names, ranks, shapes or dtypes do not match ``specs``.

    Raises:
        InputError: naming the tensor, what was expected and what was given.
    """
    expected = {s.name for s in specs}
    given = set(feed)
    if given != expected:
        missing = sorted(expected - given)
        extra = sorted(given - expected)
        raise InputError(
            f"{where}: inputs do not match the model: missing {missing}, unexpected {extra}; "
            f"pass a dict with exactly the keys {sorted(expected)}"
        )
    for spec in specs:
        array = feed[spec.name]
        if not isinstance(array, np.ndarray):
            raise InputError(f"{where}: input {spec.name!r} is a {type(array).__name__}, expected a numpy array")
        if array.ndim != len(spec.shape) or any(
            want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
        ):
            raise InputError(
                f"{where}: input {spec.name!r} has shape {tuple(array.shape)}, the model expects "
                f"{_shape_text(spec.shape)} ({spec.layout.value}); preprocess the image with the "
                f"bundle's preprocessing or reshape the tensor"
            )
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(
                f"{where}: input {spec.name!r} has dtype {array.dtype}, the model expects {spec.dtype}"
                + ("; quantize it with the tensor's scale/zero-point" if spec.quantization else "")
            )


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join("N" if d == -1 else str(d) for d in shape) + ")"
