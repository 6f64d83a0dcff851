"""LiteRT (TensorFlow Lite) adapter: ai_edge_litert, else tflite_runtime, else tensorflow.lite.

CPU runs go through the interpreter's default XNNPACK delegate; accelerators (Edge TPU, GPU,
NNAPI) are external delegates loaded by library path from ``runtime_options.delegate``.

Threads: an ``Interpreter`` runs one call at a time, so a session holds a pool of interpreters
(``SessionOptions.concurrency``, default 1: a lock), made on demand, each with its own tensor
arena and XNNPACK threads; a call borrows one and gets copies of its outputs. With an external
delegate the pool stays at one interpreter: a delegate instance is not shared across interpreters.

Precision is inferred from the tensors: int8/uint8 inputs or quantized int8 tensors with a
QUANTIZE op -> int8 (int8 weights without one -> dynamic_int8), int16 inputs -> int16x8,
float16 tensors (fp16 weights) -> fp16, else fp32.
"""

from __future__ import annotations

import ctypes
import dataclasses
import importlib
from collections.abc import Callable, Mapping
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
    with_dynamic_batch,
)
from runtimes._pool import Concurrency, PooledSession
from sdk.enums import Device, Precision, Runtime
from sdk.errors import InferenceError
from sdk.runtime import BareStep, BaseSession, Session, SessionInfo, SessionOptions
from sdk.tensors import Quantization, TensorSpec

_NAME = "litert"
# (package reported, module holding Interpreter and load_delegate), in order of preference.
_CANDIDATES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow.lite", "tensorflow"),
)


@dataclasses.dataclass(frozen=True)
class _Backend:
    package: str
    version: str
    interpreter: Any  # the Interpreter class
    load_delegate: Any


_backend_cache: list[_Backend] = []


def _backend() -> _Backend:
    if _backend_cache:
        return _backend_cache[0]
    errors = []
    for package, module_name in _CANDIDATES:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            errors.append(f"{package}: {e}")
            continue
        if package == "tensorflow.lite":
            lite = module.lite
            backend = _Backend(package, module.__version__, lite.Interpreter, lite.experimental.load_delegate)
        else:
            version = getattr(importlib.import_module(package), "__version__", "unknown")
            backend = _Backend(package, version, module.Interpreter, module.load_delegate)
        _backend_cache.append(backend)
        return backend
    raise ImportError("no LiteRT interpreter found (install ai-edge-litert); tried " + "; ".join(errors))


def require_backend() -> None:
    """Import a LiteRT interpreter.

    Raises:
        ImportError: none of ai-edge-litert, tflite-runtime or tensorflow is installed.
    """
    _backend()


def backend_info() -> dict[str, Any]:
    """Name, version and the package that provides the interpreter.

    Raises:
        ImportError: no LiteRT interpreter is installed.
    """
    backend = _backend()
    return {
        "name": _NAME,
        "version": backend.version,
        "package": backend.package,
        "devices": ["CPU"],  # accelerators are external delegates, known only when one loads
    }


