"""The config of the LiteRT quantize step: which precision, which I/O dtype, what stays in float."""

from __future__ import annotations

import dataclasses

from sdk.enums import Precision
from sdk.errors import ConfigError

# Model I/O dtypes each precision can have.
IO_DTYPES: dict[Precision, tuple[str, ...]] = {
    Precision.FP16: ("float32",),
    Precision.DYNAMIC_INT8: ("float32",),
    Precision.INT8: ("int8", "uint8", "float32"),
    Precision.INT16X8: ("float32", "int16"),
}
NEEDS_CALIBRATION = frozenset({Precision.INT8, Precision.INT16X8})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TFLiteQuantConfig:
    """How to quantize a SavedModel for LiteRT.

    Attributes:
        precision: ``fp16``, ``dynamic_int8``, ``int8`` or ``int16x8``.
        io_dtype: the model's input/output dtype: ``int8``/``uint8`` only for int8, ``int16``
            only for int16x8, else ``float32``.
        calibration_steps: most calibration samples used (evenly spread over the set).
        denylisted_nodes: int8 only: ops kept in float, by the names ``sensitive_layers``
            reports (record name, tensor name) or by Keras layer name.
        denylisted_ops: int8 only: LiteRT op types kept in float (``CONV_2D``, ``MEAN``).
        per_channel: per-channel weight scales for conv/dense (per-tensor is coarser, smaller).
        allow_float_fallback: int16x8 only: ops without an int16 kernel run in float.

    Raises:
        ConfigError: on construction, a value this step cannot honour.
    """

    precision: Precision
    io_dtype: str = "float32"
    calibration_steps: int = 200
    denylisted_nodes: tuple[str, ...] = ()
    denylisted_ops: tuple[str, ...] = ()
    per_channel: bool = True
    allow_float_fallback: bool = False

    def __post_init__(self) -> None:
        where = "TFLiteQuantConfig"
        # A plain "int8" equals Precision.INT8 but is not it: every later `is` test would miss.
        try:
            precision = Precision.parse(self.precision, "precision")
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from e
        object.__setattr__(self, "precision", precision)
        # Callers may pass lists; tuples keep the config hashable and its record stable.
        for name in ("denylisted_nodes", "denylisted_ops"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if precision not in IO_DTYPES:
            choices = ", ".join(p.value for p in IO_DTYPES)
            raise ConfigError(
                f"{where}.precision must be one of {choices} (fp32 comes from export_tflite), got {precision.value!r}"
            )
        if self.io_dtype not in IO_DTYPES[precision]:
            raise ConfigError(
                f"{where}.io_dtype {self.io_dtype!r} does not go with {precision.value}; use one of "
                f"{', '.join(IO_DTYPES[precision])}"
            )
        steps = self.calibration_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"{where}.calibration_steps must be a positive integer, got {steps!r}")
        if self.selective and precision is not Precision.INT8:
            raise ConfigError(
                f"{where}: denylisted_nodes/ops need precision int8 (LiteRT keeps ops in float only in "
                f"full-integer int8 models), not {precision.value}"
            )
        if self.allow_float_fallback and precision is not Precision.INT16X8:
            raise ConfigError(f"{where}.allow_float_fallback is for int16x8 only")

    @property
    def selective(self) -> bool:
        return bool(self.denylisted_nodes or self.denylisted_ops)
