"""ONNX Runtime adapter: execution providers in order, CPU fallback only where the policy allows.

Precision is read from the graph (needs the ``onnx`` package, part of the same extra):
QuantizeLinear / QLinear* / QDQ ops -> int8, ConvInteger / MatMulInteger without them ->
dynamic_int8, float16 inputs or initializers -> fp16, else fp32.

Threads: ``InferenceSession.run`` is thread-safe (ONNX Runtime guarantees concurrent Run calls
on one session; each call has its own output buffers), so a session is shared as is: calls from
several threads run in parallel, at most ``SessionOptions.concurrency`` at once when it is set.
The DirectML provider is the exception ONNX Runtime documents: one Run at a time, so a session
with it admits one call at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._common import (
    accelerator_unavailable,
    check_specs,
    load_failed,
    make_spec,
    model_content,
    require_file,
    require_single_input,
)
from runtimes._onnx_layers import layer_outputs
from runtimes._onnx_precision import graph_precision
from runtimes._pool import Concurrency, PooledSession
from sdk.enums import Device, FallbackPolicy, Runtime
from sdk.errors import InferenceError
from sdk.runtime import BareStep, BaseSession, Session, SessionInfo, SessionOptions
from sdk.tensors import TensorSpec

__all__ = [
    "OnnxRuntimeSession",
    "backend_info",
    "bare_step",
    "describe",
    "layer_outputs",
    "open_session",
    "require_backend",
]

_NAME = "onnxruntime"
_CPU = "CPUExecutionProvider"
# Candidate providers per device, in order of preference, when the profile names none.
_PROVIDERS_FOR_DEVICE: dict[Device, tuple[str, ...]] = {
    Device.CPU: (_CPU,),
    # TensorRT is left to an explicit execution_providers list: onnxruntime-gpu lists it as
    # available even where TensorRT itself is not installed.
    Device.GPU: (
        "CUDAExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "CoreMLExecutionProvider",
    ),
    Device.NPU: (
        "OpenVINOExecutionProvider",
        "QNNExecutionProvider",
        "VitisAIExecutionProvider",
        "CoreMLExecutionProvider",
    ),
    Device.TPU: (),
}
# The device class a provider runs on, for SessionInfo.actual_device; the OpenVINO EP
# runs wherever its device_type says, so it is reported with the requested device.
_DEVICE_OF_PROVIDER = {
    _CPU: "CPU",
    "TensorrtExecutionProvider": "GPU",
    "CUDAExecutionProvider": "GPU",
    "ROCMExecutionProvider": "GPU",
    "MIGraphXExecutionProvider": "GPU",
    "DmlExecutionProvider": "GPU",
    "QNNExecutionProvider": "NPU",
    "VitisAIExecutionProvider": "NPU",
    "CoreMLExecutionProvider": "ANE/GPU",
}
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
}


def _ort() -> Any:
    import onnxruntime

    return onnxruntime


def require_backend() -> None:
    """Import ONNX Runtime.

    Raises:
        ImportError: the onnxruntime package is not installed.
    """
    _ort()


def backend_info() -> dict[str, Any]:
    """Name, version and the execution providers this build offers.

    Raises:
        ImportError: the onnxruntime package is not installed.
    """
    ort = _ort()
    return {
        "name": _NAME,
        "version": ort.__version__,
        "package": "onnxruntime",
        "devices": list(ort.get_available_providers()),
        "build_device": ort.get_device(),
    }


def describe(
    model_path: Path, model_bytes: Mapping[Path, bytes] | None = None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the model's input and output specs (from ``model_bytes[model_path]`` when given).

    Raises:
        InferenceError: the file is missing or not a readable ONNX model.
    """
    content = model_content(Path(model_path), model_bytes, _NAME)
    session = _load(Path(model_path), [_CPU], _ort().SessionOptions(), content=content)
    return _specs(session.get_inputs(), model_path), _specs(session.get_outputs(), model_path)


