"""The same checks through every adapter and model format: specs, parity with Keras on two
batch sizes, input errors, load errors, manifest mismatches, closing."""

from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from sdk.enums import Layout, Precision, Runtime
from sdk.errors import InferenceError, InputError, ManifestError
from sdk.runtime import ADAPTERS, SessionOptions
from sdk.tensors import TensorSpec


@dataclasses.dataclass(frozen=True)
class Case:
    runtime: str
    model_fixture: str
    output_name: str
    garbage_name: str


def _case(runtime: str, fixture: str, output: str, garbage: str):  # -> pytest.param
    return pytest.param(
        Case(runtime, fixture, output, garbage), id=f"{runtime}-{fixture}", marks=getattr(pytest.mark, runtime)
    )


CASES = [
    _case("litert", "tflite_file", "output_0", "model.tflite"),
    _case("openvino", "ir_file", "output_0", "model.xml"),
    _case("openvino", "onnx_file", "logits", "model.onnx"),
    _case("onnxruntime", "onnx_file", "logits", "model.onnx"),
    _case("tensorflow", "keras_file", "logits", "model.keras"),
    _case("tensorflow", "saved_model_dir", "output_0", "model.keras"),
]


def _adapter(runtime: str) -> ModuleType:
    module = importlib.import_module(f"runtimes.{runtime}")
    try:
        module.require_backend()
    except ImportError as e:
        pytest.skip(f"{runtime} backend not installed: {e}")
    return module


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[Case, ModuleType, Path]:
    case = request.param
    module = _adapter(case.runtime)
    return case, module, request.getfixturevalue(case.model_fixture)


def _open(module: ModuleType, path: Path, **options: object):
    inputs, outputs = module.describe(path)
    return module.open_session(path, inputs, outputs, SessionOptions(**options))


def test_describe_succeeds_with_model_names_dynamic_batch_and_layout(case) -> None:
    c, module, path = case
    inputs, outputs = module.describe(path)
    assert inputs == [TensorSpec(name="image", shape=(-1, 32, 32, 3), dtype="float32", layout=Layout.NHWC)]
    assert outputs == [TensorSpec(name=c.output_name, shape=(-1, 5), dtype="float32", layout=Layout.NC)]


def test_run_succeeds_with_batch_1_and_3_matching_keras(case, images, reference) -> None:
    c, module, path = case
    with _open(module, path) as session:
        for batch in (1, 3, 1):  # back to 1: the resized/re-compiled state must follow
            got = session.run({"image": images[batch]})
            assert list(got) == [c.output_name]
            assert got[c.output_name].shape == (batch, 5)
            np.testing.assert_allclose(got[c.output_name], reference(images[batch]), atol=1e-4, rtol=0)
        info = session.info
    assert info.runtime is Runtime(c.runtime)
    assert info.precision is Precision.FP32
    assert info.runtime_version and info.backend and "CPU" in info.actual_device
    assert info.fell_back is False and info.fallback_reason is None


def test_run_fails_with_wrong_shape(case, images) -> None:
    _, module, path = case
    with _open(module, path) as session, pytest.raises(InputError, match="image"):
        session.run({"image": images[1][:, :16]})


def test_open_session_fails_with_garbage_model_file(case, tmp_path: Path) -> None:
    c, module, _ = case
    garbage = tmp_path / c.garbage_name
    garbage.write_bytes(b"\x00not a model\xff" * 64)
    garbage.with_suffix(".bin").write_bytes(b"\x00" * 16)
    spec = TensorSpec(name="image", shape=(-1, 32, 32, 3), dtype="float32")
    with pytest.raises(InferenceError, match=c.garbage_name) as error:
        module.open_session(garbage, [spec], [], SessionOptions())
    assert error.value.__cause__ is not None


def test_describe_fails_with_missing_model_file(case, tmp_path: Path) -> None:
    c, module, _ = case
    with pytest.raises(InferenceError, match="does not exist"):
        module.describe(tmp_path / c.garbage_name)


def test_open_session_fails_with_wrong_manifest_dtype(case) -> None:
    _, module, path = case
    inputs, outputs = module.describe(path)
    wrong = [dataclasses.replace(inputs[0], dtype="int8")]
    with pytest.raises(ManifestError, match=r"'image'.*int8.*float32"):
        module.open_session(path, wrong, outputs, SessionOptions())


def test_open_session_fails_with_unknown_manifest_output(case) -> None:
    _, module, path = case
    inputs, outputs = module.describe(path)
    wrong = [dataclasses.replace(outputs[0], name="probabilities")]
    with pytest.raises(ManifestError, match="'probabilities' is not in the model"):
        module.open_session(path, inputs, wrong, SessionOptions())


def test_run_fails_with_closed_session(case, images) -> None:
    _, module, path = case
    session = _open(module, path)
    session.close()
    session.close()  # closing twice is harmless
    with pytest.raises(InferenceError, match="closed"):
        session.run({"image": images[1]})


def test_context_manager_succeeds_with_closing_the_session(case, images) -> None:
    _, module, path = case
    with _open(module, path) as session:
        session.run({"image": images[1]})
    with pytest.raises(InferenceError, match="closed"):
        session.run({"image": images[1]})


def test_backend_info_succeeds_with_name_version_and_devices(case) -> None:
    c, module, _ = case
    info = module.backend_info()
    assert info["name"] == c.runtime and info["version"] and info["package"] and info["devices"]


def test_adapter_modules_succeed_with_no_backend_import_at_module_load() -> None:
    modules = sorted(entry.module for entry in ADAPTERS.values())
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'openvino', 'onnxruntime', 'onnx', 'ai_edge_litert', "
        "'tflite_runtime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
