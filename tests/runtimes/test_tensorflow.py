"""TensorFlow reference specifics: GPU when present, else a recorded CPU fp32 fallback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtimes import tensorflow as tf_adapter
from sdk.enums import Device, FallbackPolicy
from sdk.errors import BackendUnavailableError, InferenceError
from sdk.runtime import SessionOptions

pytestmark = pytest.mark.tensorflow

try:
    tf_adapter.require_backend()
except ImportError as e:  # pragma: no cover - depends on the machine
    pytest.skip(f"TensorFlow not installed: {e}", allow_module_level=True)


@pytest.fixture()
def no_gpu() -> None:
    if len(tf_adapter.backend_info()["devices"]) > 1:
        pytest.skip("this machine has a GPU")


def _open(path: Path, **options: object):
    inputs, outputs = tf_adapter.describe(path)
    return tf_adapter.open_session(path, inputs, outputs, SessionOptions(**options))


def test_open_session_succeeds_with_cpu_reference_when_no_gpu(keras_file: Path, no_gpu, images, reference) -> None:
    with _open(keras_file, device=Device.GPU, fallback=FallbackPolicy.RECORD) as session:
        got = session.run({"image": images[3]})["logits"]
        info = session.info
    np.testing.assert_allclose(got, reference(images[3]), atol=1e-5, rtol=0)
    assert info.fell_back is True and info.fallback_reason == "no GPU present: CPU fp32 reference"
    assert info.requested_device is Device.GPU and info.actual_device == "CPU"


def test_open_session_fails_with_no_gpu_under_strict(saved_model_dir: Path, no_gpu) -> None:
    with pytest.raises(BackendUnavailableError, match="no GPU present"):
        _open(saved_model_dir, device=Device.GPU, fallback=FallbackPolicy.STRICT)


def test_describe_fails_with_savedmodel_dir_without_model(tmp_path: Path) -> None:
    with pytest.raises(InferenceError, match="could not load") as error:
        tf_adapter.describe(tmp_path)
    assert error.value.__cause__ is not None
