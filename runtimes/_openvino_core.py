"""OpenVINO plumbing shared by the adapter and its localisation capability: the one Core,
choosing the device and compile config, reading and compiling models, port specs, batch
reshapes and precision detection.

Private to ``runtimes``; imports OpenVINO only when a function is called.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._common import accelerator_unavailable, load_failed, make_spec, model_content, require_file
from sdk.enums import Device, Precision
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError
from sdk.runtime import SessionOptions
from sdk.tensors import TensorSpec

NAME = "openvino"
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_QUANTIZED_TYPES = ("i8", "u8")
_core_cache: list[Any] = []


def ov() -> Any:
    """The openvino package (imported on first use: ``runtimes`` imports without it).

    Raises:
        ImportError: openvino is not installed.
    """
    import openvino

    return openvino


def core() -> Any:
    """The process's one ``openvino.Core``.

    Raises:
        ImportError: openvino is not installed.
    """
    # One Core per process: it owns the loaded device plugins, which are costly to load twice.
    if not _core_cache:
        _core_cache.append(ov().Core())
    return _core_cache[0]


def read(model_path: Path, model_bytes: Mapping[Path, bytes] | None = None) -> Any:
    """Read an IR (.xml + .bin) or an .onnx file; from ``model_bytes`` (both IR files) when given.

    Raises:
        InferenceError: a file is missing or OpenVINO cannot read it.
    """
    if model_bytes is not None:
        return _read_from_memory(model_path, model_bytes)
    require_file(model_path, NAME)
    if model_path.suffix == ".xml" and not model_path.with_suffix(".bin").exists():
        raise InferenceError(
            f"{NAME}: the weights {model_path.with_suffix('.bin')} of {model_path} are missing; "
            f"an IR is an .xml and a .bin side by side: re-package the bundle"
        )
    try:
        return core().read_model(str(model_path))
    except RuntimeError as e:
        raise load_failed(model_path, NAME, e) from e


def _read_from_memory(model_path: Path, model_bytes: Mapping[Path, bytes]) -> Any:
    content = model_content(model_path, model_bytes, NAME)
    assert content is not None  # model_bytes is given
    try:
        if model_path.suffix != ".xml":
            return core().read_model(content)  # ONNX: one file, no weights
        weights = model_content(model_path.with_suffix(".bin"), model_bytes, NAME)
        assert weights is not None
        # The Tensor copies the weights (shared_memory=False): the model owns them, whatever
        # happens to ``model_bytes`` afterwards.
        return core().read_model(content.decode("utf-8"), ov().Tensor(np.frombuffer(weights, dtype=np.uint8)))
    except (RuntimeError, UnicodeDecodeError) as e:
        raise load_failed(model_path, NAME, e) from e


def compile_model(ov_core: Any, model: Any, device: str, config: dict[str, Any], model_path: Path | None = None) -> Any:
    """Compile ``model`` for ``device`` with ``config``.

    Raises:
        InferenceError: the plugin refused the model or the config, naming both.
    """
    try:
        return ov_core.compile_model(model, device, config)
    except RuntimeError as e:
        raise InferenceError(
            f"{NAME} could not compile {model_path or 'the model'} for {device} with {config}: {e}; "
            f"check the device driver, or try device CPU"
        ) from e


def static_batch(model: Any) -> int | None:
    """The batch all inputs share when it is static, None when it is dynamic (or rank 0)."""
    batches = set()
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_dynamic:
            return None
        batches.add(shape[0].get_length())
    return batches.pop() if len(batches) == 1 else None


def with_batch(model: Any, batch: int) -> Any:
    """A copy of ``model`` reshaped to ``batch`` on every input."""
    copy = model.clone()
    shapes = {}
    for i, port in enumerate(copy.inputs):
        shape = port.get_partial_shape()
        shape[0] = batch
        shapes[i] = shape
    copy.reshape(shapes)
    return copy


def full_name(ov_core: Any, device: str) -> str | None:
    """The device's marketing name, None where the plugin does not say."""
    try:
        return str(ov_core.get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:
        return None


def compiled_property(compiled: Any, name: str) -> Any:
    """A compiled model's property as a plain value, None where the device lacks it."""
    # Not every device supports every property (AUTO, NPU); a missing one is reported as None.
    try:
        value = compiled.get_property(name)
    except RuntimeError:
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else value


def spec(port: Any) -> TensorSpec:
    """The TensorSpec of a model port (its first tensor name)."""
    shape = port.get_partial_shape()
    dims = [] if shape.rank.is_dynamic else [d.get_length() if d.is_static else -1 for d in shape]
    return make_spec(port.get_any_name(), dims, port.get_element_type().to_dtype())


def precision(model: Any, hint: str | None) -> Precision:
    """What the compiled model computes in, as far as its ops and precision hint tell."""
    weights = set()
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return Precision.INT8
        if kind == "Constant":
            weights.add(op.get_element_type().get_type_name())
    if weights & set(_QUANTIZED_TYPES):
        return Precision.DYNAMIC_INT8
    if hint == "f16" or "f16" in weights:
        return Precision.FP16
    if hint == "bf16":
        return Precision.MIXED
    return Precision.FP32


def pick_device(available: list[str], options: SessionOptions) -> tuple[str, bool, str | None]:
    """(device to compile for, whether it is the fallback, why) under the profile's fallback policy.

    Raises:
        BackendUnavailableError: the device is absent and the policy is strict, or the fallback
            device is absent too.
    """
    requested = options.device.value
    if options.device is Device.AUTO or _present(requested, available):
        return requested, False, None
    fallback = (options.fallback_device or Device.CPU).value
    reason = accelerator_unavailable(
        options,
        NAME,
        f"device {requested} is not available (available devices: {', '.join(available) or 'none'})",
        f"run on a machine with the {requested} and its driver",
    )
    if not _present(fallback, available):
        raise BackendUnavailableError(
            f"{NAME}: device {requested} is not available and neither is the fallback device "
            f"{fallback} (available: {', '.join(available)}); set fallback_device in the profile"
        )
    return fallback, True, f"{reason}; ran on {fallback}"


def _present(device: str, available: list[str]) -> bool:
    return any(d == device or d.startswith(device + ".") for d in available)


def compile_config(options: SessionOptions, device: str, *, cache: bool = True) -> dict[str, Any]:
    """The compile config the options ask for on ``device`` (``cache=False``: no model cache, whatever
    ``cache_dir`` says: for a model decrypted in memory, whose cached blob would be its plaintext on disk).

    Raises:
        ConfigError: the performance hint is not one OpenVINO knows.
    """
    ro = options.runtime_options
    config: dict[str, Any] = {}
    if ro.performance_hint:
        hint = ro.performance_hint.upper()
        if hint not in _HINTS:
            raise ConfigError(f"{NAME}: performance_hint {ro.performance_hint!r} is not one of {', '.join(_HINTS)}")
        config["PERFORMANCE_HINT"] = hint
    if ro.threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(ro.threads)
    if ro.inference_precision:
        config["INFERENCE_PRECISION_HINT"] = ro.inference_precision
    elif device == "CPU":
        # The CPU plugin defaults to bf16 on CPUs with AMX/AVX512-BF16, which breaks fp32
        # parity silently; a profile that wants bf16/f16 execution says so explicitly.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if ro.cache_dir and cache:
        config["CACHE_DIR"] = str(Path(ro.cache_dir).expanduser())
    return config
