"""The shelfedge CLI, run in-process (and once through the installed console script)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from cli import main
from sdk.enums import ModelFormat


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out)


def test_cli_devices_succeeds_with_json_listing_every_backend(capsys) -> None:
    code, payload = _json(capsys, ["devices", "--json"])
    assert code == 0
    for runtime in ("litert", "openvino", "onnxruntime"):
        assert payload["runtimes"][runtime]["available"] is True
        assert payload["runtimes"][runtime]["version"]
    assert payload["runtimes"]["openvino"]["devices"][0]["device"] == "CPU"
    assert "CPUExecutionProvider" in payload["runtimes"]["onnxruntime"]["devices"]
    assert isinstance(payload["gpu_present"], bool)


def test_cli_profiles_succeeds_with_table_and_json(capsys) -> None:
    assert main(["profiles"]) == 0
    assert "coral-edgetpu" in capsys.readouterr().out
    code, payload = _json(capsys, ["profiles", "android-arm64", "--json"])
    assert code == 0 and payload["runtime"] == "litert"


def test_cli_inspect_succeeds_with_verified_bundle(capsys, exported_bundles) -> None:
    code, payload = _json(capsys, ["inspect", str(exported_bundles[ModelFormat.OPENVINO].path), "--json"])
    assert code == 0 and payload["verified"] is True
    assert payload["manifest"]["format"] == "openvino"


def test_cli_classify_succeeds_with_json_naming_runtime_device_and_latency(
    capsys, exported_bundles, sample_images
) -> None:
    top1 = set()
    for fmt, runtime in ((ModelFormat.TFLITE, "litert"), (ModelFormat.OPENVINO, "openvino"),
                         (ModelFormat.ONNX, "onnxruntime")):
        code, payload = _json(capsys, ["classify", str(exported_bundles[fmt].path), str(sample_images[0]),
                                       "--runtime", runtime, "--json"])
        assert code == 0
        assert payload["ran"]["runtime"] == runtime and payload["ran"]["actual_device"]
        timings = payload["results"][0]["timings"]
        assert set(timings) >= {"preprocess_ms", "inference_ms", "postprocess_ms"}
        top1.add(payload["results"][0]["categories"][0]["label"])
    assert len(top1) == 1


def test_cli_classify_fails_with_exit_code_and_message_for_missing_bundle(capsys, tmp_path: Path) -> None:
    code = main(["classify", str(tmp_path / "nope"), "x.jpg", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 2 and payload["error"] == "BundleError"


@pytest.mark.skipif(shutil.which("shelfedge") is None, reason="shelfedge console script not installed")
def test_console_script_succeeds_with_devices_json() -> None:
    done = subprocess.run(["shelfedge", "devices", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runtimes"]["onnxruntime"]["available"] is True
