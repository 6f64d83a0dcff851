"""The runtime adapter contract and the explicit table of adapters.

An adapter module in ``runtimes/`` exposes ``require_backend()`` (raises ImportError when
its library is missing), ``backend_info() -> dict``, ``describe(model_path) -> (inputs,
outputs)`` and ``open_session(model_path, inputs, outputs, options) -> BaseSession``.
Abilities only some backends have are optional capabilities (:class:`Capability`), each a
small protocol the adapter module implements (:class:`BareLoopAdapter`,
:class:`LayerOutputsAdapter`, :class:`AsyncAdapter`) and listed on its entry in the one
table, :data:`ADAPTERS`. ``sdk`` never imports an adapter at module load: the table names
modules, imported on first use, so a missing backend fails only when it is asked for, with
the extra to install.

Threads: every session is safe to share; ``run`` may be called from several threads at once, as
``SessionInfo.details["concurrency"]`` says (a pool of LiteRT interpreters or OpenVINO infer
requests sized by :attr:`SessionOptions.concurrency`, a call waiting for a free one, never sharing
it; ONNX Runtime's and TensorFlow's own thread-safe run). ``close`` waits for the calls in flight.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from sdk.enums import Device, FallbackPolicy, Precision, Runtime
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError
from sdk.profiles import RuntimeOptions
from sdk.tensors import TensorSpec, check_feed


class Capability(str, enum.Enum):
    """An optional ability of an adapter, beyond the core contract every adapter keeps."""

    BARE_LOOP = "bare_loop"  # a loop over the backend's own API, for the adapter-overhead check
    LAYER_OUTPUTS = "layer_outputs"  # every intermediate activation, for localising a parity failure
    ASYNC_REQUESTS = "async_requests"  # parallel infer requests, for throughput


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdapterEntry:
    """One row of the adapter table: where the adapter lives and what it can do."""

    module: str  # imported on first use only
    extra: str  # the pip extra that installs its backend
    capabilities: frozenset[Capability] = frozenset()


ADAPTERS: dict[Runtime, AdapterEntry] = {
    Runtime.LITERT: AdapterEntry(
        module="runtimes.litert", extra="litert", capabilities=frozenset({Capability.BARE_LOOP})
    ),
    Runtime.OPENVINO: AdapterEntry(
        module="runtimes.openvino",
        extra="openvino",
        capabilities=frozenset({Capability.BARE_LOOP, Capability.LAYER_OUTPUTS, Capability.ASYNC_REQUESTS}),
    ),
    Runtime.ONNXRUNTIME: AdapterEntry(
        module="runtimes.onnxruntime",
        extra="onnx",
        capabilities=frozenset({Capability.BARE_LOOP, Capability.LAYER_OUTPUTS}),
    ),
    Runtime.TENSORFLOW: AdapterEntry(
        module="runtimes.tensorflow", extra="tf", capabilities=frozenset({Capability.BARE_LOOP})
    ),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SessionOptions:
    """What the caller asks of a session; the session reports what it actually got."""

    device: Device = Device.CPU
    fallback_device: Device | None = Device.CPU
    fallback: FallbackPolicy = FallbackPolicy.RECORD
    runtime_options: RuntimeOptions = dataclasses.field(default_factory=RuntimeOptions)
    # How many run() calls may execute at once; more wait. None: the adapter's default (LiteRT 1
    # interpreter; OpenVINO runtime_options.num_requests, else the compiled model's optimal
    # number of infer requests; ONNX Runtime and TensorFlow no limit, their run is thread-safe).
    concurrency: int | None = None

    def __post_init__(self) -> None:
        c = self.concurrency
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ConfigError(f"concurrency is {c!r}; pass a positive integer (calls at once) or None for the default")


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

    def __enter__(self) -> Session: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class ResizableSession(Session, Protocol):
    """A session whose concurrency may change once open (every adapter's session is one)."""

    def set_concurrency(self, calls: int | None) -> None:
        """From now on up to ``calls`` run() calls at once (None: the adapter's default)."""
        ...


# One step of a bare loop: the model on one input tensor, through the backend's own API.
BareStep = Callable[[np.ndarray], list[np.ndarray]]
# (layer name, op type, value) for every activation, in the model's topological order.
LayerOutput = tuple[str, str, np.ndarray]


@runtime_checkable
class AsyncSession(Session, Protocol):
    """A session that keeps several infer requests in flight (:attr:`Capability.ASYNC_REQUESTS`)."""

    @property
    def async_requests(self) -> int:
        """How many requests ``run_async`` keeps in flight."""
        ...

    def run_async(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]: ...


@runtime_checkable
class BareLoopAdapter(Protocol):
    """An adapter module that can build a bare loop (:attr:`Capability.BARE_LOOP`)."""

    def bare_step(self, session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
        """(what it calls, step): ``step(x)`` runs ``model_path`` with the backend's own API and
        the settings ``session`` was opened with, prepared for inputs shaped like ``example``."""
        ...


@runtime_checkable
class LayerOutputsAdapter(Protocol):
    """An adapter module that exposes every activation (:attr:`Capability.LAYER_OUTPUTS`)."""

    def layer_outputs(self, model_path: Path, feed: Mapping[str, np.ndarray]) -> list[LayerOutput]: ...


@runtime_checkable
class AsyncAdapter(Protocol):
    """An adapter module with throughput sessions (:attr:`Capability.ASYNC_REQUESTS`)."""

    def open_async_session(
        self,
        model_path: Path,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        options: SessionOptions,
        *,
        requests: int | None,
        model_bytes: Mapping[Path, bytes] | None = None,
    ) -> AsyncSession:
        """A throughput session, ``requests`` in flight (None: the optimum); ``model_bytes``: decrypted files."""


_PROTOCOLS: dict[Capability, type] = {
    Capability.BARE_LOOP: BareLoopAdapter,
    Capability.LAYER_OUTPUTS: LayerOutputsAdapter,
    Capability.ASYNC_REQUESTS: AsyncAdapter,
}


class BaseSession:
    """Shared plumbing: feed checks, closed-state checks, context manager.

    Subclasses set ``info`` and implement ``_run`` (and ``_close`` if they hold resources);
    ``_run`` must be safe to call from several threads at once (see the module docstring).
    """

    info: SessionInfo

    def __init__(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec], info: SessionInfo) -> None:
        self._inputs = list(inputs)
        self._outputs = list(outputs)
        self.info = info
        self._closed = False
        self._close_lock = threading.Lock()

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
        except InferenceError:
            raise  # already says what went wrong (e.g. closed while the call waited for a worker)
        except Exception as e:
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
        """Release the backend once the calls in flight finish; later calls raise InferenceError. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._close()

    def __enter__(self) -> BaseSession:
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
    entry = ADAPTERS[runtime]
    try:
        module = importlib.import_module(entry.module)
        module.require_backend()
    except ImportError as e:
        raise BackendUnavailableError(
            f"runtime {runtime.value!r} is not available: {e}; install it with: pip install 'shelfedge[{entry.extra}]'"
        ) from e
    return module


def supports(runtime: Runtime, capability: Capability) -> bool:
    """Whether the table lists ``capability`` for ``runtime`` (imports nothing)."""
    return capability in ADAPTERS[runtime].capabilities


def runtimes_with(capability: Capability) -> list[Runtime]:
    """The runtimes whose table entry lists ``capability``, in table order."""
    return [runtime for runtime, entry in ADAPTERS.items() if capability in entry.capabilities]


def capability_adapter(runtime: Runtime, capability: Capability) -> ModuleType:
    """The adapter module of ``runtime``, checked to implement ``capability``'s protocol.

    Raises:
        ConfigError: the table does not list ``capability`` for ``runtime``, naming those that have it.
        BackendUnavailableError: the backend is missing, naming the pip extra that installs it.
    """
    if not supports(runtime, capability):
        having = ", ".join(r.value for r in runtimes_with(capability)) or "none"
        raise ConfigError(
            f"runtime {runtime.value!r} has no {capability.value} capability (runtimes that have it: {having}); "
            f"use one of those runtimes"
        )
    module = adapter_module(runtime)
    if not isinstance(module, _PROTOCOLS[capability]):
        # The table and the module disagree: a bug in shelfedge, not in the caller's setup.
        raise ConfigError(
            f"adapter {module.__name__} is listed with {capability.value} but does not implement "
            f"{_PROTOCOLS[capability].__name__}; fix the table in sdk/runtime.py or the adapter"
        )
    return module


def bare_loop_adapter(runtime: Runtime) -> BareLoopAdapter:
    """The adapter of ``runtime`` as a :class:`BareLoopAdapter`.

    Raises:
        ConfigError, BackendUnavailableError: as :func:`capability_adapter` (no bare loop; no backend).
    """
    return cast(BareLoopAdapter, capability_adapter(runtime, Capability.BARE_LOOP))


def layer_outputs_adapter(runtime: Runtime) -> LayerOutputsAdapter:
    """The adapter of ``runtime`` as a :class:`LayerOutputsAdapter`.

    Raises:
        ConfigError, BackendUnavailableError: as :func:`capability_adapter` (no activations; no backend).
    """
    return cast(LayerOutputsAdapter, capability_adapter(runtime, Capability.LAYER_OUTPUTS))


def async_adapter(runtime: Runtime) -> AsyncAdapter:
    """The adapter of ``runtime`` as an :class:`AsyncAdapter`.

    Raises:
        ConfigError, BackendUnavailableError: as :func:`capability_adapter` (no async requests; no backend).
    """
    return cast(AsyncAdapter, capability_adapter(runtime, Capability.ASYNC_REQUESTS))


def open_session(
    runtime: Runtime,
    model_path: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    options: SessionOptions,
    model_bytes: Mapping[Path, bytes] | None = None,
) -> BaseSession:
    """Open ``model_path`` on ``runtime`` (LiteRT/OpenVINO/ONNX Runtime: from ``model_bytes``, by path, if given).

    Raises:
        BackendUnavailableError: the backend is missing, or the device is absent and ``options.fallback`` is strict.
        InferenceError: the backend could not load the model.
    """
    extra = {} if model_bytes is None else {"model_bytes": model_bytes}
    return adapter_module(runtime).open_session(Path(model_path), list(inputs), list(outputs), options, **extra)


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
    for runtime, entry in ADAPTERS.items():
        try:
            result[runtime] = {"available": True, **adapter_module(runtime).backend_info()}
        except BackendUnavailableError as e:
            result[runtime] = {"available": False, "error": str(e), "extra": entry.extra}
    return result
