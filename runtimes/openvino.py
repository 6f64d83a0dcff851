"""OpenVINO adapter: IR (.xml + .bin) or .onnx on CPU / GPU / NPU / AUTO.

Precision is what the compiled model computes in, as far as OpenVINO tells: int8 when the
model has FakeQuantize ops (NNCF / QDQ-ONNX output: quantized activations); dynamic_int8 when
only the weights are i8/u8 constants (weight compression, dynamically quantized ONNX); fp16
when the compiled model's INFERENCE_PRECISION_HINT is f16 or the weights are stored as f16;
mixed for a bf16 hint; else fp32.

Capabilities (``sdk.runtime.ADAPTERS``): a bare loop over ``InferRequest.infer``, every
layer's output (:mod:`runtimes._openvino_layers`) and async infer requests.

Threads: an ``InferRequest`` runs one call at a time ("Infer Request is busy" otherwise), so
``run`` borrows one from a pool of requests on the one compiled model, made on demand up to
``SessionOptions.concurrency`` (default: ``runtime_options.num_requests``, else the compiled
model's OPTIMAL_NUMBER_OF_INFER_REQUESTS: 1 under the LATENCY hint, one per stream under
THROUGHPUT, where parallel calls also add throughput). Outputs are copied out of the request
before it goes back. ``run_async`` calls run one at a time, each keeping its requests in flight.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._common import check_specs, require_single_input, with_dynamic_batch
from runtimes._openvino_core import (
    NAME,
    compile_config,
    compile_model,
    compiled_property,
    core,
    full_name,
    ov,
    pick_device,
    precision,
    read,
    spec,
    static_batch,
    with_batch,
)
from runtimes._openvino_layers import layer_outputs
from runtimes._pool import Concurrency, PooledSession, WorkerPool
from sdk.enums import Runtime
from sdk.errors import ConfigError, InferenceError, InputError
from sdk.runtime import BareStep, Session, SessionInfo, SessionOptions
from sdk.tensors import TensorSpec, check_feed

__all__ = [
    "OpenVINOSession",
    "backend_info",
    "bare_step",
    "describe",
    "layer_outputs",
    "open_async_session",
    "open_session",
    "require_backend",
]

# Other batch sizes of a static model each get their own compiled copy; a few at most.
_MAX_VARIANTS = 4


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """What it takes to compile the model again: for another batch size, or a bare loop."""

    core: Any
    model: Any
    device: str
    config: dict[str, Any]
    num_requests: int | None
    from_memory: bool = False  # read from decrypted bytes: a bare loop clones ``model``, never reads the file


def require_backend() -> None:
    """Import OpenVINO.

    Raises:
        ImportError: the openvino package is not installed.
    """
    ov()


def backend_info() -> dict[str, Any]:
    """Name, version and every available device with its full name.

    Raises:
        ImportError: the openvino package is not installed.
    """
    ov_core = core()
    devices = [
        {"device": d, "full_name": str(ov_core.get_property(d, "FULL_DEVICE_NAME"))} for d in ov_core.available_devices
    ]
    return {"name": NAME, "version": ov().get_version(), "package": "openvino", "devices": devices}


def describe(
    model_path: Path, model_bytes: Mapping[Path, bytes] | None = None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the model's input and output specs (first tensor name of each port), from
    ``model_bytes`` (the .xml's and the .bin's content by path) when given.

    Raises:
        InferenceError: the file is missing or OpenVINO cannot read it.
    """
    model = read(Path(model_path), model_bytes)
    return [spec(p) for p in model.inputs], [spec(p) for p in model.outputs]


