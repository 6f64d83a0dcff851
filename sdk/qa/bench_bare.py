"""Bare loops over each runtime's own API, timed interleaved with the adapter, for ``sdk.qa.bench``.

The issue's promise is that an adapter adds no hidden overhead: its inference-only latency
stays within 1.1x of a loop a skilled user would write against the backend directly, on the
same model file with the same settings (threads, precision hint, providers). Each bare loop
here is that loop; it returns numpy arrays, as the adapter does, so both sides pay for the
same output copy.

Benchmark code may call backend APIs directly, but still imports them lazily, inside the
functions: ``sdk`` must import without any backend installed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdk.qa.bench_stats import gc_paused
from sdk.enums import Runtime
from sdk.errors import ConfigError
from sdk.runtime import SessionInfo

BareStep = Callable[[np.ndarray], list[np.ndarray]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Overhead:
    """Adapter vs bare loop, timed in alternating blocks of the same run.

    ``ratio`` is the median over blocks of (adapter block p50 / bare block p50): each block
    pair ran under the same machine conditions, so this paired estimate stays put on a busy
    machine where ``pooled_ratio`` (adapter p50 / bare p50 over all calls) swings with the
    load. Both are reported; 1.0 means no overhead.
    """

    bare_api: str  # what the bare loop calls, e.g. "openvino InferRequest.infer"
    adapter_p50_ms: float
    bare_p50_ms: float
    ratio: float
    pooled_ratio: float
    block_ratio_p25: float  # the spread of the per-block ratios
    block_ratio_p75: float
    blocks: int
    calls_per_block: int
    max_abs_diff: float  # adapter vs bare outputs: proves both ran the same model

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def bare_step(runtime: Runtime, model_path: Path, info: SessionInfo, example: np.ndarray) -> tuple[str, BareStep]:
    """A (description, step) pair: ``step(x)`` runs the model file with the backend's own API.

    ``info`` is the adapter session's, so the bare loop uses the same backend package, device,
    threads and precision hint; ``example`` sets the input shape the loop is prepared for.

    Raises:
        ConfigError: the model has more than one input (the bare loops feed one tensor).
        ImportError: the backend is not installed.
    """
    builders = {
        Runtime.LITERT: _litert,
        Runtime.OPENVINO: _openvino,
        Runtime.ONNXRUNTIME: _onnxruntime,
        Runtime.TENSORFLOW: _tensorflow,
    }
    return builders[runtime](Path(model_path), info, example)


def measure_overhead(
    adapter: Callable[[np.ndarray], np.ndarray],
    bare: tuple[str, BareStep],
    example: np.ndarray,
    *,
    blocks: int,
    calls_per_block: int,
    warmup: int,
) -> Overhead:
    """Time ``adapter(x)`` and the bare step in alternating blocks (A B, B A, A B...).

    Alternating short blocks cancels the drifts of a shared machine (another job, frequency
    changes): both loops see the same conditions, so their ratio is stable even when absolute
    times are not. The A B / B A order cancels any advantage of going first or second.
    """
    description, step = bare
    reference = np.asarray(adapter(example))
    outputs = step(example)
    diffs = [float(np.max(np.abs(o.astype(np.float64) - reference))) for o in outputs if o.shape == reference.shape]
    for _ in range(warmup):
        adapter(example)
        step(example)
    clock = time.perf_counter_ns
    timed: dict[str, list[float]] = {"adapter": [], "bare": []}
    block_ratios = []
    loops: dict[str, Callable[[np.ndarray], object]] = {"adapter": adapter, "bare": step}
    with gc_paused():
        for b in range(blocks):
            order = ("adapter", "bare") if b % 2 == 0 else ("bare", "adapter")
            block: dict[str, list[float]] = {"adapter": [], "bare": []}
            for name in order:
                call = loops[name]
                for _ in range(calls_per_block):
                    t0 = clock()
                    call(example)
                    block[name].append((clock() - t0) / 1e6)
            block_ratios.append(float(np.median(block["adapter"]) / np.median(block["bare"])))
            for name in timed:
                timed[name].extend(block[name])
    adapter_p50 = float(np.median(timed["adapter"]))
    bare_p50 = float(np.median(timed["bare"]))
    p25, p50, p75 = np.percentile(block_ratios, [25, 50, 75])
    return Overhead(
        bare_api=description,
        adapter_p50_ms=adapter_p50,
        bare_p50_ms=bare_p50,
        ratio=float(p50),
        pooled_ratio=adapter_p50 / bare_p50,
        block_ratio_p25=float(p25),
        block_ratio_p75=float(p75),
        blocks=blocks,
        calls_per_block=calls_per_block,
        max_abs_diff=min(diffs) if diffs else float("nan"),
    )


# --------------------------------------------------------------------------- one per backend


def _litert(model_path: Path, info: SessionInfo, example: np.ndarray) -> tuple[str, BareStep]:
    import importlib

    # The same interpreter package the adapter picked (ai_edge_litert, tflite_runtime or TF).
    if info.backend == "tensorflow.lite":
        interpreter_class = importlib.import_module("tensorflow").lite.Interpreter
    else:
        interpreter_class = importlib.import_module(f"{info.backend}.interpreter").Interpreter
    interpreter = interpreter_class(model_path=str(model_path), num_threads=info.threads)
    inputs = interpreter.get_input_details()
    _single_input(len(inputs), model_path)
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


def _openvino(model_path: Path, info: SessionInfo, example: np.ndarray) -> tuple[str, BareStep]:
    import openvino

    core = openvino.Core()
    model = core.read_model(str(model_path))
    _single_input(len(model.inputs), model_path)
    details = info.details
    # The adapter's compile settings, so the loops differ only in the code around infer().
    config: dict[str, Any] = {}
    if details.get("performance_hint") is not None:
        config["PERFORMANCE_HINT"] = details["performance_hint"]
    if details.get("inference_precision_hint"):
        config["INFERENCE_PRECISION_HINT"] = details["inference_precision_hint"]
    if info.threads and "CPU" in info.actual_device:
        config["INFERENCE_NUM_THREADS"] = int(info.threads)
    device = info.actual_device if "," not in info.actual_device else "AUTO"
    request = core.compile_model(model, device, config).create_infer_request()
    outputs = range(len(model.outputs))

    def step(x: np.ndarray) -> list[np.ndarray]:
        result = request.infer({0: x}, share_inputs=True)
        return [result[i] for i in outputs]

    return "openvino InferRequest.infer", step


def _onnxruntime(model_path: Path, info: SessionInfo, example: np.ndarray) -> tuple[str, BareStep]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if info.threads:
        options.intra_op_num_threads = int(info.threads)
    providers = list(info.details.get("providers") or ["CPUExecutionProvider"])
    session = onnxruntime.InferenceSession(str(model_path), options, providers=providers)
    _single_input(len(session.get_inputs()), model_path)
    name = session.get_inputs()[0].name
    run = session.run

    def step(x: np.ndarray) -> list[np.ndarray]:
        return run(None, {name: x})

    return "onnxruntime InferenceSession.run", step


def _tensorflow(model_path: Path, info: SessionInfo, example: np.ndarray) -> tuple[str, BareStep]:
    import tensorflow as tf

    device = info.actual_accelerator or "/CPU:0"
    if model_path.is_dir():
        signature = tf.saved_model.load(str(model_path)).signatures["serving_default"]
        names = list(signature.structured_input_signature[1])
        _single_input(len(names), model_path)

        def call(x: Any) -> Any:
            return list(signature(**{names[0]: x}).values())

        description = "tensorflow SavedModel serving_default signature"
    else:
        import keras

        model = keras.saving.load_model(str(model_path), compile=False)
        _single_input(len(model.inputs), model_path)
        spec = tf.TensorSpec([None, *example.shape[1:]], example.dtype)
        concrete = tf.function(lambda t: model(t, training=False)).get_concrete_function(spec)

        def call(x: Any) -> Any:
            result = concrete(x)
            return list(result.values()) if isinstance(result, dict) else tf.nest.flatten(result)

        description = "tensorflow concrete function of the Keras model"

    def step(x: np.ndarray) -> list[np.ndarray]:
        with tf.device(device):
            return [t.numpy() for t in call(tf.convert_to_tensor(x))]

    return description, step


def _single_input(count: int, model_path: Path) -> None:
    if count != 1:
        raise ConfigError(
            f"{model_path} has {count} inputs; the bare-loop overhead check feeds one image tensor: "
            f"benchmark it with overhead disabled (BenchConfig(bare_loop=False))"
        )
