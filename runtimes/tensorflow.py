"""TensorFlow reference adapter: the server model itself (a Keras ``.keras``/``.h5`` file or a
SavedModel directory, or its ``saved_model.pb`` as a bundle names it), on a GPU when one is
present, else on the CPU in fp32.

Precision is fp32 unless the Keras model computes in float16/bfloat16 (a mixed-precision
policy on any layer -> mixed) or a SavedModel takes float16 inputs (-> fp16).

Threads: a traced concrete function may be called from several threads at once (TensorFlow's
eager runtime is thread-safe and every call gets its own output tensors; checked by
tests/sdk/test_threads.py), so a session is shared as is, at most ``SessionOptions.concurrency``
calls at once when it is set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from runtimes._common import (
    accelerator_unavailable,
    check_specs,
    load_failed,
    make_spec,
    require_file,
    require_single_input,
)
from runtimes._pool import Concurrency, PooledSession
from sdk.enums import Device, Precision, Runtime
from sdk.errors import BackendUnavailableError, InferenceError
from sdk.runtime import BareStep, BaseSession, Session, SessionInfo, SessionOptions
from sdk.tensors import TensorSpec

_NAME = "tensorflow"
_SIGNATURE = "serving_default"
_SAVED_MODEL_PB = "saved_model.pb"


def _tf() -> Any:
    import tensorflow

    return tensorflow


def require_backend() -> None:
    """Import TensorFlow.

    Raises:
        ImportError: tensorflow (or tensorflow-cpu) is not installed.
    """
    _tf()


def backend_info() -> dict[str, Any]:
    """Name, version, Keras version and the GPUs TensorFlow sees.

    Raises:
        ImportError: tensorflow is not installed.
    """
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    devices = ["CPU"] + [f"{g.name} ({_gpu_name(g)})" for g in gpus]
    info = {"name": _NAME, "version": tf.__version__, "package": "tensorflow", "devices": devices}
    try:
        import keras

        info["keras_version"] = keras.__version__
    except ImportError:
        info["keras_version"] = None
    return info


def describe(model_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Read the input/output specs: Keras Input layer and output layer names, or the SavedModel's
    ``serving_default`` signature.

    Raises:
        BackendUnavailableError: keras is missing for a Keras file.
        InferenceError: the path is missing or not a loadable Keras file / SavedModel.
    """
    loaded = _load(Path(model_path))
    return loaded.inputs, loaded.outputs


def open_session(
    model_path: Path, inputs: list[TensorSpec], outputs: list[TensorSpec], options: SessionOptions
) -> BaseSession:
    """Load the model and trace it once for the requested device.

    Raises:
        ManifestError: a manifest spec does not match the model.
        BackendUnavailableError: no GPU is present and the policy is strict, or keras is
            missing for a Keras file.
        InferenceError: the model could not be loaded.
    """
    model_path = Path(model_path)
    tf = _tf()
    gpus = tf.config.list_physical_devices("GPU")
    fell_back, reason = False, None
    if options.device is not Device.CPU and gpus:
        device, actual = "/GPU:0", f"GPU:0 ({_gpu_name(gpus[0])})"
    else:
        device, actual = "/CPU:0", "CPU"
        if options.device not in (Device.CPU, Device.AUTO):
            what = (
                "no GPU present"
                if options.device is Device.GPU
                else (f"the TensorFlow reference runs on GPU or CPU, not {options.device.value}")
            )
            fix = "run the reference on a machine with a CUDA GPU and tensorflow[and-cuda]"
            problem = accelerator_unavailable(options, _NAME, what, fix)
            fell_back, reason = True, f"{problem}: CPU fp32 reference"
    threads_note = _set_threads(tf, options.runtime_options.threads)
    loaded = _load(model_path)
    in_specs = check_specs(model_path, "input", inputs, loaded.inputs)
    out_specs = check_specs(model_path, "output", outputs, loaded.outputs)
    with tf.device(device):
        function = loaded.trace()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    info = SessionInfo(
        runtime=Runtime.TENSORFLOW,
        runtime_version=tf.__version__,
        backend="tensorflow",
        requested_device=options.device,
        actual_device=actual,
        precision=loaded.precision,
        threads=intra or None,  # 0 means TensorFlow picks
        requested_accelerator=options.device.value,
        actual_accelerator=device,
        fell_back=fell_back,
        fallback_reason=reason,
        details={"format": loaded.kind, "threads": threads_note, "model": str(model_path)},
    )
    feeds = [(given.name, spec.name) for given, spec in zip(inputs, in_specs, strict=True)]
    fetches = [(given.name, spec.name) for given, spec in zip(outputs, out_specs, strict=True)]
    policy = Concurrency(worker=None, call="the traced concrete function", default=None)
    return TensorFlowSession(
        loaded, function, device, feeds, fetches, inputs, outputs, info, policy=policy, requested=options.concurrency
    )


def bare_step(session: Session, model_path: Path, example: np.ndarray) -> tuple[str, BareStep]:
    """A loop over the model's own TensorFlow call on the device ``session`` ran on: the
    SavedModel's ``serving_default`` signature, or a concrete function of the Keras model.

    Raises:
        ConfigError: the model has more than one input.
        BackendUnavailableError: keras is missing for a Keras file.
        InferenceError: the model cannot be loaded.
    """
    tf = _tf()
    device = session.info.actual_accelerator or "/CPU:0"
    loaded = _load(Path(model_path))
    require_single_input(len(loaded.inputs), Path(model_path))
    if loaded.kind == "savedmodel":
        signature = loaded.obj.signatures[_SIGNATURE]
        name = loaded.inputs[0].name

        def call(x: Any) -> list[Any]:
            return list(signature(**{name: x}).values())

        description = "tensorflow SavedModel serving_default signature"
    else:
        model = loaded.obj
        spec = tf.TensorSpec([None, *example.shape[1:]], example.dtype)
        concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)

        def call(x: Any) -> list[Any]:
            result = concrete(x)
            return list(result.values()) if isinstance(result, dict) else list(tf.nest.flatten(result))

        description = "tensorflow concrete function of the Keras model"

    def step(x: np.ndarray) -> list[np.ndarray]:
        with tf.device(device):
            return [t.numpy() for t in call(tf.convert_to_tensor(x))]

    return description, step


