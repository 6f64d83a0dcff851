"""OpenVINO specifics: device fallback policy, static batch, async requests, options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes import openvino as ov_adapter
from sdk.enums import Device, FallbackPolicy, Precision
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError, InputError
from sdk.profiles import RuntimeOptions
from sdk.runtime import SessionOptions

pytestmark = pytest.mark.openvino

try:
    ov_adapter.require_backend()
except ImportError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"OpenVINO not installed: {e}", allow_module_level=True)


def _devices() -> list[str]:
    return [d["device"] for d in ov_adapter.backend_info()["devices"]]


def _open(path: Path, **options: object):
    inputs, outputs = ov_adapter.describe(path)
    return ov_adapter.open_session(path, inputs, outputs, SessionOptions(**options))


@pytest.fixture()
def no_npu() -> None:
    if any(d.startswith("NPU") for d in _devices()):
        pytest.skip("this machine has an NPU")


def test_open_session_fails_with_absent_npu_under_strict(ir_file: Path, no_npu) -> None:
    with pytest.raises(BackendUnavailableError, match=r"NPU is not available.*CPU.*fallback: record"):
        _open(ir_file, device=Device.NPU, fallback=FallbackPolicy.STRICT)


def test_open_session_succeeds_with_absent_npu_under_record(ir_file: Path, no_npu, images, reference) -> None:
    with _open(ir_file, device=Device.NPU, fallback=FallbackPolicy.RECORD, fallback_device=None) as session:
        got = session.run({"image": images[3]})["output_0"]
        info = session.info
    np.testing.assert_allclose(got, reference(images[3]), atol=1e-4, rtol=0)
    assert info.fell_back is True and "NPU" in info.fallback_reason
    assert info.requested_device is Device.NPU and "CPU" in info.actual_device


def test_run_succeeds_with_other_batch_on_static_batch_model(static_ir_file: Path, images, reference) -> None:
    inputs, _ = ov_adapter.describe(static_ir_file)
    assert inputs[0].shape == (1, 32, 32, 3)
    with _open(static_ir_file) as session:
        for batch in (1, 3, 3, 1):
            got = session.run({"image": images[batch]})["output_0"]
            np.testing.assert_allclose(got, reference(images[batch]), atol=1e-4, rtol=0)


def test_run_async_succeeds_with_same_results_as_run(ir_file: Path, images) -> None:
    feeds = [{"image": images[3]}, {"image": images[1]}, {"image": images[3][::-1].copy()}] * 2
    options = RuntimeOptions(performance_hint="THROUGHPUT", num_requests=2)
    with _open(ir_file, runtime_options=options) as session:
        expected = [session.run(feed)["output_0"] for feed in feeds]
        got = session.run_async(feeds)
        assert session.info.details["performance_hint"] == "THROUGHPUT"
    assert len(got) == len(feeds)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g["output_0"], e, atol=1e-6, rtol=0)


def test_run_async_fails_with_wrong_shape_or_closed_session(ir_file: Path, images) -> None:
    session = _open(ir_file)
    with pytest.raises(InputError, match="image"):
        session.run_async([{"image": images[1][:, :8]}])
    session.close()
    with pytest.raises(InferenceError, match="closed"):
        session.run_async([{"image": images[1]}])


def test_open_session_succeeds_with_threads_and_expanded_cache_dir(
    ir_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    options = RuntimeOptions(threads=1, performance_hint="latency", cache_dir="~/ov-cache")
    with _open(ir_file, runtime_options=options) as session:
        info = session.info
    assert info.threads == 1
    assert info.details["cache_dir"] == str(tmp_path / "ov-cache")
    assert info.details["performance_hint"] == "LATENCY"
    assert (tmp_path / "ov-cache").is_dir()


def test_open_session_fails_with_unknown_performance_hint(ir_file: Path) -> None:
    with pytest.raises(ConfigError, match="FASTEST"):
        _open(ir_file, runtime_options=RuntimeOptions(performance_hint="FASTEST"))


def test_open_session_fails_with_missing_weights_file(ir_file: Path, tmp_path: Path) -> None:
    xml = tmp_path / "model.xml"
    xml.write_text(ir_file.read_text())
    with pytest.raises(InferenceError, match=r"model\.bin"):
        ov_adapter.describe(xml)


def test_backend_info_succeeds_with_full_device_names() -> None:
    devices = ov_adapter.backend_info()["devices"]
    assert any(d["device"] == "CPU" and d["full_name"] for d in devices)


@pytest.mark.parametrize(("kind", "precision"), [("qdq", Precision.INT8), ("dynamic", Precision.DYNAMIC_INT8)])
def test_open_session_succeeds_with_quantized_onnx_precision_from_the_graph(
    quantized_onnx, kind: str, precision: Precision
) -> None:
    with _open(quantized_onnx[kind]) as session:
        assert session.info.precision is precision
        assert session.info.details["inference_precision_hint"]