def open_session(
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: SessionOptions,
    model_bytes: Mapping[Path, bytes] | None = None,
) -> BaseSession:
    """Create an InferenceSession with the profile's execution providers (from the bytes
    ``model_bytes[model_path]`` when given, never from the file).

    Raises:
        ManifestError: a manifest spec does not match the model.
        BackendUnavailableError: a requested provider is not in this build and the policy is strict.
        InferenceError: the model could not be loaded.
    """
    model_path = Path(model_path)
    ort = _ort()
    content = model_content(model_path, model_bytes, _NAME)
    ro = options.runtime_options
    available = list(ort.get_available_providers())
    requested, providers, reason = _choose_providers(options, available)
    strict = options.fallback is FallbackPolicy.STRICT
    if not strict and _CPU not in providers:
        providers.append(_CPU)  # ops the accelerator cannot take run on the CPU
    # Strict means no op may silently run on the CPU unless the profile lists the CPU EP
    # itself (ORT rejects the flag together with an explicit CPU EP).
    cpu_fallback_disabled = strict and _CPU not in providers

    session_options = _session_options(ro.threads, cpu_fallback_disabled)
    provider_options = [
        {"device_type": options.device.value}
        if p == "OpenVINOExecutionProvider" and options.device is not Device.AUTO
        else {}
        for p in providers
    ]
    try:
        session = _load(model_path, providers, session_options, provider_options, content)
    except InferenceError as e:
        if not cpu_fallback_disabled:
            raise
        raise InferenceError(
            f"{e}; or some ops need the CPU, which this strict profile forbids "
            f"(session.disable_cpu_ep_fallback): use 'fallback: record' to allow it"
        ) from e
    model_inputs = _specs(session.get_inputs(), model_path)
    model_outputs = _specs(session.get_outputs(), model_path)
    in_specs = check_specs(model_path, "input", inputs, model_inputs)
    out_specs = check_specs(model_path, "output", outputs, model_outputs)
    actual = list(session.get_providers())
    reason = _dropped_providers(options, providers, actual, reason)
    precision, precision_source = graph_precision(model_path, model_inputs, content)
    info = SessionInfo(
        runtime=Runtime.ONNXRUNTIME,
        runtime_version=ort.__version__,
        backend="onnxruntime",
        requested_device=options.device,
        actual_device=_actual_device(actual[0], options.device) if actual else "CPU",
        precision=precision,
        threads=ro.threads,
        requested_accelerator=", ".join(requested) or None,
        actual_accelerator=", ".join(actual),
        fell_back=reason is not None,
        fallback_reason=reason,
        details={
            "providers": actual,
            "available_providers": list(available),
            "cpu_fallback_disabled": cpu_fallback_disabled,
            "precision_source": precision_source,
            "model": str(model_path),
        },
    )
    feeds = [(given.name, spec.name) for given, spec in zip(inputs, in_specs, strict=True)]
    fetches = [(given.name, spec.name) for given, spec in zip(outputs, out_specs, strict=True)]
    policy = _concurrency(serial="DmlExecutionProvider" in actual)
    opened = OnnxRuntimeSession(
        session, feeds, fetches, inputs, outputs, info, policy=policy, requested=options.concurrency
    )
    opened.model_content = content
    return opened


def _dropped_providers(
    options: SessionOptions, providers: list[str], actual: list[str], reason: str | None
) -> str | None:
    """The fallback reason, extended when ORT dropped a provider that failed to initialise
    (e.g. CUDA without cuDNN: ORT says so with a log line only).

    Raises:
        BackendUnavailableError: a provider was dropped and the policy is strict.
    """
    dropped = [p for p in providers if p not in actual]
    if not dropped:
        return reason
    problem = accelerator_unavailable(
        options,
        _NAME,
        f"execution providers {', '.join(dropped)} failed to initialise (the session has {', '.join(actual)})",
        "check the accelerator's driver and libraries (CUDA, cuDNN, TensorRT...)",
    )
    return f"{reason}; {problem}" if reason else problem


def _concurrency(serial: bool) -> Concurrency:
    return Concurrency(
        worker=None,
        call="InferenceSession.run",
        default=None,
        cap=1 if serial else None,
        cap_reason="the DirectML provider runs one call per session at a time" if serial else None,
    )


def _session_options(threads: int | None, cpu_fallback_disabled: bool) -> Any:
    session_options = _ort().SessionOptions()
    if threads:
        session_options.intra_op_num_threads = int(threads)
    if cpu_fallback_disabled:
        session_options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return session_options


