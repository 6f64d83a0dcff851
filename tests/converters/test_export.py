"""Plain export: a tiny Keras CNN -> fp32 bundles for LiteRT, OpenVINO, ONNX and the Keras reference.

The model is exported once per session; each format's file is then run with its own library
(not through the adapters: that is the runtimes' contract test) and compared with Keras.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
import tensorflow as tf  # noqa: E402

from converters.export import onnx as export_onnx  # noqa: E402
from converters.export import openvino as export_openvino  # noqa: E402
from converters.export import tflite as export_tflite  # noqa: E402
from converters.export.pipeline import export  # noqa: E402
from converters.export.source import load_source  # noqa: E402
from converters.export.steps import ModelMetadata, run_step  # noqa: E402
from sdk.bundle import Bundle, sha256_file  # noqa: E402
from sdk.enums import ModelFormat, OutputKind, Precision, Task  # noqa: E402
from sdk.errors import ConfigError, ConversionError  # noqa: E402
from sdk.manifest import MANIFEST_NAME, Manifest, Preprocessing  # noqa: E402

LABELS = ("apple", "banana", "cereal", "milk")
PREPROCESSING = Preprocessing(size=(32, 32), mean=(127.5, 127.5, 127.5), std=(127.5, 127.5, 127.5))
ALL_FORMATS = (ModelFormat.TFLITE, ModelFormat.OPENVINO, ModelFormat.ONNX, ModelFormat.KERAS)
TOLERANCE = 1e-4


class PyScale(keras.layers.Layer):
    """Runs Python inside the graph: no converter can turn tf.py_function into a model op."""

    def call(self, x: Any) -> Any:
        y = tf.py_function(lambda t: t * 2.0, [x], tf.float32)
        y.set_shape(x.shape)
        return y


@dataclasses.dataclass(frozen=True)
class Exported:
    model: Any
    out_dir: Path
    bundles: dict[ModelFormat, Bundle]
    progress: list[str]


@pytest.fixture(scope="session")
def exported(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    model = tiny_cnn()
    out_dir = tmp_path_factory.mktemp("export")
    lines: list[str] = []
    bundles = export(
        model,
        out_dir=out_dir,
        name="tiny",
        labels=LABELS,
        preprocessing=PREPROCESSING,
        progress=lines.append,
    )
    return Exported(model=model, out_dir=out_dir, bundles=bundles, progress=lines)


@pytest.fixture(scope="session")
def batch() -> np.ndarray:
    return np.random.default_rng(2).uniform(-1.0, 1.0, (3, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def bad_source(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_source(tiny_cnn(extra=PyScale(name="py_scale")), tmp_path_factory.mktemp("bad-source"))


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    return runner(image=x)["logits"]


def _run_openvino(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    # f32 explicitly: CPUs with bf16 units would otherwise run the fp32 model in bf16.
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled({"image": x})[compiled.output("logits")]


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


def _run_keras(path: Path, x: np.ndarray) -> np.ndarray:
    return keras.saving.load_model(path).predict(x, verbose=0)


def test_export_succeeds_with_every_format_reopening_and_round_tripping(exported: Exported) -> None:
    assert list(exported.bundles) == list(ALL_FORMATS)
    for fmt, bundle in exported.bundles.items():
        assert bundle.path == exported.out_dir / f"tiny-{fmt.value}-fp32"
        reopened = Bundle.open(bundle.path)
        manifest = reopened.manifest
        assert manifest == bundle.manifest
        assert Manifest.from_dict(manifest.to_dict()) == manifest
        assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
        assert (manifest.format, manifest.precision, manifest.task) == (fmt, Precision.FP32, Task.IMAGE_CLASSIFICATION)
        assert reopened.labels == LABELS
        assert manifest.preprocessing == PREPROCESSING
        assert [(t.name, t.shape, t.dtype, t.layout.value) for t in manifest.inputs] == [
            ("image", (-1, 32, 32, 3), "float32", "NHWC")
        ]
        assert [(t.name, t.shape[-1]) for t in manifest.outputs] == [("logits", 4)]
    # Only the bundles remain: the work dir (saved model, staging) is gone.
    assert sorted(p.name for p in exported.out_dir.iterdir()) == sorted(f"tiny-{f.value}-fp32" for f in ALL_FORMATS)


def test_export_succeeds_with_provenance_steps_versions_and_source_hash(exported: Exported) -> None:
    keras_bundle = exported.bundles[ModelFormat.KERAS]
    # The reference bundle holds the source byte for byte: its hash is the lineage root.
    source_sha256 = sha256_file(keras_bundle.model_path)
    expected_tools = {"tflite": "tensorflow-cpu", "openvino": "openvino", "onnx": "tf2onnx", "keras": "keras"}
    for fmt, bundle in exported.bundles.items():
        provenance = bundle.manifest.provenance
        assert provenance.source == "keras.Model 'tiny_cnn' (in memory)"
        assert provenance.source_sha256 == source_sha256
        assert provenance.created_utc.endswith("Z")
        names = [step.name for step in provenance.steps]
        needs_saved_model = fmt is not ModelFormat.KERAS
        assert names == ["save_keras", *(["export_savedmodel"] if needs_saved_model else []), f"export_{fmt.value}"]
        step = provenance.steps[-1]
        assert step.config["precision"] == "fp32"
        assert step.seconds is not None and step.seconds >= 0
        assert expected_tools[fmt.value] in step.tool_versions
        assert {"python", "numpy", "keras"} <= set(provenance.tool_versions)
    onnx_step = exported.bundles[ModelFormat.ONNX].manifest.provenance.steps[-1]
    assert onnx_step.config["opset"] == 17
    assert onnx_step.config["metadata"]["labels_count"] == 4


def test_export_succeeds_with_every_file_hashed(exported: Exported) -> None:
    for bundle in exported.bundles.values():
        on_disk = {p.name for p in bundle.path.iterdir()} - {MANIFEST_NAME}
        assert set(bundle.manifest.files) == on_disk
        for name, digest in bundle.manifest.files.items():
            assert sha256_file(bundle.path / name) == digest
    assert set(exported.bundles[ModelFormat.OPENVINO].manifest.files) == {"model.xml", "model.bin", "labels.txt"}


@pytest.mark.parametrize(
    "fmt, run",
    [
        pytest.param(ModelFormat.TFLITE, _run_tflite, marks=pytest.mark.litert, id="tflite"),
        pytest.param(ModelFormat.OPENVINO, _run_openvino, marks=pytest.mark.openvino, id="openvino"),
        pytest.param(ModelFormat.ONNX, _run_onnx, marks=pytest.mark.onnxruntime, id="onnx"),
        pytest.param(ModelFormat.KERAS, _run_keras, marks=pytest.mark.tensorflow, id="keras"),
    ],
)
def test_export_succeeds_with_outputs_matching_keras(
    exported: Exported, batch: np.ndarray, fmt: ModelFormat, run: Any
) -> None:
    expected = exported.model.predict(batch, verbose=0)
    actual = run(exported.bundles[fmt].model_path, batch)
    assert actual.shape == (3, 4)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.onnxruntime
def test_export_succeeds_with_onnx_metadata_and_dynamic_batch(exported: Exported) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(exported.bundles[ModelFormat.ONNX].model_path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["shelfedge.task"] == "image_classification"
    assert props["shelfedge.output_kind"] == "logits"
    assert json.loads(props["shelfedge.labels"]) == list(LABELS)
    assert json.loads(props["shelfedge.preprocessing"]) == PREPROCESSING.to_dict()
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.opset_import[0].version == 17


@pytest.mark.openvino
def test_export_succeeds_with_openvino_rt_info(exported: Exported) -> None:
    ov = pytest.importorskip("openvino")
    model = ov.Core().read_model(str(exported.bundles[ModelFormat.OPENVINO].model_path))
    assert model.get_rt_info(["shelfedge", "task"]).astype(str) == "image_classification"
    assert model.get_rt_info(["shelfedge", "labels_count"]).astype(str) == "4"
    assert json.loads(model.get_rt_info(["shelfedge", "preprocessing"]).astype(str)) == PREPROCESSING.to_dict()
    # fp32 weights: compress_to_fp16 was off.
    assert {op.get_element_type().get_type_name() for op in model.get_ops() if op.get_type_name() == "Constant"} <= {
        "f32",
        "i64",
        "i32",
    }


def test_export_succeeds_with_progress_lines(exported: Exported) -> None:
    for fmt in ALL_FORMATS:
        assert f"exporting {fmt.value}…" in exported.progress


def test_export_succeeds_with_keras_file_source(exported: Exported, tmp_path: Path) -> None:
    keras_file = exported.bundles[ModelFormat.KERAS].model_path
    bundles = export(
        keras_file, out_dir=tmp_path, formats=["tflite"], name="tiny", labels=LABELS, preprocessing=PREPROCESSING
    )
    provenance = bundles[ModelFormat.TFLITE].manifest.provenance
    assert provenance.source == str(keras_file)
    assert provenance.source_sha256 == sha256_file(keras_file)
    assert [s.name for s in provenance.steps] == ["export_savedmodel", "export_tflite"]


@pytest.fixture(scope="session")
def saved_model_dir(tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = load_source(tiny_cnn(), tmp_path_factory.mktemp("saved-model-source"))
    assert source.saved_model_dir is not None
    return source.saved_model_dir


def test_export_succeeds_with_savedmodel_source(
    tiny_cnn, saved_model_dir: Path, tmp_path: Path, batch: np.ndarray
) -> None:
    bundles = export(
        saved_model_dir, out_dir=tmp_path, formats=["tflite"], name="t", labels=LABELS, preprocessing=PREPROCESSING
    )
    bundle = bundles[ModelFormat.TFLITE]
    # The SavedModel is converted where it lies: no preparation steps in the lineage.
    assert [s.name for s in bundle.manifest.provenance.steps] == ["export_tflite"]
    assert bundle.manifest.provenance.source == str(saved_model_dir)
    # Its signature names the output like the Keras output, so every format does too.
    assert [t.name for t in bundle.manifest.outputs] == ["logits"]
    expected = tiny_cnn().predict(batch, verbose=0)
    np.testing.assert_allclose(_run_tflite(bundle.model_path, batch), expected, rtol=0, atol=TOLERANCE)


def test_export_fails_with_keras_format_from_savedmodel_source(saved_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'keras' needs a keras source.*drop 'keras'"):
        export(saved_model_dir, out_dir=tmp_path / "out", name="t", labels=LABELS, preprocessing=PREPROCESSING)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "given, match",
    [
        ("missing/model.keras", r"no such file or directory.*check the path"),
        ("not_a_model.keras", r"Keras cannot load it"),
        ("empty_dir", r"without saved_model.pb is not a SavedModel"),
        ("weights.h5", r"legacy HDF5"),
    ],
)
def test_load_source_fails_with_bad_path(tmp_path: Path, given: str, match: str) -> None:
    (tmp_path / "not_a_model.keras").write_text("not a zip")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "weights.h5").write_bytes(b"\x89HDF")
    path = tmp_path / given
    with pytest.raises(ConversionError, match=match) as caught:
        load_source(path, tmp_path / "work")
    assert str(path) in str(caught.value)
    assert not (tmp_path / "work").exists()


def test_load_source_fails_with_non_model_object(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"source is a dict, not a model"):
        load_source({"weights": []}, tmp_path)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"labels": LABELS[:3]}, r"3 labels given but output 'logits' has 4 classes"),
        ({"preprocessing": Preprocessing(size=(224, 224))}, r"preprocessing.size is \(224, 224\).*size=\(32, 32\)"),
        (
            {"formats": ["tflite", "coreml"]},
            r"format 'coreml' is not one of.*choose from tflite, openvino, onnx, keras",
        ),
        ({"name": "my model"}, r"name 'my model' must start"),
        ({"labels": ("apple", "apple", "milk", "tea")}, r"appear more than once"),
        ({"output_kind": OutputKind.EMBEDDING}, r"does not go with output_kind 'embedding'"),
        (
            {"configs": {ModelFormat.TFLITE: export_onnx.ONNXExportConfig()}},
            r"config is a ONNXExportConfig, expected TFLiteExportConfig",
        ),
    ],
)
def test_export_fails_with_bad_arguments_before_writing(
    tiny_cnn, tmp_path: Path, changes: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {"name": "tiny", "labels": LABELS, "preprocessing": PREPROCESSING, **changes}
    out_dir = tmp_path / "out"
    with pytest.raises(ConfigError, match=match):
        export(tiny_cnn(), out_dir=out_dir, **arguments)
    assert not out_dir.exists()


def test_export_fails_with_existing_bundle_and_overwrite_off(exported: Exported) -> None:
    with pytest.raises(ConfigError, match=r"already holds a bundle; remove it or pass overwrite=True"):
        export(
            exported.model,
            out_dir=exported.out_dir,
            name="tiny",
            labels=LABELS,
            preprocessing=PREPROCESSING,
            overwrite=False,
        )


def test_export_succeeds_with_existing_bundle_replaced(tiny_cnn, tmp_path: Path) -> None:
    arguments: dict[str, Any] = {"out_dir": tmp_path, "formats": ["keras"], "name": "t", "labels": LABELS}
    first = export(tiny_cnn(), preprocessing=PREPROCESSING, **arguments)[ModelFormat.KERAS]
    (first.path / "stale.txt").write_text("left over from the first export")
    second = export(tiny_cnn(), preprocessing=dataclasses.replace(PREPROCESSING, crop_fraction=1.0), **arguments)
    bundle = Bundle.open(second[ModelFormat.KERAS].path)
    assert bundle.manifest.preprocessing is not None and bundle.manifest.preprocessing.crop_fraction == 1.0
    assert not (bundle.path / "stale.txt").exists()


def test_export_fails_with_target_that_is_not_a_bundle(tiny_cnn, tmp_path: Path) -> None:
    target = tmp_path / "t-keras-fp32"
    target.mkdir()
    (target / "notes.txt").write_text("someone else's files")
    with pytest.raises(ConfigError, match=r"not empty and is not a bundle"):
        export(tiny_cnn(), out_dir=tmp_path, formats=["keras"], name="t", labels=LABELS, preprocessing=PREPROCESSING)
    assert (target / "notes.txt").exists()


def test_export_step_fails_with_precision_it_does_not_produce(bad_source: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"precision 'int8' is not produced.*quantize step"):
        export_tflite.run(bad_source, export_tflite.TFLiteExportConfig(precision=Precision.INT8), tmp_path)
    assert not any(tmp_path.iterdir())


def test_onnx_config_fails_with_too_old_opset() -> None:
    with pytest.raises(ConfigError, match=r"opset must be an integer >= 13"):
        export_onnx.ONNXExportConfig(opset=11)


_METADATA = ModelMetadata(
    task=Task.IMAGE_CLASSIFICATION, output_kind=OutputKind.LOGITS, preprocessing=PREPROCESSING, labels=LABELS
)


@pytest.mark.parametrize(
    "step, config, library_error",
    [
        pytest.param(export_tflite.STEP, export_tflite.TFLiteExportConfig(), "ConverterError", id="tflite"),
        pytest.param(
            export_openvino.STEP,
            export_openvino.OpenVINOExportConfig(metadata=_METADATA),
            "OpConversionFailure",
            id="openvino",
        ),
        # tf2onnx itself only logs the op and writes it through; the exporter's own check refuses it.
        pytest.param(export_onnx.STEP, export_onnx.ONNXExportConfig(metadata=_METADATA), "ValidationError", id="onnx"),
    ],
)
def test_export_step_fails_with_unconvertible_layer(
    bad_source: Any, tmp_path: Path, step: Any, config: Any, library_error: str
) -> None:
    with pytest.raises(ConversionError) as caught:
        run_step(step, bad_source, config, tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{step.name}: ")
    assert "layer(s) 'py_scale'" in message
    assert "EagerPyFunc" in message
    assert caught.value.__cause__ is not None
    assert type(caught.value.__cause__).__name__ == library_error
    assert not (tmp_path / "model.onnx").exists()