def describe(
    model_path: Path, model_bytes: Mapping[Path, bytes] | None = None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the model's input and output specs (signature names when the model has one signature);
    from ``model_bytes[model_path]`` instead of the file when given.

    Raises:
        InferenceError: the file is missing or not a readable .tflite model.
    """
    interpreter = _load(Path(model_path), [], None, model_content(Path(model_path), model_bytes, _NAME))
    inputs, outputs, _ = _tensors(interpreter)
    return [spec for spec, _ in inputs], [spec for spec, _ in outputs]


def open_session(
    model_path: Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    options: SessionOptions,
    model_bytes: Mapping[Path, bytes] | None = None,
) -> BaseSession:
    """Open a LiteRT interpreter, with the profile's delegate when one is configured.

    With ``model_bytes`` every interpreter is made from ``model_bytes[model_path]`` (``model_content``),
    kept in the session's memory, never from the file.

    Raises:
        ManifestError: a manifest spec does not match the model.
        BackendUnavailableError: the delegate/accelerator is missing and the policy is strict.
        InferenceError: the model (or the model with the delegate) could not be loaded.
    """
    model_path = Path(model_path)
    backend = _backend()
    content = model_content(model_path, model_bytes, _NAME)
    ro = options.runtime_options
    delegates, fell_back, reason = _delegates(backend, options)
    interpreter = _load(model_path, delegates, ro.threads, content)
    model_inputs, model_outputs, tensor_details = _tensors(interpreter)
    in_specs = check_specs(model_path, "input", inputs, [s for s, _ in model_inputs])
    out_specs = check_specs(model_path, "output", outputs, [s for s, _ in model_outputs])
    in_index = {s.name: i for s, i in model_inputs}
    out_index = {s.name: i for s, i in model_outputs}
    precision = _precision(interpreter, [s for s, _ in model_inputs], tensor_details)
    accelerator = Path(ro.delegate).name if delegates and ro.delegate else "XNNPACK"
    info = SessionInfo(
        runtime=Runtime.LITERT,
        runtime_version=backend.version,
        backend=backend.package,
        requested_device=options.device,
        actual_device=options.device.value if delegates and options.device is not Device.CPU else "CPU",
        precision=precision,
        threads=ro.threads,
        requested_accelerator=ro.delegate,
        actual_accelerator=accelerator,
        fell_back=fell_back,
        fallback_reason=reason,
        details={"delegate_options": dict(ro.delegate_options), "model": str(model_path)},
    )
    feeds = [(given.name, in_index[spec.name]) for given, spec in zip(inputs, in_specs, strict=True)]
    fetches = [(given.name, out_index[spec.name]) for given, spec in zip(outputs, out_specs, strict=True)]
    # Any batch size runs (the interpreter resizes), whatever the file's batch dim says.
    session = LiteRTSession(
        _Worker(interpreter),
        lambda: _Worker(_load(model_path, [], ro.threads, content)),  # only with no delegate: the cap keeps one
        feeds,
        fetches,
        with_dynamic_batch(inputs),
        with_dynamic_batch(outputs),
        info,
        policy=_concurrency(bool(delegates)),
        requested=options.concurrency,
    )
    session.model_content = content
    return session


def _delegates(backend: _Backend, options: SessionOptions) -> tuple[list[Any], bool, str | None]:
    """(the external delegate loaded, or none; whether the session falls back; why), per the policy.

    Raises:
        BackendUnavailableError: the delegate/accelerator is missing and the policy is strict.
    """
    delegates: list[Any] = []
    fell_back, reason = False, None
    ro = options.runtime_options
    if ro.delegate:
        try:
            # Probe with ctypes first: a failed load_delegate leaves a half-built Delegate whose
            # __del__ prints an AttributeError (ai-edge-litert 2.3), noise on every fallback.
            ctypes.CDLL(ro.delegate)
            delegates.append(backend.load_delegate(ro.delegate, dict(ro.delegate_options) or None))
        except (OSError, ValueError, RuntimeError) as e:
            reason = accelerator_unavailable(
                options,
                _NAME,
                f"the delegate library {ro.delegate!r} could not be loaded ({e})",
                "install it (for Coral: the libedgetpu runtime) or set the delegate's full path in "
                "the hardware profile's runtime_options.delegate",
                cause=e,
            )
            fell_back = True
    elif options.device is not Device.CPU:
        reason = accelerator_unavailable(
            options,
            _NAME,
            f"device {options.device.value} was requested but no delegate is configured, so no "
            f"accelerator is available",
            "set runtime_options.delegate to the accelerator's delegate library in the profile",
        )
        fell_back = True
    return delegates, fell_back, reason


def _concurrency(delegated: bool) -> Concurrency:
    return Concurrency(
        worker="LiteRT interpreter",
        call="Interpreter.invoke",
        default=1,
        cap=1 if delegated else None,
        cap_reason="an external delegate is not shared across interpreters" if delegated else None,
    )


def bare_step(session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
    """A loop over ``set_tensor`` / ``invoke`` / ``get_tensor`` of a fresh interpreter from the
    same package, with the same threads, as ``session``. The step owns that interpreter and
    takes no lock: one thread only (the benchmark's loop), never shared with the session's pool.

    Raises:
        ConfigError: the model has more than one input.
        InferenceError: the model cannot be loaded.
    """
    info = session.info
    content = session.model_content if isinstance(session, LiteRTSession) else None
    interpreter = _load(Path(model_path), [], info.threads, content)
    inputs = interpreter.get_input_details()
    require_single_input(len(inputs), Path(model_path))
    index = inputs[0]["index"]
    if tuple(inputs[0]["shape"]) != example.shape:
        interpreter.resize_tensor_input(index, example.shape, strict=False)
        interpreter.allocate_tensors()
    out_indices = [d["index"] for d in interpreter.get_output_details()]
    set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor

    def step(x: np.ndarray) -> list[np.ndarray]:
        set_tensor(index, x)
        invoke()
        return [get_tensor(i) for i in out_indices]

    return f"{info.backend} Interpreter set_tensor/invoke/get_tensor", step


class _Worker:
    """One interpreter and the input shapes it is allocated for; used by one call at a time."""

    def __init__(self, interpreter: Any) -> None:
        self.interpreter = interpreter
        # A feed of another shape triggers one resize (and re-allocation) of this interpreter.
        self.shapes = {d["index"]: tuple(int(x) for x in d["shape"]) for d in interpreter.get_input_details()}


class LiteRTSession(PooledSession[_Worker]):
    """A pool of interpreters (see the module docstring); safe to share across threads.

    ``model_content``: the model's bytes when it was opened from memory (a decrypted bundle), else None.
    """

    model_content: bytes | None = None

    def __init__(
        self,
        first: _Worker,
        make: Callable[[], _Worker],
        feeds: list[tuple[str, int]],
        fetches: list[tuple[str, int]],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
        *,
        policy: Concurrency,
        requested: int | None,
    ) -> None:
        super().__init__(inputs, outputs, info, policy=policy, requested=requested, make=make, first=first)
        self._feeds = feeds
        self._fetches = fetches

    def _run_on(self, worker: _Worker, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        interpreter = worker.interpreter
        resized = False
        for name, index in self._feeds:
            shape = feed[name].shape
            if shape != worker.shapes[index]:
                interpreter.resize_tensor_input(index, shape, strict=False)
                worker.shapes[index] = shape
                resized = True
        if resized:
            interpreter.allocate_tensors()
        for name, index in self._feeds:
            interpreter.set_tensor(index, feed[name])
        interpreter.invoke()
        # get_tensor copies out of the interpreter's buffers before the worker goes back to the
        # pool, so a result stays valid whatever the next call on this interpreter does.
        return {name: interpreter.get_tensor(index) for name, index in self._fetches}


def _load(model_path: Path, delegates: list[Any], threads: int | None, content: bytes | None = None) -> Any:
    if content is None:
        require_file(model_path, _NAME)
    backend = _backend()
    # From memory (a decrypted model) or from the file: the interpreter reads one of the two.
    source = {"model_content": content} if content is not None else {"model_path": str(model_path)}
    try:
        interpreter = backend.interpreter(**source, experimental_delegates=delegates or None, num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        if delegates:
            raise InferenceError(
                f"{_NAME} could not load {model_path} with the delegate: {e}; check the model was "
                f"compiled for this accelerator (e.g. edgetpu_compiler for Coral)"
            ) from e
        raise load_failed(model_path, _NAME, e) from e
    return interpreter


_Indexed = list[tuple[TensorSpec, int]]


def _tensors(interpreter: Any) -> tuple[_Indexed, _Indexed, list[dict]]:
    """(spec, tensor index) for inputs and outputs, plus every tensor's details."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    names_in = {d["index"]: d["name"] for d in inputs}
    names_out = {d["index"]: d["name"] for d in outputs}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:
        # Signature keys ('image') are the names the exporter chose; raw tensor names
        # ('serving_default_image:0') are not. Use them only when they map onto the primary
        # subgraph's tensors, which the interpreter API below drives.
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        sig_in = {d["index"]: name for name, d in runner.get_input_details().items()}
        sig_out = {d["index"]: name for name, d in runner.get_output_details().items()}
        if set(sig_in) == set(names_in) and set(sig_out) == set(names_out):
            names_in, names_out = sig_in, sig_out
    return (
        [(_spec(names_in[d["index"]], d), d["index"]) for d in inputs],
        [(_spec(names_out[d["index"]], d), d["index"]) for d in outputs],
        interpreter.get_tensor_details(),
    )


def _spec(name: str, details: dict) -> TensorSpec:
    params = details.get("quantization_parameters") or {}
    scales, zero_points = params.get("scales", ()), params.get("zero_points", ())
    quantization = None
    # Per-channel quantization (several scales) cannot be described by one scale/zero-point.
    if len(scales) == 1 and scales[0] > 0:
        quantization = Quantization(scale=float(scales[0]), zero_point=int(zero_points[0]))
    # shape_signature keeps -1 for dynamic dims; "shape" has them resolved to the current size.
    shape = details.get("shape_signature")
    if shape is None or len(shape) != len(details["shape"]):
        shape = details["shape"]
    return make_spec(name, shape, details["dtype"], quantization)


def _precision(interpreter: Any, inputs: list[TensorSpec], tensors: list[dict]) -> Precision:
    input_dtypes = {s.dtype for s in inputs}
    if input_dtypes & {"int8", "uint8"}:
        return Precision.INT8
    if "int16" in input_dtypes:
        return Precision.INT16X8
    dtypes = {np.dtype(t["dtype"]).name for t in tensors if len(t["quantization_parameters"]["scales"])}
    if dtypes & {"int8", "uint8"}:
        # QUANTIZE on the way in means activations are integer too; without it only the
        # weights are (dynamic-range quantization). The op list is a private API, hence getattr.
        ops = getattr(interpreter, "_get_ops_details", lambda: None)()
        if ops is None or any(op["op_name"] == "QUANTIZE" for op in ops):
            return Precision.INT8
        return Precision.DYNAMIC_INT8
    if any(np.dtype(t["dtype"]) == np.float16 for t in tensors):
        return Precision.FP16
    return Precision.FP32
