"""Planning a conversion from a hardware profile: which format, which precisions, which budget.

The plan is computed and checked before any work starts, so a request the target cannot
take (a TensorFlow-reference profile, a precision the format has no step for) fails at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from converters.quantize.formats import NEEDS_CALIBRATION, PRECISIONS_FOR_FORMAT
from sdk.enums import ModelFormat, Precision, Runtime
from sdk.errors import ConfigError
from sdk.profiles import HardwareProfile

# The format a profile's runtime reads; the precisions shelfedge can produce for it come from the
# quantize steps' declarations (converters.quantize.formats).
FORMAT_FOR_RUNTIME: dict[Runtime, ModelFormat] = {
    Runtime.LITERT: ModelFormat.TFLITE,
    Runtime.OPENVINO: ModelFormat.OPENVINO,
    Runtime.ONNXRUNTIME: ModelFormat.ONNX,
}
DEFAULT_MAX_DROP_PT = 1.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertPlan:
    """What ``convert`` will do for one profile.

    Attributes:
        profile: the target.
        format: the model format the profile's runtime reads.
        precisions: candidates in the profile's order of preference; fp32 always comes along
            as the baseline the budget is measured against.
        max_drop_pt: allowed val top-1 drop vs fp32, in accuracy points.
        io_dtype: LiteRT full-integer I/O type (uint8 for an Edge TPU, else int8).
    """

    profile: HardwareProfile
    format: ModelFormat
    precisions: tuple[Precision, ...]
    max_drop_pt: float
    io_dtype: str

    @property
    def needs_calibration(self) -> bool:
        return any(p in NEEDS_CALIBRATION for p in self.precisions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.id,
            "runtime": self.profile.runtime.value,
            "device": self.profile.device.value,
            "format": self.format.value,
            "precisions": [p.value for p in self.precisions],
            "max_drop_pt": self.max_drop_pt,
            "input_size": list(self.profile.input_size),
            "io_dtype": self.io_dtype,
        }


def plan(profile: HardwareProfile, max_drop_pt: float | None = None) -> ConvertPlan:
    """The conversion a profile asks for.

    Args:
        profile: the target hardware profile.
        max_drop_pt: overrides the profile's ``budgets.max_accuracy_drop_pt`` (0 forces the
            accuracy-control fallback, which tests use).

    Raises:
        ConfigError: the profile's runtime has no edge format (the TensorFlow reference), or it
            lists a precision shelfedge cannot produce for that format, or the budget is negative.
    """
    fmt = FORMAT_FOR_RUNTIME.get(profile.runtime)
    if fmt is None:
        raise ConfigError(
            f"profile {profile.id!r} runs {profile.runtime.value}, the server reference: there is no edge "
            "bundle to convert for it; pick an edge profile (see 'shelfedge profiles')"
        )
    unsupported = [p.value for p in profile.precisions if p not in PRECISIONS_FOR_FORMAT[fmt]]
    if unsupported:
        raise ConfigError(
            f"profile {profile.id!r} asks for {', '.join(unsupported)}, which shelfedge cannot produce as "
            f"{fmt.value}; supported: {', '.join(sorted(p.value for p in PRECISIONS_FOR_FORMAT[fmt]))}"
        )
    budget = max_drop_pt if max_drop_pt is not None else profile.budgets.max_accuracy_drop_pt
    budget = DEFAULT_MAX_DROP_PT if budget is None else float(budget)
    if budget < 0:
        raise ConfigError(f"the accuracy budget must be >= 0 points, got {budget}")
    precisions = tuple(dict.fromkeys([*profile.precisions, Precision.FP32]))
    io_dtype = "uint8" if profile.device.value == "TPU" else "int8"
    return ConvertPlan(profile=profile, format=fmt, precisions=precisions, max_drop_pt=budget, io_dtype=io_dtype)
