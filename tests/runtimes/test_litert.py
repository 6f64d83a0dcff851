"""LiteRT specifics: delegates and the fallback policy, quantized and fp16 models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes import litert
from sdk.enums import Device, FallbackPolicy, Layout, Precision
from sdk.errors import BackendUnavailableError
from sdk.profiles import RuntimeOptions
from sdk.runtime import SessionOptions

pytestmark = pytest.mark.litert

try:
    litert.require_backend()
except ImportError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"LiteRT not installed: {e}", allow_module_level=True)


def _options(policy: FallbackPolicy, device: Device = Device.TPU, delegate: str | None = "libedgetpu.so.1"):
    options = RuntimeOptions(threads=1, delegate=delegate)
    return SessionOptions(device=device, fallback=policy, runtime_options=options)


def test_open_session_fails_with_missing_edgetpu_delegate_under_strict(tflite_file: Path) -> None:
    inputs, outputs = litert.describe(tflite_file)
    with pytest.raises(BackendUnavailableError, match=r"libedgetpu\.so\.1.*(install|path)") as error:
        litert.open_session(tflite_file, inputs, outputs, _options(FallbackPolicy.STRICT))
    assert error.value.__cause__ is not None


def test_open_session_succeeds_with_missing_delegate_under_record(tflite_file: Path, images, reference) -> None:
    inputs, outputs = litert.describe(tflite_file)
    with litert.open_session(tflite_file, inputs, outputs, _options(FallbackPolicy.RECORD)) as session:
        got = session.run({"image": images[3]})["output_0"]
        info = session.info
    np.testing.assert_allclose(got, reference(images[3]), atol=1e-4, rtol=0)
    assert info.fell_back is True and "libedgetpu.so.1" in info.fallback_reason
    assert info.requested_device is Device.TPU and info.actual_device == "CPU"
    assert info.requested_accelerator == "libedgetpu.so.1" and info.actual_accelerator == "XNNPACK"
    assert info.threads == 1


def test_open_session_fails_with_tpu_and_no_delegate_under_strict(tflite_file: Path) -> None:
    inputs, outputs = litert.describe(tflite_file)
    with pytest.raises(BackendUnavailableError, match="no delegate is configured"):
        litert.open_session(tflite_file, inputs, outputs, _options(FallbackPolicy.STRICT, delegate=None))


def test_backend_info_succeeds_with_the_preferred_package() -> None:
    assert litert.backend_info()["package"] in ("ai_edge_litert", "tflite_runtime", "tensorflow.lite")


def test_describe_succeeds_with_int8_quantization_parameters(tflite_variants) -> None:
    inputs, outputs = litert.describe(tflite_variants["int8"])
    (image,), (logits,) = inputs, outputs
    assert image.dtype == "int8" and image.layout is Layout.NHWC
    assert image.quantization is not None and image.quantization.scale > 0
    assert -128 <= image.quantization.zero_point <= 127
    assert logits.dtype == "int8" and logits.quantization is not None


def test_open_session_succeeds_with_int8_model_close_to_keras(tflite_variants, images, reference) -> None:
    path = tflite_variants["int8"]
    inputs, outputs = litert.describe(path)
    with litert.open_session(path, inputs, outputs, SessionOptions()) as session:
        q_in, q_out = inputs[0].quantization, outputs[0].quantization
        got = session.run({inputs[0].name: q_in.quantize(images[3], "int8")})[outputs[0].name]
        assert session.info.precision is Precision.INT8
    assert got.dtype == np.int8 and got.shape == (3, 5)
    # A few quantization steps of the output, not fp32 parity.
    np.testing.assert_allclose(q_out.dequantize(got), reference(images[3]), atol=20 * q_out.scale + 0.02)


def test_open_session_succeeds_with_fp16_weights_reported_as_fp16(tflite_variants, images, reference) -> None:
    path = tflite_variants["fp16"]
    inputs, outputs = litert.describe(path)
    with litert.open_session(path, inputs, outputs, SessionOptions()) as session:
        got = session.run({"image": images[1]})["output_0"]
        assert session.info.precision is Precision.FP16
    np.testing.assert_allclose(got, reference(images[1]), atol=1e-2)
