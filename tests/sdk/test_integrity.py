"""Bundle integrity and the hardened manifest reader (issue 10, Deliver 2).

Each test builds a tiny bundle by hand (an 8x8 ONNX classifier: mean over pixels, then a 3xC
matrix; OpenVINO IR converted from it), breaks one thing the way an attacker or a bad copy
would, and checks the specific shelfedge error and what its message says.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from sdk.bundle import Bundle, write_bundle
from sdk.classifier import ClassifierOptions, ImageClassifier
from sdk.enums import Layout, ModelFormat, OutputKind, Precision, ResizeMode, Task
from sdk.errors import BundleError, ConfigError, InputError, ManifestError
from sdk.manifest import MANIFEST_NAME, Manifest, Preprocessing, Provenance
from sdk.tensors import TensorSpec

onnx = pytest.importorskip("onnx")
SIDE = 8
LABELS = ("apple", "banana", "milk")


def _onnx_model(classes: int = len(LABELS), dynamic_classes: bool = False):  # -> onnx.ModelProto
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(3 * classes, dtype=np.float32).reshape(3, classes) / 10
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[1, 2], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIDE, SIDE, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "C" if dynamic_classes else classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _manifest(fmt: ModelFormat, model_file: str, files: list[str], classes: int = len(LABELS)) -> Manifest:
    return Manifest(
        name="tiny",
        task=Task.IMAGE_CLASSIFICATION,
        format=fmt,
        precision=Precision.FP32,
        model_file=model_file,
        inputs=(TensorSpec(name="image", shape=(-1, SIDE, SIDE, 3), dtype="float32", layout=Layout.NHWC),),
        outputs=(TensorSpec(name="logits", shape=(-1, classes), dtype="float32", layout=Layout.NC),),
        output_kind=OutputKind.LOGITS,
        preprocessing=Preprocessing(
            size=(SIDE, SIDE), resize_mode=ResizeMode.STRETCH, mean=(127.5,) * 3, std=(127.5,) * 3
        ),
        labels_file="labels.txt",
        provenance=Provenance(source="hand-built", source_sha256="0" * 64, created_utc="2026-12-02T00:00:00Z"),
        files=dict.fromkeys([*files, "labels.txt"], ""),
    )


def _labels(directory: Path, labels: tuple[str, ...] = LABELS) -> None:
    (directory / "labels.txt").write_text("".join(f"{label}\n" for label in labels))


@pytest.fixture
def onnx_bundle(tmp_path: Path) -> Path:
    directory = tmp_path / "onnx-bundle"
    directory.mkdir()
    onnx.save_model(_onnx_model(), str(directory / "model.onnx"))
    _labels(directory)
    write_bundle(directory, _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx"]))
    return directory


def _external_onnx(directory: Path) -> None:
    directory.mkdir()
    onnx.save_model(
        _onnx_model(),
        str(directory / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    _labels(directory)


def _rewrite(bundle: Path, change: Callable[[dict], None]) -> None:
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    change(data)
    (bundle / MANIFEST_NAME).write_text(json.dumps(data))


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


# --- every file the model needs is listed -------------------------------------------------------


def test_bundle_open_fails_with_openvino_bin_left_out_of_the_manifest(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino")
    source = tmp_path / "model.onnx"
    onnx.save_model(_onnx_model(), str(source))
    directory = tmp_path / "ov-bundle"
    directory.mkdir()
    ov.save_model(ov.convert_model(str(source)), str(directory / "model.xml"), compress_to_fp16=False)
    _labels(directory)
    bundle = write_bundle(directory, _manifest(ModelFormat.OPENVINO, "model.xml", ["model.xml", "model.bin"]))
    assert bundle.model_files == ("model.xml", "model.bin")

    _rewrite(directory, lambda data: data["files"].pop("model.bin"))
    for verify in (True, False):  # refused always, not only when hashes are checked
        with pytest.raises(BundleError, match=r"loads 'model.bin', which the manifest does not list.*re-package"):
            Bundle.open(directory, verify=verify)


def test_bundle_open_fails_with_onnx_external_data_left_out_of_the_manifest(tmp_path: Path) -> None:
    directory = tmp_path / "onnx-external"
    _external_onnx(directory)
    bundle = write_bundle(directory, _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx", "weights.bin"]))
    assert bundle.model_files == ("model.onnx", "weights.bin")

    _rewrite(directory, lambda data: data["files"].pop("weights.bin"))
    with pytest.raises(BundleError, match=r"'model.onnx' loads 'weights.bin', which the manifest does not list"):
        Bundle.open(directory)


def test_bundle_open_succeeds_with_listed_onnx_external_data_and_classifies(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    directory = tmp_path / "onnx-external"
    _external_onnx(directory)
    write_bundle(directory, _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx", "weights.bin"]))
    with ImageClassifier.from_bundle(directory, runtime="onnxruntime", top_k=2) as classifier:
        result = classifier.classify(np.full((20, 30, 3), 255, np.uint8))
    # White pixels pool to (1, 1, 1): the scores are the weights' column sums, 0.9 < 1.2 < 1.5.
    assert [c.label for c in result.categories] == ["milk", "banana"]


def test_bundle_open_fails_with_onnx_external_data_outside_the_bundle(tmp_path: Path) -> None:
    from onnx.external_data_helper import set_external_data

    model = _onnx_model()
    tensor = model.graph.initializer[0]
    (tmp_path / "outside.bin").write_bytes(tensor.raw_data)
    set_external_data(tensor, location="../outside.bin")
    tensor.ClearField("raw_data")
    directory = tmp_path / "escape"
    directory.mkdir()
    onnx.save_model(model, str(directory / "model.onnx"))
    _labels(directory)
    with pytest.raises(BundleError, match=r"tensor 'w' reads external data from '../outside.bin', outside the bundle"):
        write_bundle(directory, _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx"]))


def test_inspect_names_the_files_the_model_loads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    directory = tmp_path / "onnx-external"
    _external_onnx(directory)
    write_bundle(directory, _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx", "weights.bin"]))
    assert main(["inspect", str(directory), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["model_files"] == ["model.onnx", "weights.bin"]
    assert payload["verified_files"] == ["labels.txt", "model.onnx", "weights.bin"]
    assert main(["inspect", str(directory)]) == 0
    text = capsys.readouterr().out
    assert "the sha256 of its 3 listed files verified" in text
    assert "the model loads model.onnx, weights.bin, all listed" in text


# --- no links, nothing outside the directory ---------------------------------------------------


@pytest.mark.parametrize("listed", [True, False])
def test_bundle_open_fails_with_a_symlink_inside(onnx_bundle: Path, tmp_path: Path, listed: bool) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("apple\nbanana\nmilk\n")
    if listed:  # a listed file swapped for a link to a file with the same bytes
        (onnx_bundle / "labels.txt").unlink()
        os.symlink(outside, onnx_bundle / "labels.txt")
    else:  # a link nobody lists, deep in a sub-directory
        (onnx_bundle / "extra").mkdir()
        os.symlink(outside, onnx_bundle / "extra" / "notes.txt")
    name = "labels.txt" if listed else "extra/notes.txt"
    with pytest.raises(BundleError, match=rf"'{name}' is a symbolic link; a bundle holds regular files only"):
        Bundle.open(onnx_bundle)


def test_bundle_open_fails_with_a_fifo_inside(onnx_bundle: Path) -> None:
    os.mkfifo(onnx_bundle / "pipe")
    with pytest.raises(BundleError, match=r"'pipe' is not a regular file \(a FIFO"):
        Bundle.open(onnx_bundle)


@pytest.mark.parametrize("name", ["../labels.txt", "/etc/passwd", "./labels.txt", "sub\\labels.txt", "a\x00b"])
def test_bundle_open_fails_with_a_listed_path_escaping_the_directory(onnx_bundle: Path, name: str) -> None:
    _rewrite(onnx_bundle, lambda data: data["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match=r"files: .* must be a path relative to the bundle directory") as caught:
        Bundle.open(onnx_bundle)
    assert isinstance(caught.value, ManifestError)  # the manifest is wrong, too


# --- the manifest reader's limits --------------------------------------------------------------


@pytest.mark.parametrize("depth", [70, 100_000])  # past the cap; past Python's recursion limit
def test_manifest_load_fails_with_deep_nesting(onnx_bundle: Path, depth: int) -> None:
    text = (onnx_bundle / MANIFEST_NAME).read_text()
    deep = "[" * depth + "]" * depth
    (onnx_bundle / MANIFEST_NAME).write_text(text.replace('"metrics": {}', f'"metrics": {{"x": {{"v": {deep}}}}}'))
    with pytest.raises(ManifestError, match=r"manifest.json: the manifest nests (more|deeper) than"):
        Bundle.open(onnx_bundle)


def test_manifest_load_fails_with_oversized_file(onnx_bundle: Path) -> None:
    _rewrite(onnx_bundle, lambda data: data["metrics"].update(padding={"text": "x" * (1 << 20)}))
    with pytest.raises(ManifestError, match=r"the manifest is [\d,]+ bytes, more than the 1,048,576 allowed"):
        Bundle.open(onnx_bundle)


def test_manifest_load_fails_with_5000_digit_number(onnx_bundle: Path) -> None:
    text = (onnx_bundle / MANIFEST_NAME).read_text().replace('"schema_version": 1', '"schema_version": ' + "9" * 5000)
    (onnx_bundle / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=r"an integer has 5,000 digits .* more than the 19 allowed"):
        Bundle.open(onnx_bundle)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_manifest_load_fails_with_non_finite_number(onnx_bundle: Path, literal: str) -> None:
    text = (onnx_bundle / MANIFEST_NAME).read_text().replace('"metrics": {}', f'"metrics": {{"x": {{"v": {literal}}}}}')
    (onnx_bundle / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=r"(NaN and Infinity are refused|overflows to infinity)"):
        Bundle.open(onnx_bundle)


def test_manifest_load_fails_with_duplicate_key(onnx_bundle: Path) -> None:
    text = (onnx_bundle / MANIFEST_NAME).read_text().replace('"name": "tiny"', '"name": "tiny", "name": "evil"')
    (onnx_bundle / MANIFEST_NAME).write_text(text)
    with pytest.raises(ManifestError, match=r"key 'name' appears twice in one object"):
        Bundle.open(onnx_bundle)


def test_manifest_load_fails_fast_with_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "manifest.json"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []
    reader = threading.Thread(target=lambda: _catch(lambda: Manifest.load(fifo), outcome), daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO as a manifest hung"
    assert isinstance(outcome[0], ManifestError)
    assert "not a regular file (a FIFO)" in str(outcome[0])


@pytest.mark.parametrize("path", ["/dev/zero", "."])
def test_manifest_load_fails_with_a_device_or_directory(path: str) -> None:
    with pytest.raises(ManifestError, match=r"the manifest is not a regular file \(a (character device|directory)\)"):
        Manifest.load(Path(path))


def test_manifest_save_fails_with_nan_metric(onnx_bundle: Path) -> None:
    manifest = Bundle.open(onnx_bundle).manifest.with_changes(metrics={"val": {"top1": float("nan")}})
    with pytest.raises(ManifestError, match=r"manifest 'tiny': .*finite numbers only"):
        manifest.save(onnx_bundle)


def _catch(call: Callable[[], object], into: list[BaseException]) -> None:
    try:
        call()
    except BaseException as e:
        into.append(e)


# --- preprocessing values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("std", [0, 1, 1], "std must not contain 0"),
        ("std", [-1, 1, 1], "std must be finite numbers from 0.0001 to 10000"),
        ("std", [1e-9, 1, 1], "std must be finite numbers"),
        ("mean", [1e300, 0, 0], r"mean must be finite numbers within ±10000"),
        ("size", [0, 8], "size must be .* integers from 1 to 4096"),
        ("size", [100_000, 8], "size must be .* integers from 1 to 4096"),
        ("crop_fraction", 1e-9, r"crop_fraction must be in \[0.25, 1\]"),
    ],
)
def test_manifest_load_fails_with_bad_preprocessing(onnx_bundle: Path, key: str, value: object, message: str) -> None:
    _rewrite(onnx_bundle, lambda data: data["preprocessing"].update({key: value}))
    with pytest.raises(ManifestError, match=rf"preprocessing: {message}"):
        Bundle.open(onnx_bundle)


def test_preprocessing_fails_with_nan_or_inf_built_in_code() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="mean must be finite"):
            Preprocessing(size=(8, 8), mean=(bad, 0.0, 0.0))
        with pytest.raises(ValueError, match="std must be finite"):
            Preprocessing(size=(8, 8), std=(1.0, bad, 1.0))


def test_preprocess_fails_with_values_overflowing_float16() -> None:
    from sdk.preprocess import preprocess

    pre = Preprocessing(size=(SIDE, SIDE), resize_mode=ResizeMode.STRETCH, std=(1e-3, 1.0, 1.0))
    spec = TensorSpec(name="image", shape=(1, SIDE, SIDE, 3), dtype="float16", layout=Layout.NHWC)
    with pytest.raises(ConfigError, match="overflows float16 for some pixel values; fix the manifest's preprocessing"):
        preprocess(_image(), pre, spec)


# --- classifier arguments and the label count ---------------------------------------------------


@pytest.mark.parametrize("top_k", ["3", 2.5, [3], True, 0, -1])
def test_classify_fails_with_top_k_of_wrong_type_as_input_error(onnx_bundle: Path, top_k: object) -> None:
    pytest.importorskip("onnxruntime")
    with ImageClassifier.from_bundle(onnx_bundle, runtime="onnxruntime") as classifier:
        with pytest.raises(InputError, match="top_k must be a positive integer"):
            classifier.classify(_image(), top_k=top_k)  # type: ignore[arg-type]
        assert len(classifier.classify(_image(), top_k=np.int64(2)).categories) == 2
    with pytest.raises(ConfigError, match="ClassifierOptions.top_k"):
        ClassifierOptions(top_k=top_k)  # type: ignore[arg-type]


def test_classify_fails_when_a_dynamic_output_disagrees_with_the_labels(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    directory = tmp_path / "dynamic"
    directory.mkdir()
    onnx.save_model(_onnx_model(classes=4, dynamic_classes=True), str(directory / "model.onnx"))
    _labels(directory)  # three labels, four classes
    manifest = _manifest(ModelFormat.ONNX, "model.onnx", ["model.onnx"], classes=-1)
    write_bundle(directory, manifest)  # the count is unknown until the model runs
    with ImageClassifier.from_bundle(directory, runtime="onnxruntime") as classifier:
        with pytest.raises(ManifestError, match=r"returns 4 scores per image but 'labels.txt' has 3 labels"):
            classifier.classify(_image())
