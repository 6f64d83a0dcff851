"""Fixtures for the adapter tests: one tiny Keras CNN, exported once per session to every format.

Each format is its own session fixture, so a run that selects one backend only pays for
the exports it needs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SIZE = 32
CLASSES = 5
BACKEND_MARKERS = {
    "litert": "needs the LiteRT runtime (ai-edge-litert, tflite-runtime or tensorflow)",
    "openvino": "needs OpenVINO",
    "onnxruntime": "needs ONNX Runtime",
    "tensorflow": "needs TensorFlow / Keras",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in BACKEND_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture(scope="session")
def rt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime_models")


@pytest.fixture(scope="session")
def rt_keras_model():  # -> keras.Model
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    keras.utils.set_random_seed(11)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(CLASSES, name="logits")(x)
    model = keras.Model(inputs, outputs, name="rt_tiny_cnn")
    # Non-trivial BN statistics, so every exporter has real numbers to fold.
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.linspace(-0.3, 0.3, 8).astype("float32"))
    bn.moving_variance.assign(np.linspace(0.5, 2.0, 8).astype("float32"))
    return model


@pytest.fixture(scope="session")
def reference(rt_keras_model) -> Callable[[np.ndarray], np.ndarray]:
    """The Keras model's own output for a batch: what every adapter must match."""
    return lambda batch: np.asarray(rt_keras_model(batch, training=False))


@pytest.fixture(scope="session")
def images() -> dict[int, np.ndarray]:
    """Batch size -> a float32 NHWC batch in [-1, 1]."""
    rng = np.random.default_rng(5)
    return {n: rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype(np.float32) for n in (1, 3)}


@pytest.fixture(scope="session")
def keras_file(rt_keras_model, rt_dir: Path) -> Path:
    path = rt_dir / "model.keras"
    rt_keras_model.save(path)
    return path


@pytest.fixture(scope="session")
def saved_model_dir(rt_keras_model, rt_dir: Path) -> Path:
    path = rt_dir / "saved_model"
    rt_keras_model.export(str(path), format="tf_saved_model", verbose=False)
    return path


@pytest.fixture(scope="session")
def tflite_file(saved_model_dir: Path, rt_dir: Path) -> Path:
    import tensorflow as tf

    path = rt_dir / "model.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir)).convert())
    return path


@pytest.fixture(scope="session")
def tflite_variants(saved_model_dir: Path, rt_dir: Path, images) -> dict[str, Path]:
    """fp16-weight and full-int8 (int8 in/out) .tflite files, for precision and quantization."""
    import tensorflow as tf

    def representative():
        for i in range(4):
            yield [np.random.default_rng(i).uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)]

    fp16 = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    fp16.optimizations = [tf.lite.Optimize.DEFAULT]
    fp16.target_spec.supported_types = [tf.float16]
    int8 = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir))
    int8.optimizations = [tf.lite.Optimize.DEFAULT]
    int8.representative_dataset = representative
    int8.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    int8.inference_input_type = tf.int8
    int8.inference_output_type = tf.int8
    paths = {"fp16": rt_dir / "fp16.tflite", "int8": rt_dir / "int8.tflite"}
    paths["fp16"].write_bytes(fp16.convert())
    paths["int8"].write_bytes(int8.convert())
    return paths


@pytest.fixture(scope="session")
def onnx_file(rt_keras_model, rt_dir: Path) -> Path:
    tf2onnx = pytest.importorskip("tf2onnx")
    import tensorflow as tf

    path = rt_dir / "model.onnx"
    signature = (tf.TensorSpec((None, SIZE, SIZE, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(rt_keras_model, input_signature=signature, opset=17, output_path=str(path))
    return path


@pytest.fixture(scope="session")
def ir_file(saved_model_dir: Path, rt_dir: Path) -> Path:
    ov = pytest.importorskip("openvino")
    path = rt_dir / "model.xml"
    # convert_model sends usage telemetry from background threads and subprocesses unless it
    # thinks it runs in CI; offline that stalls the rest of the test process for seconds.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CI", "true")
        ov.save_model(ov.convert_model(str(saved_model_dir)), str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="session")
def static_ir_file(ir_file: Path, rt_dir: Path) -> Path:
    """The IR with its batch fixed at 1, as converters emit for NPUs."""
    import openvino as ov

    model = ov.Core().read_model(str(ir_file))
    model.reshape([1, SIZE, SIZE, 3])
    path = rt_dir / "static.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


@pytest.fixture(scope="session")
def quantized_onnx(onnx_file: Path, rt_dir: Path) -> dict[str, Path]:
    """The ONNX model quantized by ONNX Runtime: static QDQ int8 and dynamic (weights) int8."""
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(2)
            self._feeds = iter([{"image": rng.uniform(-1, 1, (1, SIZE, SIZE, 3)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    paths = {"qdq": rt_dir / "qdq.onnx", "dynamic": rt_dir / "dynamic.onnx"}
    quantization.quantize_static(str(onnx_file), str(paths["qdq"]), Reader(), quant_format=quantization.QuantFormat.QDQ)
    quantization.quantize_dynamic(str(onnx_file), str(paths["dynamic"]), weight_type=quantization.QuantType.QInt8)
    return paths