class TensorFlowSession(PooledSession[Any]):
    """Calls a traced concrete function (no Keras ``__call__`` overhead, no retracing), shared by every call."""

    def __init__(
        self,
        loaded: _Loaded,
        function: Any,
        device: str,
        feeds: list[tuple[str, str]],
        fetches: list[tuple[str, str]],
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        info: SessionInfo,
        *,
        policy: Concurrency,
        requested: int | None,
    ) -> None:
        # The "pool" hands every call the same function: it only bounds how many run at once.
        super().__init__(
            inputs, outputs, info, policy=policy, requested=requested, make=lambda: function, first=function
        )
        self._tf = _tf()
        self._loaded: _Loaded | None = loaded  # a SavedModel's variables live only as long as this object
        self._device = device
        self._feeds = feeds
        self._fetches = fetches

    def _run_on(self, function: Any, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        with tf.device(self._device):  # thread-local in TensorFlow: each call sets its own
            tensors = {model: tf.convert_to_tensor(feed[given]) for given, model in self._feeds}
            result = function(**tensors)
        return {given: result[model].numpy() for given, model in self._fetches}

    def _close(self) -> None:
        super()._close()  # waits for the calls in flight
        self._loaded = None


@dataclasses.dataclass(frozen=True)
class _Loaded:
    """A loaded Keras model or SavedModel with its specs."""

    kind: str  # "keras" | "savedmodel"
    obj: Any
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    precision: Precision

    def trace(self) -> Any:
        """A function taking the inputs by name and returning a dict of outputs by name."""
        if self.kind == "savedmodel":
            return self.obj.signatures[_SIGNATURE]
        tf = _tf()
        model, names, out_names = self.obj, [s.name for s in self.inputs], [s.name for s in self.outputs]
        signature = [tf.TensorSpec([None if d < 0 else d for d in s.shape], s.dtype, name=s.name) for s in self.inputs]

        def call(*args: Any) -> dict[str, Any]:
            result = model(args[0] if len(args) == 1 else dict(zip(names, args, strict=False)), training=False)
            if isinstance(result, Mapping):
                return dict(result)
            if isinstance(result, (list, tuple)):
                return dict(zip(out_names, result, strict=False))
            return {out_names[0]: result}

        concrete = tf.function(call).get_concrete_function(*signature)
        return lambda **kw: concrete(*(kw[n] for n in names))


def _load(model_path: Path) -> _Loaded:
    require_file(model_path, _NAME, directory_ok=True)
    if model_path.name == _SAVED_MODEL_PB and model_path.is_file():
        # A bundle names its SavedModel by saved_model.pb (a manifest lists files): load the directory.
        model_path = model_path.parent
    tf = _tf()
    if model_path.is_dir():
        try:
            obj = tf.saved_model.load(str(model_path))
        except Exception as e:
            raise load_failed(model_path, _NAME, e) from e
        if _SIGNATURE not in obj.signatures:
            raise InferenceError(
                f"{_NAME}: SavedModel {model_path} has no {_SIGNATURE!r} signature (it has "
                f"{sorted(obj.signatures)}); export it with model.export(dir, format='tf_saved_model')"
            )
        signature = obj.signatures[_SIGNATURE]
        given = signature.structured_input_signature[1]
        inputs = [make_spec(name, s.shape.as_list(), s.dtype.as_numpy_dtype) for name, s in given.items()]
        outputs = [
            make_spec(name, s.shape.as_list(), s.dtype.as_numpy_dtype)
            for name, s in signature.structured_outputs.items()
        ]
        precision = Precision.FP16 if any(s.dtype == "float16" for s in inputs) else Precision.FP32
        return _Loaded("savedmodel", obj, inputs, outputs, precision)
    try:
        import keras
    except ImportError as e:
        raise BackendUnavailableError(
            f"{_NAME}: loading {model_path} needs keras; install it with: pip install 'shelfedge[tf]'"
        ) from e
    try:
        model = keras.saving.load_model(str(model_path), compile=False)
    except Exception as e:
        raise load_failed(model_path, _NAME, e) from e
    inputs = [make_spec(t.name, t.shape, t.dtype) for t in model.inputs]
    outputs = [make_spec(name, t.shape, t.dtype) for name, t in zip(model.output_names, model.outputs, strict=False)]
    mixed = any(
        getattr(getattr(layer, "dtype_policy", None), "compute_dtype", "float32") in ("float16", "bfloat16")
        for layer in model.layers
    )
    return _Loaded("keras", model, inputs, outputs, Precision.MIXED if mixed else Precision.FP32)


def _set_threads(tf: Any, threads: int | None) -> str:
    if not threads:
        return "TensorFlow default"
    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
    except RuntimeError as e:
        # TensorFlow fixes its thread pools at first use; a later request cannot apply.
        return f"{threads} requested, not applied: {e}"
    return f"{threads} (process-wide)"


def _gpu_name(gpu: Any) -> str:
    details = _tf().config.experimental.get_device_details(gpu)
    return str(details.get("device_name", gpu.name))
