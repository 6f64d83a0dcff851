"""OpenVINO adapter: IR (.xml + .bin) or .onnx on CPU / GPU / NPU / AUTO.

Precision is what the compiled model computes in, as far as OpenVINO tells: int8 when the
model has FakeQuantize ops (NNCF / QDQ-ONNX output: quantized activations); dynamic_int8 when
only the weights are i8/u8 constants (weight compression, dynamically quantized ONNX); fp16
when the compiled model's INFERENCE_PRECISION_HINT is f16 or the weights are stored as f16;
mixed for a bf16 hint; else fp32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._common import (
    accelerator_unavailable,
    check_specs,
    load_failed,
    make_spec,
    require_file,
    with_dynamic_batch,
)
from sdk.enums import Device, Precision, Runtime
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError, InputError
from sdk.runtime import BaseSession, SessionInfo, SessionOptions
from sdk.tensors import TensorSpec, check_feed

_NAME = "openvino"
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")
_QUANTIZED_TYPES = ("i8", "u8")
# Other batch sizes of a static model each get their own compiled copy; a few at most.
_MAX_VARIANTS = 4
_core_cache: list[Any] = []


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """What it takes to compile the model again for another batch size."""

    core: Any
    model: Any
    device: str
    config: dict[str, Any]
    num_requests: int | None


def _ov() -> Any:
    import openvino

    return openvino


def _core() -> Any:
    # One Core per process: it owns the loaded device plugins, which are costly to load twice.
    if not _core_cache:
        _core_cache.append(_ov().Core())
    return _core_cache[0]


def require_backend() -> None:
    """Import OpenVINO.

    Raises:
        ImportError: the openvino package is not installed.
    """
    _ov()


def backend_info() -> dict[str, Any]:
    """Name, version and every available device with its full name.

    Raises:
        ImportError: the openvino package is not installed.
    """
    ov = _ov()
    core = _core()
    devices = [
        {"device": d, "full_name": str(core.get_property(d, "FULL_DEVICE_NAME"))}
        for d in core.available_devices
    ]
    return {"name": _NAME, "version": ov.get_version(), "package": "openvino", "devices": devices}


def describe(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the model's input and output specs (first tensor name of each port).

    Raises:
        InferenceError: the file is missing or OpenVINO cannot read it.
    """
    model = _read(Path(model_path))
    return [_spec(p) for p in model.inputs], [_spec(p) for p in model.outputs]


