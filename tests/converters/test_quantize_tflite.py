"""LiteRT quantization: every precision, per-layer sensitivity, keep-in-float and accuracy control.

One tiny Keras CNN is exported once per module; each mode's file is run with ai_edge_litert's
Interpreter and compared with Keras; bundles go through ``sdk.load``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("ai_edge_litert")
import tensorflow as tf  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import sdk  # noqa: E402
from converters.export import tflite as export_tflite  # noqa: E402
from converters.export.package import Lineage, PackageSpec, package  # noqa: E402
from converters.export.source import SourceModel, load_source  # noqa: E402
from converters.export.steps import ModelMetadata  # noqa: E402
from converters.quantize import tflite as qt  # noqa: E402
from converters.quantize.calibration import CalibrationSet, from_arrays  # noqa: E402
from sdk.bundle import Bundle  # noqa: E402
from sdk.enums import ModelFormat, OutputKind, Precision, Task  # noqa: E402
from sdk.errors import ConfigError, ConversionError  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402

pytestmark = [pytest.mark.litert, pytest.mark.tensorflow]

LABELS = ("apple", "banana", "cereal", "milk")
PREPROCESSING = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
METADATA = ModelMetadata(
    task=Task.IMAGE_CLASSIFICATION, output_kind=OutputKind.LOGITS, preprocessing=PREPROCESSING, labels=LABELS
)
MODES = {
    "fp16": qt.TFLiteQuantConfig(precision=Precision.FP16),
    "dynamic_int8": qt.TFLiteQuantConfig(precision=Precision.DYNAMIC_INT8),
    "int8-int8io": qt.TFLiteQuantConfig(precision=Precision.INT8, io_dtype="int8"),
    "int8-uint8io": qt.TFLiteQuantConfig(precision=Precision.INT8, io_dtype="uint8"),
    "int16x8-int16io": qt.TFLiteQuantConfig(precision=Precision.INT16X8, io_dtype="int16"),
}
# (input/output dtype, min cosine vs Keras, max file size and max weight bytes vs fp32). On a
# model this small each output channel's scale and zero point (12 bytes each for weights and
# bias) weigh as much as its weights, so the file shrinks ~2.5x while the weights shrink ~4x.
EXPECTED = {
    "fp16": ("float32", 0.9999, 0.55, 0.51),
    "dynamic_int8": ("float32", 0.98, 0.45, 0.35),  # tensors under 1024 weights stay float
    "int8-int8io": ("int8", 0.98, 0.45, 0.30),
    "int8-uint8io": ("uint8", 0.98, 0.45, 0.30),
    "int16x8-int16io": ("int16", 0.995, 0.50, 0.35),  # int16x8 biases are int64
}


def _tiny_cnn(extra: Any = None) -> keras.Model:
    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(64, 3, strides=2, padding="same", name="conv")(image)
    bn = keras.layers.BatchNormalization(name="bn")
    x = keras.layers.ReLU(name="relu")(bn(x))
    if extra is not None:
        x = extra(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    # Wide enough that weights, not the flatbuffer's fixed overhead, dominate the file size.
    x = keras.layers.Conv2D(256, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(len(LABELS), name="logits")(x)
    rng = np.random.default_rng(1)
    # Non-trivial statistics, so batch norm is really folded into the convolution.
    bn.set_weights([rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.1, 64), rng.normal(0, 0.1, 64), rng.uniform(0.5, 2, 64)])
    model = keras.Model(image, logits, name="tiny_cnn")
    # Untrained, every image gets the same top class; centring and scaling the logits on sample
    # images spreads the top-1 over the classes, so top-1 agreement is a real accuracy signal.
    features = keras.Model(image, x).predict(_smooth_images(64, seed=9), verbose=0)
    dense = model.get_layer("logits")
    kernel = dense.get_weights()[0] / (features @ dense.get_weights()[0]).std(axis=0)
    dense.set_weights([kernel, -features.mean(axis=0) @ kernel])
    return model


class PyScale(keras.layers.Layer):
    """Runs Python inside the graph: no converter can turn tf.py_function into a model op."""

    def call(self, x: Any) -> Any:
        y = tf.py_function(lambda t: t * 2.0, [x], tf.float32)
        y.set_shape(x.shape)
        return y


def _smooth_images(count: int, seed: int) -> np.ndarray:
    """Images like preprocessed photos: smooth colour fields in [-1, 1], not white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1.0, 1.0, (count, 4, 4, 3)).astype(np.float32)
    images = tf.image.resize(coarse, (32, 32), method="bicubic").numpy()
    noise = rng.normal(0.0, 0.05, images.shape)
    return np.clip(images + noise, -1.0, 1.0).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Tiny:
    model: Any
    source: SourceModel
    calibration: CalibrationSet
    images: np.ndarray
    reference: np.ndarray  # Keras logits for images
    fp32_file: Path
    files: dict[str, Path]
    steps: dict[str, Any]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    model = _tiny_cnn()
    work = tmp_path_factory.mktemp("quantize")
    source = load_source(model, work / "source")
    calibration = from_arrays(_smooth_images(32, seed=3), source="smooth")
    images = _smooth_images(24, seed=4)
    fp32_file = export_tflite.run(source, export_tflite.TFLiteExportConfig(), work / "fp32")
    files, steps = {}, {}
    for mode, config in MODES.items():
        files[mode], kept, steps[mode] = qt.run_step(source, config, work / mode, calibration)
        assert kept == []
    return Tiny(
        model=model,
        source=source,
        calibration=calibration,
        images=images,
        reference=model.predict(images, verbose=0),
        fp32_file=fp32_file,
        files=files,
        steps=steps,
    )