def open_session(
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: SessionOptions,
    model_bytes: Mapping[Path, bytes] | None = None,
) -> OpenVINOSession:
    """Compile the model on the requested device (or the fallback device, per policy); with
    ``model_bytes`` (content by path) read from memory, and no model cache written (compile_config).

    Raises:
        ManifestError: a manifest spec does not match the model.
        ConfigError: the performance hint is not one OpenVINO knows.
        BackendUnavailableError: the device is absent and the policy is strict, or the fallback device is too.
        InferenceError: the model could not be read or compiled.
    """
    model_path = Path(model_path)
    ov_core = core()
    model = read(model_path, model_bytes)
    model_inputs = [spec(p) for p in model.inputs]
    model_outputs = [spec(p) for p in model.outputs]
    in_aliases = {n: spec(p).name for p in model.inputs for n in p.get_names()}
    out_aliases = {n: spec(p).name for p in model.outputs for n in p.get_names()}
    in_specs = check_specs(model_path, "input", inputs, model_inputs, in_aliases)
    out_specs = check_specs(model_path, "output", outputs, model_outputs, out_aliases)

    target, fell_back, reason = pick_device(ov_core.available_devices, options)
    config = compile_config(options, target, cache=model_bytes is None)
    if target == "NPU":
        # The NPU compiler wants static shapes; other batch sizes get their own compiled copy.
        model = with_batch(model, 1) if static_batch(model) is None else model
    compiled = compile_model(ov_core, model, target, config, model_path)
    execution = list(compiled.get_property("EXECUTION_DEVICES"))
    hint = compiled_property(compiled, "INFERENCE_PRECISION_HINT")
    details = {
        "performance_hint": compiled_property(compiled, "PERFORMANCE_HINT"),
        "inference_precision_hint": hint,
        "optimal_number_of_infer_requests": compiled_property(compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
        "full_device_names": {d: full_name(ov_core, d) for d in execution},
        "cache_dir": config.get("CACHE_DIR"),
        "model": str(model_path),
    }
    threads = compiled_property(compiled, "INFERENCE_NUM_THREADS") if target == "CPU" else None
    info = SessionInfo(
        runtime=Runtime.OPENVINO,
        runtime_version=ov().get_version(),
        backend="openvino",
        requested_device=options.device,
        actual_device=", ".join(execution),
        precision=precision(model, hint),
        threads=int(threads) if threads else options.runtime_options.threads,
        requested_accelerator=options.device.value,
        actual_accelerator=", ".join(execution),
        fell_back=fell_back,
        fallback_reason=reason,
        details=details,
    )
    optimal = details["optimal_number_of_infer_requests"]
    policy = Concurrency(
        worker="OpenVINO infer request",
        call="InferRequest.infer",
        default=options.runtime_options.num_requests or max(1, int(optimal or 1)),
    )
    in_index = {s.name: i for i, s in enumerate(model_inputs)}
    out_index = {s.name: i for i, s in enumerate(model_outputs)}
    feeds = [(given.name, in_index[s.name]) for given, s in zip(inputs, in_specs, strict=True)]
    fetches = [(given.name, out_index[s.name]) for given, s in zip(outputs, out_specs, strict=True)]
    state = _Compiled(ov_core, model, target, config, options.runtime_options.num_requests, model_bytes is not None)
    # Any batch size runs (other batches of a static model get their own compiled copy).
    return OpenVINOSession(
        state,
        compiled,
        feeds,
        fetches,
        with_dynamic_batch(inputs),
        with_dynamic_batch(outputs),
        info,
        policy=policy,
        requested=options.concurrency,
    )


def open_async_session(
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: SessionOptions,
    *,
    requests: int | None,
    model_bytes: Mapping[Path, bytes] | None = None,
) -> OpenVINOSession:
    """A session compiled under the THROUGHPUT hint, for ``run_async`` with ``requests`` in flight.

    A latency-tuned compile runs one stream, so parallel requests on it would measure queueing,
    not throughput. ``requests`` None: the compiled model's OPTIMAL_NUMBER_OF_INFER_REQUESTS.

    Raises:
        As :func:`open_session`.
    """
    tuned = dataclasses.replace(options.runtime_options, performance_hint="THROUGHPUT", num_requests=requests)
    return open_session(model_path, inputs, outputs, dataclasses.replace(options, runtime_options=tuned), model_bytes)


def bare_step(session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
    """A loop over ``InferRequest.infer`` on the device and compile config ``session`` used.

    The step owns its own compiled model and request and takes no lock: one thread only.

    Raises:
        ConfigError: ``session`` is not an OpenVINO session, or the model has several inputs.
        InferenceError: the model cannot be compiled.
    """
    if not isinstance(session, OpenVINOSession):
        raise ConfigError(f"openvino bare loop needs an openvino session, got {type(session).__name__}")
    state = session.compiled_state
    model = state.model.clone() if state.from_memory else read(Path(model_path))
    require_single_input(len(model.inputs), Path(model_path))
    if static_batch(model) not in (None, example.shape[0]) or state.device == "NPU":
        model = with_batch(model, example.shape[0])
    request = compile_model(state.core, model, state.device, state.config, Path(model_path)).create_infer_request()
    outputs = range(len(model.outputs))

    def step(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: x}, share_inputs=True)
        return [result[i] for i in outputs]

    return "openvino InferRequest.infer", step


class OpenVINOSession(PooledSession[Any]):
    """A pool of InferRequests for ``run``, an AsyncInferQueue for ``run_async``; safe to share (module doc)."""

    def __init__(
        self,
        state: _Compiled,
        compiled: Any,
        feeds: list[tuple[str, int]],
        fetches: list[tuple[str, int]],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
        *,
        policy: Concurrency,
        requested: int | None,
    ) -> None:
        make = compiled.create_infer_request
        super().__init__(inputs, outputs, info, policy=policy, requested=requested, make=make, first=make())
        self._state = state
        self._compiled = compiled
        self._static_batch = static_batch(state.model)
        # Other batch sizes of a static model: a compiled copy each, with its own pool of requests.
        self._variants: dict[int, WorkerPool[Any]] = {}
        self._variants_lock = threading.Lock()
        self._queue: Any = None
        self._async_lock = threading.Lock()  # one run_async at a time: the queue's callback is per call
        self._feeds = feeds
        self._fetches = fetches
        self._first_input = feeds[0][0] if feeds else ""

    @property
    def compiled_state(self) -> _Compiled:
        """Core, model, device and compile config: what a bare loop compiles with to match."""
        return self._state

    @property
    def async_requests(self) -> int:
        """Requests ``run_async`` keeps in flight: num_requests, else OpenVINO's optimal number."""
        optimal = self.info.details.get("optimal_number_of_infer_requests") or 1
        return self._state.num_requests or int(optimal)

    def _run_on(self, request: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        # share_inputs avoids a copy of the feed (the caller's, untouched during the call); outputs
        # are copied (share_outputs=False) before the request goes back to the pool.
        result = request.infer({index: feed[name] for name, index in self._feeds}, share_inputs=True)
        return {name: result[index] for name, index in self._fetches}

    def _pool_for(self, feed: Mapping[str, np.ndarray]) -> WorkerPool[Any]:
        batch = feed[self._first_input].shape[0] if self._feeds else None
        if self._static_batch is None or batch == self._static_batch or batch is None:
            return self._pool
        return self._variant(batch)

    def _pools(self) -> list[WorkerPool[Any]]:
        with self._variants_lock:
            return [self._pool, *self._variants.values()]

    def run_async(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run many feeds through parallel infer requests (throughput mode); results in order.

        Raises:
            InputError: a feed does not match the inputs, or has a batch size other than the
                compiled one of a static-batch model (use ``run`` for those).
            InferenceError: the session is closed or a request failed.
        """
        self._check_async_feeds(feeds)
        with self._async_lock:
            if self._closed:
                raise InferenceError("openvino session is closed; open a new one")
            return self._run_queue(self._async_queue(), feeds)

    def _run_queue(self, queue: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        results: list[dict[str, np.ndarray]] = [{} for _ in feeds]
        errors: list[BaseException] = []
        fetches = self._fetches

        def done(request: Any, index: int) -> None:
            try:
                results[index] = {n: request.get_output_tensor(i).data.copy() for n, i in fetches}
            except Exception as e:  # re-raised below, outside the callback thread
                errors.append(e)

        queue.set_callback(done)
        try:
            for i, feed in enumerate(feeds):
                tensors = {index: feed[name] for name, index in self._feeds}
                queue.start_async(tensors, userdata=i, share_inputs=True)
            queue.wait_all()
        except Exception as e:  # backend errors vary; wrap them with the cause
            raise InferenceError(f"openvino async inference failed: {e}") from e
        if errors:
            raise InferenceError(f"openvino async inference failed: {errors[0]}") from errors[0]
        return results

    def _check_async_feeds(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        for feed in feeds:
            check_feed(self._inputs, feed, where="openvino session (async)")
            if self._static_batch is not None and feed[self._first_input].shape[0] != self._static_batch:
                raise InputError(
                    f"openvino session (async): the model is compiled for batch {self._static_batch}, "
                    f"got {feed[self._first_input].shape[0]}; use run() for other batch sizes"
                )

    def _async_queue(self) -> Any:
        if self._queue is None:
            self._queue = ov().AsyncInferQueue(self._compiled, self.async_requests)
        return self._queue

    def _variant(self, batch: int) -> WorkerPool[Any]:
        # Compiled under the lock: rare, and two threads must not compile the same batch twice.
        with self._variants_lock:
            pool = self._variants.get(batch)
            if pool is None:
                if len(self._variants) >= _MAX_VARIANTS:
                    # Calls in flight on the evicted copy finish; its requests go when they do.
                    self._variants.pop(next(iter(self._variants)))
                state = self._state
                compiled = compile_model(state.core, with_batch(state.model, batch), state.device, state.config)
                what = f"openvino session (batch {batch})"
                pool = self._variants[batch] = WorkerPool(compiled.create_infer_request, self._limit, what=what)
        return pool

    def _close(self) -> None:
        with self._async_lock:  # a run_async in flight finishes first
            self._queue = None
        super()._close()  # waits for the run() calls in flight
        self._compiled = None
        with self._variants_lock:
            self._variants.clear()