def bare_step(session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
    """A loop over ``InferenceSession.run`` of a fresh session with the providers and threads
    ``session`` ended up with.

    Raises:
        ConfigError: the model has more than one input.
        InferenceError: the model cannot be loaded.
    """
    info = session.info
    providers = list(info.details.get("providers") or [_CPU])
    content = session.model_content if isinstance(session, OnnxRuntimeSession) else None
    bare = _load(Path(model_path), providers, _session_options(info.threads, False), content=content)
    require_single_input(len(bare.get_inputs()), Path(model_path))
    name = bare.get_inputs()[0].name
    run = bare.run

    def step(x: np.ndarray) -> list[np.ndarray]:
        return list(run(None, {name: x}))

    return "onnxruntime InferenceSession.run", step


class OnnxRuntimeSession(PooledSession[Any]):
    """One InferenceSession shared by every call (thread-safe: module docstring); outputs in the manifest's order.

    ``model_content``: the model's bytes when it was opened from memory (a decrypted bundle), else None.
    """

    model_content: bytes | None = None

    def __init__(
        self,
        session: Any,
        feeds: list[tuple[str, str]],
        fetches: list[tuple[str, str]],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
        *,
        policy: Concurrency,
        requested: int | None,
    ) -> None:
        # The "pool" hands every call the same session: it only bounds how many run at once.
        super().__init__(inputs, outputs, info, policy=policy, requested=requested, make=lambda: session, first=session)
        self._feeds = feeds
        self._fetch_names = [model_name for _, model_name in fetches]
        self._result_names = [given for given, _ in fetches]
        self._renamed = any(a != b for a, b in feeds)

    def _run_on(self, session: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._renamed:
            feed = {model_name: feed[given] for given, model_name in self._feeds}
        values = session.run(self._fetch_names, feed)
        return dict(zip(self._result_names, values, strict=True))


def _choose_providers(options: SessionOptions, available: list[str]) -> tuple[list[str], list[str], str | None]:
    """(requested, providers to use, fallback reason or None), per the fallback policy.

    Raises:
        BackendUnavailableError: a requested provider is absent and the policy is strict.
    """
    ro = options.runtime_options
    if ro.execution_providers:
        requested = list(ro.execution_providers)
        missing = [p for p in requested if p not in available]
        providers = [p for p in requested if p in available]
        problem = (
            f"execution providers {', '.join(missing)} are not in this onnxruntime build "
            f"(available: {', '.join(available)})"
        )
        fix = "install the onnxruntime package that has them (e.g. onnxruntime-gpu for CUDA)"
    elif options.device is Device.AUTO:
        # Everything this build offers, in ORT's own priority order (Azure is a remote EP).
        requested = [p for p in available if p != "AzureExecutionProvider"]
        return requested, list(requested), None
    else:
        # A device maps to several candidate providers; the first one present will do.
        requested = list(_PROVIDERS_FOR_DEVICE[options.device])
        providers = [p for p in requested if p in available][:1]
        missing = [] if providers else requested
        problem = (
            f"device {options.device.value} needs one of {', '.join(requested) or 'no provider'}, "
            f"none of which this onnxruntime build has (available: {', '.join(available)})"
        )
        fix = (
            "install the onnxruntime package built for that device (onnxruntime-gpu, "
            "onnxruntime-openvino, onnxruntime-qnn...) or list execution_providers in the profile"
        )
    reason = accelerator_unavailable(options, _NAME, problem, fix) if missing else None
    return requested, providers, reason


def _load(
    model_path: Path,
    providers: list[str],
    session_options: Any,
    provider_options: list[dict[str, str]] | None = None,
    content: bytes | None = None,
) -> Any:
    if content is None:
        require_file(model_path, _NAME)
    ort = _ort()
    try:
        return ort.InferenceSession(
            str(model_path) if content is None else content,
            session_options,
            providers=providers,
            provider_options=provider_options,
        )
    except Exception as e:
        raise load_failed(model_path, _NAME, e) from e


def _specs(nodes: list[Any], model_path: Path) -> list[TensorSpec]:
    specs = []
    for node in nodes:
        dtype = _ORT_TYPES.get(node.type)
        if dtype is None:
            raise InferenceError(
                f"{_NAME}: {model_path} has tensor {node.name!r} of type {node.type}, which shelfedge "
                f"does not feed or read; supported: {', '.join(_ORT_TYPES)}"
            )
        specs.append(make_spec(node.name, node.shape, dtype))
    return specs


def _actual_device(provider: str, requested: Device) -> str:
    if provider == "OpenVINOExecutionProvider":
        return f"{requested.value} (OpenVINO EP)"
    return _DEVICE_OF_PROVIDER.get(provider, provider)
