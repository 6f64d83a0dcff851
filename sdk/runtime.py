"""The runtime adapter contract and the explicit table of adapters.

An adapter module in ``runtimes/`` exposes ``require_backend()`` (raises ImportError when
its library is missing), ``backend_info() -> dict``, ``describe(model_path) -> (inputs,
outputs)`` and ``open_session(model_path, inputs, outputs, options) -> BaseSession``. ``sdk`` never imports an adapter at
module load: the table below names modules, imported on first use, so a missing
backend fails only when it is asked for, with the extra to install.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol

import numpy as np

from sdk.enums import Device, FallbackPolicy, Precision, Runtime
from sdk.errors import BackendUnavailableError, InferenceError
from sdk.profiles import RuntimeOptions
from sdk.tensors import TensorSpec, check_feed

# runtime -> (adapter module, pip extra that installs its backend)
ADAPTERS: dict[Runtime, tuple[str, str]] = {
    Runtime.LITERT: ("runtimes.litert", "litert"),
    Runtime.OPENVINO: ("runtimes.openvino", "openvino"),
    Runtime.ONNXRUNTIME: ("runtimes.onnxruntime", "onnx"),
    Runtime.TENSORFLOW: ("runtimes.tensorflow", "tf"),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """What the caller asks of a session; the session reports what it actually got."""

    device: Device = Device.CPU
    fallback_device: Device | None = Device.CPU
    fallback: FallbackPolicy = FallbackPolicy.RECORD
    runtime_options: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionInfo:
    """What actually ran: reported by every session, copied into every result."""

    runtime: Runtime
    runtime_version: str
    backend: str  # the importable package that ran it, e.g. ai_edge_litert
    requested_device: Device
    actual_device: str
    precision: Precision
    threads: int | None = None
    requested_accelerator: str | None = None  # delegate / execution provider / device string
    actual_accelerator: str | None = None
    fell_back: bool = False
    fallback_reason: str | None = None
    details: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["runtime"] = self.runtime.value
        data["requested_device"] = self.requested_device.value
        data["precision"] = self.precision.value
        data["details"] = dict(self.details)
        return data


class Session(Protocol):
    """The adapter contract: tensors in, tensors out."""

    info: SessionInfo

    def inputs(self) -> list[TensorSpec]: ...

    def outputs(self) -> list[TensorSpec]: ...

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...

    def __enter__(self) -> "Session": ...

    def __exit__(self, *exc: object) -> None: ...


class BaseSession:
    """Shared plumbing: feed checks, closed-state checks, context manager.

    Subclasses set ``info`` and implement ``_run`` (and ``_close`` if they hold resources).
    """

    info: SessionInfo

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], info: SessionInfo) -> None:
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self.info = info
        self._closed = False

    def inputs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def outputs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch.

        Raises:
            InputError: a missing/extra input, or one of the wrong shape or dtype.
            InferenceError: the session is closed or the backend failed.
        """
        if self._closed:
            raise InferenceError(f"{self.info.runtime.value} session is closed; open a new one")
        check_feed(self._inputs, feed, where=f"{self.info.runtime.value} session")
        try:
            return self._run(feed)
        except Exception as e:  # noqa: BLE001 - backend errors vary; wrap them all with the cause
            raise InferenceError(f"{self.info.runtime.value} failed to run the model: {e}") from e

    def run_unchecked(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run without the feed checks: for benchmark loops that already checked once.

        Raises:
            InferenceError: the session is closed.
        """
        if self._closed:
            raise InferenceError(f"{self.info.runtime.value} session is closed; open a new one")
        return self._run(feed)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    def __enter__(self) -> "BaseSession":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _close(self) -> None:
        return None


def adapter_module(runtime: Runtime) -> ModuleType:
    """Import the adapter for ``runtime``.

    Raises:
        BackendUnavailableError: the adapter or its backend library is not installed,
            naming the pip extra that installs it.
    """
    module_name, extra = ADAPTERS[runtime]
    try:
        module = importlib.import_module(module_name)
        module.require_backend()
    except ImportError as e:
        raise BackendUnavailableError(
            f"runtime {runtime.value!r} is not available: {e}; "
            f"install it with: pip install 'shelfedge[{extra}]'"
        ) from e
    return module


def open_session(
    runtime: Runtime,
    model_path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    options: SessionOptions,
) -> BaseSession:
    """Open ``model_path`` on ``runtime`` with ``options``.

    Raises:
        BackendUnavailableError: the backend is missing, or the requested device is absent
            and ``options.fallback`` is strict.
        InferenceError: the backend could not load the model.
    """
    module = adapter_module(runtime)
    return module.open_session(Path(model_path), list(inputs), list(outputs), options)


def describe_model(runtime: Runtime, model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the input and output TensorSpecs from the model file itself (for packaging).

    Raises:
        BackendUnavailableError: the backend is missing.
        InferenceError: the backend could not read the model.
    """
    return adapter_module(runtime).describe(Path(model_path))


def available_runtimes() -> dict[Runtime, dict[str, Any]]:
    """Backend info for every runtime whose backend imports; absent ones map to their error."""
    result: dict[Runtime, dict[str, Any]] = {}
    for runtime, (_, extra) in ADAPTERS.items():
        try:
            result[runtime] = {"available": True, **adapter_module(runtime).backend_info()}
        except BackendUnavailableError as e:
            result[runtime] = {"available": False, "error": str(e), "extra": extra}
    return result
