"""The quantize steps by format, and the precisions each format supports, derived from the steps.

An explicit table (STYLE.md). ``PRECISIONS_FOR_FORMAT`` is what the export step writes (fp32)
plus what the format's quantize step declares, so adding a precision to a step's declaration
is the one change a planner needs.
"""

from __future__ import annotations

from converters.export.pipeline import EXPORT_STEPS
from converters.quantize import onnx as quantize_onnx
from converters.quantize import openvino as quantize_openvino
from converters.quantize import tflite as quantize_tflite
from converters.quantize.steps import QuantizeStep
from sdk.enums import ModelFormat, Precision

QUANTIZE_STEPS: dict[ModelFormat, QuantizeStep] = {
    ModelFormat.TFLITE: quantize_tflite.STEP,
    ModelFormat.OPENVINO: quantize_openvino.STEP,
    ModelFormat.ONNX: quantize_onnx.STEP,
}
PRECISIONS_FOR_FORMAT: dict[ModelFormat, frozenset[Precision]] = {
    fmt: EXPORT_STEPS[fmt].precisions | step.precisions for fmt, step in QUANTIZE_STEPS.items()
}
# Precisions whose quantizer, in some format, needs representative data.
NEEDS_CALIBRATION: frozenset[Precision] = frozenset().union(*(s.needs_calibration for s in QUANTIZE_STEPS.values()))
