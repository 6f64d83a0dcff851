"""Hardware profiles load strictly; every built-in profile is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.enums import Device, FallbackPolicy, Precision, Runtime
from sdk.errors import ProfileError
from sdk.profiles import builtin_profiles_dir, list_profiles, load_profile

REQUIRED = {
    "x86-kiosk-cpu": (Runtime.OPENVINO, Device.CPU),
    "intel-core-ultra-npu": (Runtime.OPENVINO, Device.NPU),
    "android-arm64": (Runtime.LITERT, Device.CPU),
    "raspberry-pi-5": (Runtime.LITERT, Device.CPU),
    "coral-edgetpu": (Runtime.LITERT, Device.TPU),
    "onnxruntime-cpu": (Runtime.ONNXRUNTIME, Device.CPU),
    "server-gpu-reference": (Runtime.TENSORFLOW, Device.GPU),
}


def test_builtin_profiles_load_succeeds_with_every_device_class() -> None:
    profiles = {p.id: p for p in list_profiles()}
    for profile_id, (runtime, device) in REQUIRED.items():
        assert profiles[profile_id].runtime is runtime
        assert profiles[profile_id].device is device
    npu = profiles["intel-core-ultra-npu"]
    assert npu.fallback is FallbackPolicy.STRICT and npu.fallback_device is Device.CPU
    assert profiles["coral-edgetpu"].runtime_options.delegate == "libedgetpu.so.1"
    assert profiles["android-arm64"].runtime_options.threads == 4
    assert profiles["x86-kiosk-cpu"].tolerance(Precision.FP32).max_abs_diff == pytest.approx(1e-4)


def test_load_profile_succeeds_with_a_path(tmp_path: Path) -> None:
    text = (builtin_profiles_dir() / "onnxruntime-cpu.yaml").read_text()
    path = tmp_path / "onnxruntime-cpu.yaml"
    path.write_text(text)
    assert load_profile(path).id == "onnxruntime-cpu"


def _write(tmp_path: Path, name: str, edit: str, old: str = "fallback: record") -> Path:
    text = (builtin_profiles_dir() / "onnxruntime-cpu.yaml").read_text().replace("onnxruntime-cpu", name)
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.replace(old, edit))
    return path


def test_load_profile_fails_with_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "custom", "fallback: record\nturbo: true")
    with pytest.raises(ProfileError, match=r"custom.yaml: unknown key\(s\) 'turbo'"):
        load_profile(path)


def test_load_profile_fails_with_unknown_nested_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "custom", "threads: 4\n  turbo: true", old="threads: 4")
    with pytest.raises(ProfileError, match=r"custom.yaml.runtime_options: unknown key\(s\) 'turbo'"):
        load_profile(path)


def test_load_profile_fails_with_missing_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "custom", "")
    with pytest.raises(ProfileError, match="missing required key 'fallback'"):
        load_profile(path)


def test_load_profile_fails_with_bad_fallback_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "custom", "fallback: maybe")
    with pytest.raises(ProfileError, match="fallback 'maybe' is not one of: strict, record"):
        load_profile(path)


def test_load_profile_fails_with_id_not_matching_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "custom", "fallback: record")
    renamed = path.rename(tmp_path / "other.yaml")
    with pytest.raises(ProfileError, match="must match the file name 'other'"):
        load_profile(renamed)


def test_load_profile_fails_with_unknown_id() -> None:
    with pytest.raises(ProfileError, match="no hardware profile 'toaster'; known profiles: .*x86-kiosk-cpu"):
        load_profile("toaster")


def test_load_profile_fails_with_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: [unclosed\n")
    with pytest.raises(ProfileError, match="cannot read the profile YAML"):
        load_profile(path)
