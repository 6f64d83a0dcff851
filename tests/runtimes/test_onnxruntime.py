"""ONNX Runtime specifics: execution providers and the fallback policy, threads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes import onnxruntime as ort_adapter
from sdk.enums import Device, FallbackPolicy, Precision
from sdk.errors import BackendUnavailableError
from sdk.profiles import RuntimeOptions
from sdk.runtime import SessionOptions

pytestmark = pytest.mark.onnxruntime

try:
    ort_adapter.require_backend()
except ImportError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"ONNX Runtime not installed: {e}", allow_module_level=True)


@pytest.fixture()
def no_cuda() -> None:
    if "CUDAExecutionProvider" in ort_adapter.backend_info()["devices"]:
        pytest.skip("this onnxruntime build has CUDA")


def _open(path: Path, **options: object):
    inputs, outputs = ort_adapter.describe(path)
    return ort_adapter.open_session(path, inputs, outputs, SessionOptions(**options))


def _cuda(policy: FallbackPolicy) -> dict[str, object]:
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    return {
        "device": Device.GPU,
        "fallback": policy,
        "runtime_options": RuntimeOptions(threads=1, execution_providers=providers),
    }


def test_open_session_fails_with_missing_cuda_provider_under_strict(onnx_file: Path, no_cuda) -> None:
    with pytest.raises(BackendUnavailableError, match=r"CUDAExecutionProvider.*onnxruntime-gpu"):
        _open(onnx_file, **_cuda(FallbackPolicy.STRICT))


def test_open_session_succeeds_with_missing_cuda_provider_under_record(
    onnx_file: Path, no_cuda, images, reference
) -> None:
    with _open(onnx_file, **_cuda(FallbackPolicy.RECORD)) as session:
        got = session.run({"image": images[3]})["logits"]
        info = session.info
    np.testing.assert_allclose(got, reference(images[3]), atol=1e-4, rtol=0)
    assert info.fell_back is True and "CUDAExecutionProvider" in info.fallback_reason
    assert info.details["providers"] == ["CPUExecutionProvider"] and info.actual_device == "CPU"
    assert info.requested_accelerator == "CUDAExecutionProvider, CPUExecutionProvider"
    assert info.threads == 1


def test_open_session_fails_with_gpu_device_and_no_gpu_provider_under_strict(onnx_file: Path, no_cuda) -> None:
    with pytest.raises(BackendUnavailableError, match=r"device GPU needs one of .*CUDAExecutionProvider"):
        _open(onnx_file, device=Device.GPU, fallback=FallbackPolicy.STRICT)


def test_open_session_succeeds_with_gpu_device_falling_back_to_cpu_under_record(onnx_file: Path, no_cuda) -> None:
    with _open(onnx_file, device=Device.GPU, fallback=FallbackPolicy.RECORD) as session:
        assert session.info.fell_back is True
        assert session.info.actual_accelerator == "CPUExecutionProvider"


def test_open_session_succeeds_with_cpu_provider_under_strict(onnx_file: Path) -> None:
    # The CPU EP listed explicitly is allowed even under strict: no fallback flag, no conflict.
    options = RuntimeOptions(execution_providers=("CPUExecutionProvider",))
    with _open(onnx_file, fallback=FallbackPolicy.STRICT, runtime_options=options) as session:
        assert session.info.fell_back is False
        assert session.info.details["cpu_fallback_disabled"] is False


@pytest.mark.parametrize(("kind", "precision"), [("qdq", Precision.INT8), ("dynamic", Precision.DYNAMIC_INT8)])
def test_open_session_succeeds_with_quantized_model_precision_from_the_graph(
    quantized_onnx, kind: str, precision: Precision, images, reference
) -> None:
    with _open(quantized_onnx[kind]) as session:
        got = session.run({"image": images[3]})["logits"]
        assert session.info.precision is precision
    assert (got.argmax(1) == reference(images[3]).argmax(1)).mean() >= 2 / 3


def test_open_session_succeeds_with_auto_device_on_every_available_provider(onnx_file: Path) -> None:
    with _open(onnx_file, device=Device.AUTO, fallback=FallbackPolicy.STRICT) as session:
        assert session.info.fell_back is False
        assert "CPUExecutionProvider" in session.info.details["providers"]