def open_session(
    model_path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], options: SessionOptions
) -> BaseSession:
    """Compile the model on the requested device (or the fallback device, per policy).

    Raises:
        ManifestError: a manifest spec does not match the model.
        ConfigError: the performance hint is not one OpenVINO knows.
        BackendUnavailableError: the device is absent and the policy is strict, or the
            fallback device is absent too.
        InferenceError: the model could not be read or compiled.
    """
    model_path = Path(model_path)
    ov = _ov()
    core = _core()
    model = _read(model_path)
    model_inputs = [_spec(p) for p in model.inputs]
    model_outputs = [_spec(p) for p in model.outputs]
    in_aliases = {n: _spec(p).name for p in model.inputs for n in p.get_names()}
    out_aliases = {n: _spec(p).name for p in model.outputs for n in p.get_names()}
    in_specs = check_specs(model_path, "input", inputs, model_inputs, in_aliases)
    out_specs = check_specs(model_path, "output", outputs, model_outputs, out_aliases)

    target, fell_back, reason = _pick_device(core.available_devices, options)
    config = _config(options, target)
    if target == "NPU":
        # The NPU compiler wants static shapes; other batch sizes get their own compiled copy.
        model = _with_batch(model, 1) if _static_batch(model) is None else model
    compiled = _compile(core, model, target, config, model_path)
    execution = list(compiled.get_property("EXECUTION_DEVICES"))
    hint = _property(compiled, "INFERENCE_PRECISION_HINT")
    details = {
        "performance_hint": _property(compiled, "PERFORMANCE_HINT"),
        "inference_precision_hint": hint,
        "optimal_number_of_infer_requests": _property(compiled, "OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
        "full_device_names": {d: _full_name(core, d) for d in execution},
        "cache_dir": config.get("CACHE_DIR"),
        "model": str(model_path),
    }
    threads = _property(compiled, "INFERENCE_NUM_THREADS") if target == "CPU" else None
    info = SessionInfo(
        runtime=Runtime.OPENVINO,
        runtime_version=ov.get_version(),
        backend="openvino",
        requested_device=options.device,
        actual_device=", ".join(execution),
        precision=_precision(model, hint),
        threads=int(threads) if threads else options.runtime_options.threads,
        requested_accelerator=options.device.value,
        actual_accelerator=", ".join(execution),
        fell_back=fell_back,
        fallback_reason=reason,
        details=details,
    )
    in_index = {s.name: i for i, s in enumerate(model_inputs)}
    out_index = {s.name: i for i, s in enumerate(model_outputs)}
    feeds = [(given.name, in_index[spec.name]) for given, spec in zip(inputs, in_specs)]
    fetches = [(given.name, out_index[spec.name]) for given, spec in zip(outputs, out_specs)]
    state = _Compiled(core, model, target, config, options.runtime_options.num_requests)
    # Any batch size runs (other batches of a static model get their own compiled copy).
    return OpenVINOSession(
        state, compiled, feeds, fetches, with_dynamic_batch(inputs), with_dynamic_batch(outputs), info
    )


class OpenVINOSession(BaseSession):
    """One reused InferRequest for ``run``; an AsyncInferQueue for ``run_async``."""

    def __init__(
        self,
        state: _Compiled,
        compiled: Any,
        feeds: list[tuple[str, int]],
        fetches: list[tuple[str, int]],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
    ) -> None:
        super().__init__(inputs, outputs, info)
        self._state = state
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._static_batch = _static_batch(state.model)
        self._variants: dict[int, Any] = {}
        self._queue: Any = None
        self._feeds = feeds
        self._fetches = fetches
        self._first_input = feeds[0][0] if feeds else None

    def _run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = self._request
        if self._static_batch is not None and feed[self._first_input].shape[0] != self._static_batch:
            request = self._variant(feed[self._first_input].shape[0])
        # share_inputs avoids a copy of the feed; outputs are copied (share_outputs=False) so
        # they survive the next call.
        result = request.infer({index: feed[name] for name, index in self._feeds}, share_inputs=True)
        return {name: result[index] for name, index in self._fetches}

    def run_async(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run many feeds through parallel infer requests (throughput mode); results in order.

        The number of requests is runtime_options.num_requests, else the compiled model's
        OPTIMAL_NUMBER_OF_INFER_REQUESTS.

        Raises:
            InputError: a feed does not match the inputs, or has a batch size other than the
                compiled one of a static-batch model (use ``run`` for those).
            InferenceError: the session is closed or a request failed.
        """
        if self._closed:
            raise InferenceError("openvino session is closed; open a new one")
        for feed in feeds:
            check_feed(self._inputs, feed, where="openvino session (async)")
            if self._static_batch is not None and feed[self._first_input].shape[0] != self._static_batch:
                raise InputError(
                    f"openvino session (async): the model is compiled for batch {self._static_batch}, "
                    f"got {feed[self._first_input].shape[0]}; use run() for other batch sizes"
                )
        queue = self._async_queue()
        results: list[dict[str, np.ndarray] | None] = [None] * len(feeds)
        errors: list[BaseException] = []
        fetches = self._fetches

        def done(request: Any, index: int) -> None:
            try:
                results[index] = {n: request.get_output_tensor(i).data.copy() for n, i in fetches}
            except Exception as e:  # noqa: BLE001 - re-raised below, outside the callback thread
                errors.append(e)

        queue.set_callback(done)
        try:
            for i, feed in enumerate(feeds):
                tensors = {index: feed[name] for name, index in self._feeds}
                queue.start_async(tensors, userdata=i, share_inputs=True)
            queue.wait_all()
        except Exception as e:  # noqa: BLE001 - backend errors vary; wrap them with the cause
            raise InferenceError(f"openvino async inference failed: {e}") from e
        if errors:
            raise InferenceError(f"openvino async inference failed: {errors[0]}") from errors[0]
        return results  # type: ignore[return-value]

    def _async_queue(self) -> Any:
        if self._queue is None:
            optimal = self.info.details.get("optimal_number_of_infer_requests") or 1
            self._queue = _ov().AsyncInferQueue(self._compiled, self._state.num_requests or int(optimal))
        return self._queue

    def _variant(self, batch: int) -> Any:
        request = self._variants.get(batch)
        if request is None:
            if len(self._variants) >= _MAX_VARIANTS:
                self._variants.pop(next(iter(self._variants)))
            state = self._state
            compiled = _compile(state.core, _with_batch(state.model, batch), state.device, state.config)
            request = self._variants[batch] = compiled.create_infer_request()
        return request

    def _close(self) -> None:
        self._request = self._queue = self._compiled = None
        self._variants.clear()


def _read(model_path: Path) -> Any:
    require_file(model_path, _NAME)
    if model_path.suffix == ".xml" and not model_path.with_suffix(".bin").exists():
        raise InferenceError(
            f"{_NAME}: the weights {model_path.with_suffix('.bin')} of {model_path} are missing; "
            f"an IR is an .xml and a .bin side by side: re-package the bundle"
        )
    try:
        return _core().read_model(str(model_path))
    except RuntimeError as e:
        raise load_failed(model_path, _NAME, e) from e


def _compile(
    core: Any, model: Any, device: str, config: dict[str, Any], model_path: Path | None = None
) -> Any:
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as e:
        raise InferenceError(
            f"{_NAME} could not compile {model_path or 'the model'} for {device} with {config}: {e}; "
            f"check the device driver, or try device CPU"
        ) from e


def _pick_device(available: list[str], options: SessionOptions) -> tuple[str, bool, str | None]:
    requested = options.device.value
    if options.device is Device.AUTO or _present(requested, available):
        return requested, False, None
    fallback = (options.fallback_device or Device.CPU).value
    reason = accelerator_unavailable(
        options,
        _NAME,
        f"device {requested} is not available (available devices: {', '.join(available) or 'none'})",
        f"run on a machine with the {requested} and its driver",
    )
    if not _present(fallback, available):
        raise BackendUnavailableError(
            f"{_NAME}: device {requested} is not available and neither is the fallback device "
            f"{fallback} (available: {', '.join(available)}); set fallback_device in the profile"
        )
    return fallback, True, f"{reason}; ran on {fallback}"


def _present(device: str, available: list[str]) -> bool:
    return any(d == device or d.startswith(device + ".") for d in available)


def _config(options: SessionOptions, device: str) -> dict[str, Any]:
    ro = options.runtime_options
    config: dict[str, Any] = {}
    if ro.performance_hint:
        hint = ro.performance_hint.upper()
        if hint not in _HINTS:
            raise ConfigError(
                f"{_NAME}: performance_hint {ro.performance_hint!r} is not one of {', '.join(_HINTS)}"
            )
        config["PERFORMANCE_HINT"] = hint
    if ro.threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = int(ro.threads)
    if ro.inference_precision:
        config["INFERENCE_PRECISION_HINT"] = ro.inference_precision
    elif device == "CPU":
        # The CPU plugin defaults to bf16 on CPUs with AMX/AVX512-BF16, which breaks fp32
        # parity silently; a profile that wants bf16/f16 execution says so explicitly.
        config["INFERENCE_PRECISION_HINT"] = "f32"
    if ro.cache_dir:
        config["CACHE_DIR"] = str(Path(ro.cache_dir).expanduser())
    return config


def _static_batch(model: Any) -> int | None:
    """The batch all inputs share when it is static, None when it is dynamic (or rank 0)."""
    batches = set()
    for port in model.inputs:
        shape = port.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() == 0 or shape[0].is_dynamic:
            return None
        batches.add(shape[0].get_length())
    return batches.pop() if len(batches) == 1 else None


def _with_batch(model: Any, batch: int) -> Any:
    copy = model.clone()
    shapes = {}
    for i, port in enumerate(copy.inputs):
        shape = port.get_partial_shape()
        shape[0] = batch
        shapes[i] = shape
    copy.reshape(shapes)
    return copy


def _full_name(core: Any, device: str) -> str | None:
    try:
        return str(core.get_property(device, "FULL_DEVICE_NAME"))
    except RuntimeError:
        return None


def _property(compiled: Any, name: str) -> Any:
    # Not every device supports every property (AUTO, NPU); a missing one is reported as None.
    try:
        value = compiled.get_property(name)
    except RuntimeError:
        return None
    return value.get_type_name() if hasattr(value, "get_type_name") else value


def _spec(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = [] if shape.rank.is_dynamic else [d.get_length() if d.is_static else -1 for d in shape]
    return make_spec(port.get_any_name(), dims, port.get_element_type().to_dtype())


def _precision(model: Any, hint: str | None) -> Precision:
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


# Ops that carry no activation of their own: plumbing, and the weight-side decompression
# subgraphs of fp16/int8 IRs (caught below as ops fed by constants only).
_NOT_LAYERS = frozenset({"Parameter", "Result", "Constant", "Convert", "FakeQuantize", "ShapeOf"})


def layer_outputs(model_path: Path, feed: Mapping[str, np.ndarray]) -> list[tuple[str, str, np.ndarray]]:
    """Every activation of the IR on ``feed``: (friendly name, op type, value), in topological order.

    For localising a parity failure: the IR is compiled on CPU with every layer's output added
    as a model output and f32 inference precision, so values compare with an fp32 model's.

    Raises:
        InferenceError: the IR cannot be read, compiled or run on ``feed``.
    """
    model = _read(Path(model_path))
    weight_side: set[str] = set()
    layers = []
    for op in model.get_ordered_ops():
        name, kind = op.get_friendly_name(), op.get_type_name()
        sources = [op.input_value(i).get_node() for i in range(op.get_input_size())]
        if kind == "Constant" or (sources and all(s.get_friendly_name() in weight_side for s in sources)):
            weight_side.add(name)
            continue
        if kind in _NOT_LAYERS or op.get_output_size() != 1 or not op.get_output_element_type(0).is_real():
            continue
        layers.append(op)
    model.add_outputs([op.output(0) for op in layers])
    compiled = _compile(_core(), model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}, Path(model_path))
    try:
        results = compiled(dict(feed))
    except RuntimeError as e:
        raise InferenceError(f"{_NAME}: {model_path} failed on the localisation inputs: {e}") from e
    values = {}
    for port in compiled.outputs:
        node = port.get_node().input_value(0).get_node() if port.get_node().get_type_name() == "Result" else port.get_node()
        values.setdefault(node.get_friendly_name(), np.asarray(results[port]))
    # Named by the output tensor where the model has tensor names (ONNX): an optimizer that fuses
    # BatchNorm into a convolution keeps the node's name but gives it the fused tensor's name.
    return [(min(op.output(0).get_names(), default=op.get_friendly_name()), op.get_type_name(),
             values[op.get_friendly_name()]) for op in layers if op.get_friendly_name() in values]
