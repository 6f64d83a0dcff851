"""String enums shared by manifests, profiles, sessions and the CLI."""

from __future__ import annotations

import enum
from typing import TypeVar

# Bound to the subclass ``parse`` is called on, so ``Runtime.parse(...)`` is typed ``Runtime``.
_E = TypeVar("_E", bound="_StrEnum")


class _StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls: type[_E], value: object, what: str) -> _E:
        """Parse ``value`` case-insensitively.

        Raises:
            ValueError: ``value`` is not one of the members; the message lists the choices.
        """
        if isinstance(value, cls):
            return value
        text = str(value).strip()
        for member in cls:
            if member.value.lower() == text.lower():
                return member
        choices = ", ".join(m.value for m in cls)
        raise ValueError(f"{what} {value!r} is not one of: {choices}")


class Task(_StrEnum):
    IMAGE_CLASSIFICATION = "image_classification"
    IMAGE_EMBEDDING = "image_embedding"
    RECOMMENDATION = "recommendation"


class ModelFormat(_StrEnum):
    TFLITE = "tflite"
    OPENVINO = "openvino"
    ONNX = "onnx"
    KERAS = "keras"
    SAVEDMODEL = "savedmodel"


class Runtime(_StrEnum):
    LITERT = "litert"
    OPENVINO = "openvino"
    ONNXRUNTIME = "onnxruntime"
    TENSORFLOW = "tensorflow"


class Device(_StrEnum):
    CPU = "CPU"
    GPU = "GPU"
    NPU = "NPU"
    TPU = "TPU"
    AUTO = "AUTO"


class Precision(_StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT16X8 = "int16x8"
    DYNAMIC_INT8 = "dynamic_int8"
    MIXED = "mixed"


class FallbackPolicy(_StrEnum):
    STRICT = "strict"
    RECORD = "record"


class Layout(_StrEnum):
    NHWC = "NHWC"
    NCHW = "NCHW"
    NC = "NC"
    ANY = "ANY"


class ColorOrder(_StrEnum):
    RGB = "RGB"
    BGR = "BGR"


class ResizeMode(_StrEnum):
    SHORTER_SIDE_CROP = "shorter_side_crop"
    STRETCH = "stretch"


class Interpolation(_StrEnum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    AREA = "area"


class OutputKind(_StrEnum):
    LOGITS = "logits"
    PROBABILITIES = "probabilities"
    EMBEDDING = "embedding"


# Which runtimes can open which model format, in order of preference. An explicit
# table: adding a backend means adding a line here, never scanning for plugins.
RUNTIMES_FOR_FORMAT: dict[ModelFormat, tuple[Runtime, ...]] = {
    ModelFormat.TFLITE: (Runtime.LITERT,),
    ModelFormat.OPENVINO: (Runtime.OPENVINO,),
    ModelFormat.ONNX: (Runtime.ONNXRUNTIME, Runtime.OPENVINO),
    ModelFormat.KERAS: (Runtime.TENSORFLOW,),
    ModelFormat.SAVEDMODEL: (Runtime.TENSORFLOW,),
}