def _run_litert(path: Path, x: np.ndarray) -> tuple[np.ndarray, dict, dict]:
    """Float logits for ``x`` (quantized in, dequantized out as the model's I/O says)."""
    interpreter = Interpreter(model_path=str(path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(inp["index"], x.shape)
    interpreter.allocate_tensors()
    feed = x
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        feed = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
    interpreter.set_tensor(inp["index"], feed)
    interpreter.invoke()
    got = interpreter.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero = out["quantization"]
        got = (got.astype(np.float32) - zero) * scale
    return got, inp, out


def _weight_bytes(path: Path) -> int:
    """Bytes of the model's constant buffers (weights, biases), without quantization params."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(path.read_bytes(), 0))
    used = {t.buffer for g in model.subgraphs for t in g.tensors}
    return sum(len(model.buffers[i].data) for i in used if model.buffers[i].data is not None)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _top1_accuracy(tiny: Tiny) -> Any:
    """eval_fn: agreement with Keras' top-1 on the held-out images, as a fraction."""
    expected = tiny.reference.argmax(axis=1)
    return lambda path: float(np.mean(_run_litert(path, tiny.images)[0].argmax(axis=1) == expected))


@pytest.mark.parametrize("mode", list(MODES))
def test_run_succeeds_with_each_precision(tiny: Tiny, mode: str) -> None:
    io_dtype, min_cosine, max_size_ratio, max_weight_ratio = EXPECTED[mode]
    got, inp, out = _run_litert(tiny.files[mode], tiny.images)
    assert np.dtype(inp["dtype"]).name == io_dtype and np.dtype(out["dtype"]).name == io_dtype
    if io_dtype != "float32":
        for details in (inp, out):
            scale, zero = details["quantization"]
            assert scale > 0
            if io_dtype == "int16":
                assert zero == 0  # int16 activations are quantized symmetrically
    cosine = _cosine(got, tiny.reference)
    size_ratio = tiny.files[mode].stat().st_size / tiny.fp32_file.stat().st_size
    weight_ratio = _weight_bytes(tiny.files[mode]) / _weight_bytes(tiny.fp32_file)
    print(
        f"{mode}: {tiny.files[mode].stat().st_size} B, {size_ratio:.2f} of fp32 "
        f"(weights {weight_ratio:.2f}), cosine {cosine:.5f}"
    )
    assert cosine > min_cosine
    assert size_ratio < max_size_ratio and weight_ratio < max_weight_ratio
    if mode == "fp16":
        np.testing.assert_allclose(
            got, tiny.reference, atol=5e-3 * np.abs(tiny.reference).max()
        )  # fp16 weight rounding


def test_run_step_succeeds_with_calibration_hash_in_provenance(tiny: Tiny) -> None:
    record = tiny.steps["int8-int8io"]
    assert record.name == "quantize_tflite"
    assert record.config["precision"] == "int8" and record.config["io_dtype"] == "int8"
    assert record.config["calibration"]["sha256"] == tiny.calibration.sha256
    assert "calibration" not in tiny.steps["fp16"].config
    assert "tensorflow-cpu" in record.tool_versions or "tensorflow" in record.tool_versions


def test_sensitive_layers_succeeds_with_one_entry_per_quantized_layer(tiny: Tiny) -> None:
    layers = qt.sensitive_layers(tiny.source, tiny.calibration, samples=8)
    # conv+bn+relu fuse into one CONV_2D; then depthwise, 1x1 conv, mean, dense.
    assert sorted(r.op for r in layers) == ["CONV_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MEAN"]
    assert {r.name for r in layers} == {"relu+bn+conv", "dw", "pw", "pool", "logits"}
    scores = [r.score for r in layers]
    assert scores == sorted(scores, reverse=True)
    for r in layers:
        assert r.scale > 0 and math.isfinite(r.score) and r.score == r.metrics["rmse/scale"] > 0
        assert {"mean_squared_error", "max_abs_error", "mean_abs_error"} <= set(r.metrics)
        assert r.tensor in r.describe() and "rmse/scale" in r.describe()
    top2 = qt.sensitive_layers(tiny.source, tiny.calibration, samples=4, top_k=2)
    assert [r.name for r in top2] == [r.name for r in layers[:2]]


def test_package_succeeds_with_kept_in_float_bundle_loading_through_sdk(tiny: Tiny, tmp_path: Path) -> None:
    config = qt.TFLiteQuantConfig(precision=Precision.INT8, io_dtype="int8", denylisted_nodes=["dw"])
    path, kept, step = qt.run_step(tiny.source, config, tmp_path / "work", tiny.calibration)
    assert [k.layer for k in kept] == ["dw"] and kept[0].precision is Precision.FP32
    assert "rmse/scale" in kept[0].reason and "DEPTHWISE_CONV_2D" in kept[0].reason
    # int8 I/O around a float depthwise conv: the denylisted op computes in float32.
    assert any(np.dtype(t["dtype"]) == np.float32 for t in Interpreter(model_path=str(path)).get_tensor_details())
    bundle = package(
        path,
        out_dir=tmp_path / "tiny-tflite-int8",
        spec=PackageSpec(name="tiny", format=ModelFormat.TFLITE, precision=Precision.INT8, metadata=METADATA),
        lineage=Lineage(source=tiny.source, steps=(*tiny.source.lineage(True), step), kept_in_float=tuple(kept)),
    )
    reopened = Bundle.open(bundle.path)
    assert reopened.manifest.kept_in_float == tuple(kept) and reopened.manifest.precision is Precision.INT8
    assert reopened.manifest.provenance.steps[-1].config["denylisted_nodes"] == ["dw"]
    with sdk.load(bundle.path) as model:
        spec, out_spec = model.bundle.manifest.inputs[0], model.bundle.manifest.outputs[0]
        assert spec.dtype == "int8" and spec.quantization is not None
        got = model.run({spec.name: spec.quantization.quantize(tiny.images, "int8")})[out_spec.name]
        assert model.info.precision is Precision.INT8
    assert _cosine(out_spec.quantization.dequantize(got), tiny.reference) > 0.98


def test_run_succeeds_with_denylisted_op_type_and_float_io(tiny: Tiny, tmp_path: Path) -> None:
    config = qt.TFLiteQuantConfig(precision=Precision.INT8, denylisted_ops=["MEAN"])
    path, kept = qt.run(tiny.source, config, tmp_path, tiny.calibration)
    assert [k.layer for k in kept] == ["op:MEAN"]
    got, inp, out = _run_litert(path, tiny.images)
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    assert _cosine(got, tiny.reference) > 0.98


def test_quantize_with_budget_succeeds_with_zero_budget_forcing_denylisting(tiny: Tiny, tmp_path: Path) -> None:
    lines: list[str] = []
    result = qt.quantize_with_budget(
        tiny.source,
        tiny.calibration,
        _top1_accuracy(tiny),
        1.0,
        max_drop=0.0,
        out_dir=tmp_path,
        max_ignored=2,
        samples=8,
        log=lines.append,
    )
    # Plain int8 agrees with Keras on every image, yet a 0 pt budget still runs the fallback.
    plain, first = result.attempts
    assert plain.kept == () and plain.drop == 0.0 and not plain.met_budget
    assert first.kept == ("logits",) and first.met_budget and result.met_budget
    (record,) = result.kept_in_float
    assert record.layer == "logits" and record.precision is Precision.FP32
    assert "budget of 0 forces accuracy control" in record.reason
    assert "sensitivity rank 1 of 4" in record.reason and "rmse/scale" in record.reason
    assert sorted(p.name for p in tmp_path.iterdir()) == [qt.MODEL_FILE]
    assert any(
        np.dtype(t["dtype"]) == np.float32 for t in Interpreter(model_path=str(result.model_path)).get_tensor_details()
    )
    budget = result.step.config["budget"]
    assert budget["max_drop"] == 0.0 and len(budget["attempts"]) == 2 and budget["met_budget"]
    assert result.step.config["denylisted_nodes"] == ["logits"]
    assert len(lines) == len(result.attempts)


def test_quantize_with_budget_succeeds_with_budget_missed_keeping_the_most_accurate(tiny: Tiny, tmp_path: Path) -> None:
    scores = {"ptq": 0.80, "keep1": 0.83, "keep2": 0.86, "keep4": 0.85}  # fp32 scores 0.90
    result = qt.quantize_with_budget(
        tiny.source,
        tiny.calibration,
        lambda path: scores[path.parent.name],
        0.90,
        max_drop=1.0,
        out_dir=tmp_path,
        samples=4,
    )
    # Five ops, one of which always stays int8: 1, 2 and 4 in float.
    assert [len(a.kept) for a in result.attempts] == [0, 1, 2, 4]
    assert [a.drop for a in result.attempts] == [10.0, 7.0, 4.0, 5.0]
    assert not result.met_budget
    assert tuple(k.layer for k in result.kept_in_float) == result.attempts[2].kept
    assert all("dropped 10.00 pt (budget 1 pt)" in k.reason for k in result.kept_in_float)


def test_quantize_with_budget_succeeds_with_plain_int8_within_budget(tiny: Tiny, tmp_path: Path) -> None:
    result = qt.quantize_with_budget(
        tiny.source, tiny.calibration, lambda path: 0.5, 0.5, max_drop=1.0, out_dir=tmp_path, samples=4
    )
    assert result.met_budget and len(result.attempts) == 1 and result.kept_in_float == ()
    _, inp, _ = _run_litert(result.model_path, tiny.images)
    assert inp["dtype"] == np.int8


@pytest.mark.parametrize(
    "fp32_accuracy, eval_result, match",
    [
        (88.0, 0.5, "fp32_accuracy must be an accuracy fraction"),
        (0.88, 87.0, "eval_fn's result must be an accuracy fraction"),
    ],
)
def test_quantize_with_budget_fails_with_accuracy_in_percent(
    tiny: Tiny, tmp_path: Path, fp32_accuracy: float, eval_result: float, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        qt.quantize_with_budget(
            tiny.source,
            tiny.calibration,
            lambda path: eval_result,
            fp32_accuracy,
            max_drop=1.0,
            out_dir=tmp_path,
            samples=4,
        )


@pytest.mark.parametrize(
    "tensors, match",
    [
        pytest.param(np.zeros((4, 16, 16, 3), np.float32), r"\(16, 16, 3\).*takes \(32, 32, 3\)", id="wrong-size"),
        pytest.param(np.zeros((4, 32, 32, 1), np.float32), r"\(32, 32, 1\).*takes \(32, 32, 3\)", id="wrong-channels"),
        pytest.param(np.zeros((0, 32, 32, 3), np.float32), "calibration set is empty", id="empty"),
    ],
)
@pytest.mark.parametrize("entry", ["run", "sensitive_layers", "quantize_with_budget"])
def test_quantize_fails_with_bad_calibration_before_any_conversion(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tensors: np.ndarray, match: str, entry: str
) -> None:
    def no_conversion(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a converter was created before the calibration set was checked")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", no_conversion)
    calibration = from_arrays(tensors)
    out_dir = tmp_path / "out"
    calls = {
        "run": lambda: qt.run(tiny.source, MODES["int8-int8io"], out_dir, calibration),
        "sensitive_layers": lambda: qt.sensitive_layers(tiny.source, calibration),
        "quantize_with_budget": lambda: qt.quantize_with_budget(
            tiny.source, calibration, lambda p: 1.0, 1.0, max_drop=1.0, out_dir=out_dir
        ),
    }
    with pytest.raises(ConfigError, match=match):
        calls[entry]()
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "precision, calibration",
    [pytest.param(Precision.INT8, None, id="int8"), pytest.param(Precision.INT16X8, None, id="int16x8")],
)
def test_run_fails_with_missing_calibration_before_any_work(
    tiny: Tiny, tmp_path: Path, precision: Precision, calibration: None
) -> None:
    with pytest.raises(ConfigError, match=f"{precision.value} needs a calibration set"):
        qt.run(tiny.source, qt.TFLiteQuantConfig(precision=precision), tmp_path / "out", calibration)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "fields, match",
    [
        pytest.param(
            {"precision": Precision.FP16, "io_dtype": "int8"}, "io_dtype 'int8' does not go with fp16", id="fp16-int8io"
        ),
        pytest.param(
            {"precision": Precision.DYNAMIC_INT8, "io_dtype": "uint8"}, "io_dtype 'uint8'", id="dynamic-uint8io"
        ),
        pytest.param(
            {"precision": Precision.INT16X8, "io_dtype": "uint8"}, "use one of float32, int16", id="int16x8-uint8io"
        ),
        pytest.param({"precision": Precision.INT8, "io_dtype": "int16"}, "io_dtype 'int16'", id="int8-int16io"),
        pytest.param({"precision": Precision.FP32}, "fp32 comes from export_tflite", id="fp32"),
        pytest.param({"precision": "int4"}, "'int4' is not one of", id="unknown-precision"),
        pytest.param(
            {"precision": Precision.INT16X8, "denylisted_ops": ["MEAN"]}, "need precision int8", id="denylist-int16x8"
        ),
        pytest.param({"precision": Precision.INT8, "calibration_steps": 0}, "calibration_steps", id="zero-steps"),
        pytest.param({"precision": Precision.INT8, "allow_float_fallback": True}, "int16x8 only", id="fallback-int8"),
    ],
)
def test_config_fails_with_values_the_step_cannot_honour(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        qt.TFLiteQuantConfig(**fields)


def test_config_succeeds_with_precision_given_as_text() -> None:
    config = qt.TFLiteQuantConfig(precision="INT8", io_dtype="uint8", denylisted_nodes=["dw"])
    assert config.precision is Precision.INT8 and config.denylisted_nodes == ("dw",)


def test_run_fails_with_denylisted_node_not_in_model(tiny: Tiny, tmp_path: Path) -> None:
    config = qt.TFLiteQuantConfig(precision=Precision.INT8, denylisted_nodes=("no_such_layer",))
    with pytest.raises(ConfigError, match=r"'no_such_layer' names no quantized op; known tensors.*\(dw\)"):
        qt.run(tiny.source, config, tmp_path / "out", tiny.calibration)
    assert not (tmp_path / "out").exists()


def test_run_fails_with_uint8_io_and_first_layer_in_float(tiny: Tiny, tmp_path: Path) -> None:
    config = qt.TFLiteQuantConfig(precision=Precision.INT8, io_dtype="uint8", denylisted_nodes=("conv",))
    with pytest.raises(
        ConversionError, match=r"^quantize_tflite: .*uint8 I/O is not possible.*io_dtype='int8'"
    ) as caught:
        qt.run(tiny.source, config, tmp_path, tiny.calibration)
    assert caught.value.__cause__ is not None


def test_run_fails_with_unconvertible_layer(tmp_path: Path) -> None:
    source = load_source(_tiny_cnn(PyScale(name="py_scale")), tmp_path / "source")
    calibration = from_arrays(_smooth_images(4, seed=5))
    with pytest.raises(ConversionError) as caught:
        qt.run(source, MODES["int8-int8io"], tmp_path / "out", calibration)
    message = str(caught.value)
    assert message.startswith("quantize_tflite: ") and "layer(s) 'py_scale'" in message
    assert type(caught.value.__cause__).__name__ == "ConverterError"
    assert not (tmp_path / "out").exists()
