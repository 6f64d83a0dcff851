"""sdk.load and ImageClassifier: profiles, fallback policy, bad input through the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sdk
from sdk.enums import Device, ModelFormat, Runtime
from sdk.errors import BackendUnavailableError, BundleError, ConfigError, InferenceError, InputError, ManifestError


def test_load_fails_with_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle directory"):
        sdk.load(tmp_path / "missing-bundle")


def test_load_fails_with_runtime_that_cannot_open_the_format(exported_bundles) -> None:
    with pytest.raises(ConfigError, match="runtime 'litert' cannot open it"):
        sdk.load(exported_bundles[ModelFormat.ONNX].path, runtime="litert")


def test_load_fails_with_absent_npu_under_strict_profile(exported_bundles) -> None:
    with pytest.raises(BackendUnavailableError, match="NPU"):
        sdk.load(exported_bundles[ModelFormat.OPENVINO].path, "intel-core-ultra-npu")


def test_load_succeeds_with_absent_npu_under_record_and_says_so(exported_bundles) -> None:
    bundle = exported_bundles[ModelFormat.OPENVINO]
    with sdk.load(bundle.path, "intel-core-ultra-npu", fallback="record") as model:
        assert model.info.requested_device is Device.NPU
        assert "CPU" in model.info.actual_device
        assert model.info.fell_back and "NPU" in (model.info.fallback_reason or "")
        spec = bundle.manifest.inputs[0]
        out = model.run({spec.name: np.zeros((1, 32, 32, 3), np.float32)})
        assert out[bundle.manifest.outputs[0].name].shape == (1, 4)


def test_load_succeeds_with_profile_runtime_options(exported_bundles) -> None:
    with sdk.load(exported_bundles[ModelFormat.TFLITE].path, "android-arm64") as model:
        assert model.info.runtime is Runtime.LITERT
        assert model.info.threads == 4


def test_load_fails_with_absent_edgetpu_delegate_under_strict_profile(exported_bundles) -> None:
    with pytest.raises(BackendUnavailableError, match="libedgetpu"):
        sdk.load(exported_bundles[ModelFormat.TFLITE].path, "coral-edgetpu")


def test_session_run_fails_with_wrong_shape_tensor(exported_bundles) -> None:
    bundle = exported_bundles[ModelFormat.ONNX]
    spec = bundle.manifest.inputs[0]
    with sdk.load(bundle.path) as model:
        with pytest.raises(InputError, match=r"has shape \(1, 64, 64, 3\), the model expects \(N, 32, 32, 3\)"):
            model.run({spec.name: np.zeros((1, 64, 64, 3), np.float32)})
        with pytest.raises(InputError, match="has dtype float64, the model expects float32"):
            model.run({spec.name: np.zeros((1, 32, 32, 3), np.float64)})
        with pytest.raises(InputError, match="missing"):
            model.run({"wrong_name": np.zeros((1, 32, 32, 3), np.float32)})


def test_load_fails_with_tampered_model_file(exported_bundles, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tampered"
    shutil.copytree(exported_bundles[ModelFormat.TFLITE].path, copy)
    model_file = copy / exported_bundles[ModelFormat.TFLITE].manifest.model_file
    data = bytearray(model_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        sdk.ImageClassifier.from_bundle(copy)


def test_load_fails_with_manifest_unknown_key(exported_bundles, tmp_path: Path) -> None:
    import json
    import shutil

    copy = tmp_path / "unknown-key"
    shutil.copytree(exported_bundles[ModelFormat.ONNX].path, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["accelerator"] = "fast"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="unknown key.*'accelerator'"):
        sdk.load(copy)


def test_classify_fails_with_text_file_as_image(exported_bundles, tmp_path: Path) -> None:
    text = tmp_path / "notes.jpg"
    text.write_text("this is a shopping list, not a photo\n")
    with sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.TFLITE].path) as classifier:
        with pytest.raises(InputError, match="not an image"):
            classifier.classify(text)


def test_classify_fails_with_truncated_jpeg(exported_bundles, sample_images, tmp_path: Path) -> None:
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    data = cv2.imencode(".jpg", image)[1].tobytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.OPENVINO].path) as classifier:
        with pytest.raises(InputError, match="truncated"):
            classifier.classify(cut)


def test_classify_succeeds_with_grayscale_and_rgba_png(exported_bundles, tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(1)
    gray = tmp_path / "gray.png"
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(gray), rng.integers(0, 255, (50, 70), dtype=np.uint8))
    cv2.imwrite(str(rgba), rng.integers(0, 255, (50, 70, 4), dtype=np.uint8))
    with sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.ONNX].path) as classifier:
        for path in (gray, rgba):
            result = classifier.classify(path, top_k=4)
            assert len(result.categories) == 4
            assert np.isclose(sum(c.score for c in result.categories), 1.0, atol=1e-4)


def test_classify_succeeds_with_camera_frame_array(exported_bundles, sample_images) -> None:
    import cv2

    frame_bgr = cv2.imread(str(sample_images[0]))
    with sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.TFLITE].path) as classifier:
        from_file = classifier.classify(sample_images[0])
        from_frame = classifier.classify(frame_bgr)
        from_rgb = classifier.classify(frame_bgr[:, :, ::-1].copy(), array_color="RGB")
    assert from_file.top1 == from_frame.top1 == from_rgb.top1


def test_classify_batch_fails_naming_the_bad_image(exported_bundles, sample_images, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.TFLITE].path) as classifier:
        with pytest.raises(InputError, match="image 1 of the batch"):
            classifier.classify_batch([sample_images[0], bad])


# --------------------------------------------------------------------------- ClassifierOptions


def test_classifier_options_succeeds_with_strings_parsed_to_enums() -> None:
    options = sdk.ClassifierOptions(profile="x86-kiosk-cpu", runtime="OpenVINO", device="cpu", fallback="Strict")
    assert options.runtime is Runtime.OPENVINO and options.device is Device.CPU
    assert options.fallback is sdk.FallbackPolicy.STRICT and options.top_k == 5 and options.threads is None


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("top_k", "3", r"ClassifierOptions\.top_k is '3'; pass a positive integer"),
        ("top_k", 0, r"ClassifierOptions\.top_k is 0"),
        ("top_k", True, r"ClassifierOptions\.top_k is True"),
        ("threads", -2, r"ClassifierOptions\.threads is -2; pass a positive integer"),
        ("threads", 2.0, r"ClassifierOptions\.threads is 2\.0"),
        ("runtime", "tflite", r"ClassifierOptions\.runtime 'tflite' is not one of: litert, openvino"),
        ("runtime", 3, r"ClassifierOptions\.runtime is a int \(3\); pass one of 'litert'"),
        ("device", "FPGA", r"ClassifierOptions\.device 'FPGA' is not one of: CPU, GPU"),
        ("fallback", "lenient", r"ClassifierOptions\.fallback 'lenient' is not one of: strict, record"),
        ("profile", 42, r"ClassifierOptions\.profile is 42; pass a profile id"),
        ("profile", "", r"ClassifierOptions\.profile is ''"),
    ],
)
def test_classifier_options_fails_with_wrong_value_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        sdk.ClassifierOptions(**{field: value})


def test_classifier_options_fails_when_changed_after_construction() -> None:
    import dataclasses

    options = sdk.ClassifierOptions(top_k=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.top_k = 4  # type: ignore[misc]


def test_classifier_create_succeeds_with_options_and_applies_them(exported_bundles, sample_images) -> None:
    options = sdk.ClassifierOptions(runtime="onnxruntime", threads=1, top_k=2)
    with sdk.ImageClassifier.create(exported_bundles[ModelFormat.ONNX].path, options) as classifier:
        assert classifier.options is options
        assert classifier.info.runtime is Runtime.ONNXRUNTIME and classifier.info.threads == 1
        assert len(classifier.classify(sample_images[0]).categories) == 2  # the options' top_k
        assert len(classifier.classify(sample_images[0], top_k=3).categories) == 3  # the call's wins
        with pytest.raises(InputError, match="top_k must be a positive integer, got '3'"):
            classifier.classify(sample_images[0], top_k="3")  # type: ignore[arg-type]


def test_classifier_from_bundle_succeeds_as_the_short_form_of_create(exported_bundles, sample_images) -> None:
    path = exported_bundles[ModelFormat.TFLITE].path
    with sdk.ImageClassifier.from_bundle(path, runtime="litert", top_k=1) as short:
        assert short.options == sdk.ClassifierOptions(runtime=Runtime.LITERT, top_k=1)
        from_short = short.classify(sample_images[1])
    with sdk.ImageClassifier.create(path, sdk.ClassifierOptions(runtime="litert", top_k=1)) as long:
        from_long = long.classify(sample_images[1])
    assert len(from_short.categories) == 1 and from_short.top1 == from_long.top1


def test_classifier_create_fails_with_options_of_another_type(exported_bundles) -> None:
    with pytest.raises(ConfigError, match="pass ClassifierOptions"):
        sdk.ImageClassifier.create(exported_bundles[ModelFormat.ONNX].path, {"top_k": 3})  # type: ignore[arg-type]


def test_classifier_from_bundle_fails_with_wrong_keyword_before_opening_anything(tmp_path: Path) -> None:
    # The options are checked first: a bad top_k is reported even for a bundle that does not exist.
    with pytest.raises(ConfigError, match=r"ClassifierOptions\.top_k"):
        sdk.ImageClassifier.from_bundle(tmp_path / "missing", top_k="3")  # type: ignore[arg-type]


def test_classify_fails_after_close(exported_bundles, sample_images) -> None:
    classifier = sdk.ImageClassifier.from_bundle(exported_bundles[ModelFormat.ONNX].path)
    classifier.close()
    classifier.close()  # closing twice is fine
    with pytest.raises(InferenceError, match="closed"):
        classifier.classify(sample_images[0])
