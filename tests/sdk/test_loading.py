"""sdk.load and ImageClassifier: profiles, fallback policy, bad input through the public API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import sdk
from sdk.enums import Device, ModelFormat, Runtime
from sdk.errors import BackendUnavailableError, BundleError, ConfigError, InputError, ManifestError


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
