"""Quantization-aware fine-tuning: the last resort when post-training quantization misses the budget.

``convert`` runs it only for an int8 candidate that missed the accuracy budget after plain
PTQ, accuracy control and sensitive layers kept in float. The fp32 Keras model is fine-tuned
for a short while with every Conv2D / DepthwiseConv2D / Dense kernel fake-quantized the way
the int8 runtimes store it (symmetric, per output channel, ``2**(bits-1) - 1`` levels a side)
and a straight-through estimator for the rounding; the loss is a self-distillation towards the
fp32 model's own outputs (optionally plus the hard labels), so the model learns weights whose quantized
version answers like the float one. The activations an int8 graph stores are fake-quantized too
(8 bits over their min/max on training photos, as PTQ calibrates them). The format's PTQ then
runs again on the fine-tuned weights (its own calibration decides the deployed ranges).

Per-channel symmetric weight quantization commutes with the per-channel scale of a BatchNorm
folded into the convolution, so fake-quantizing the unfolded kernels (BatchNorm frozen in
inference mode) trains exactly what the folded int8 kernel will be.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.models.config_checks import check_fields
from converters.training.loop import Log, LoopConfig, train_loop
from sdk.errors import ConfigError, ConversionError

if TYPE_CHECKING:
    import keras

__all__ = ["STEP_NAME", "QATConfig", "QATResult", "fake_quantize", "fine_tune", "quantized_kernels"]

STEP_NAME = "quantization_aware_fine_tuning"


@dataclasses.dataclass(frozen=True, kw_only=True)
class QATConfig:
    """How long and how gently to fine-tune.

    Attributes:
        epochs: passes over the training subset.
        lr: peak AdamW learning rate (small: the weights only need to move within a quantization step).
        batch_size: training batch.
        per_class: training photos per class (class-balanced subset of ``train``).
        weight_bits: bits of the quantized kernels (8; 7 where the runtime keeps weights in 7
            bits, as OpenVINO's overflow fix does for CPUs without VNNI).
        alpha: weight of the self-distillation term vs the hard labels (1: only "answer like
            fp32", which is what the budget and the parity tolerances ask).
        temperature: of the self-distillation term (1: the distribution whose top-1 is judged).
        activations: fake-quantize the activations an int8 runtime stores (activation,
            residual add, BatchNorm output not followed by an activation, pooling, logits) to
            8 bits over their min/max on ``range_samples`` training photos, as PTQ calibrates
            them; False trains for weight quantization only.
        range_samples: photos the activation ranges are measured on.
        seed: of the subset and the batch order.

    Measured on the small Grocery CNN, LiteRT int8 (`convert --qat always`; 296 val photos, so
    one photo is 0.34 pt): PTQ 0.405 val top-1, 0.966 top-1 agreement with fp32. QAT with the
    first settings (weights only, lr 1e-4, alpha 0.7, T 2, dropout on): 0.415 / 0.929 and
    0.409 / 0.943 in two runs; with these defaults (weights and activations, no dropout, T 1,
    alpha 1, lr 3e-5): 0.405 / 0.970; lr 1e-4: 0.399 / 0.963.
    """

    epochs: int = 2
    lr: float = 3e-5
    batch_size: int = 32
    per_class: int = 20
    weight_bits: int = 8
    alpha: float = 1.0
    temperature: float = 1.0
    activations: bool = True
    range_samples: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("epochs", self.epochs >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("per_class", self.per_class >= 1, ">= 1"),
            ("weight_bits", 2 <= self.weight_bits <= 8, "in 2..8"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
        )
        check_fields(self, checks)

    def loop_config(self) -> LoopConfig:
        """The objective for :func:`converters.training.loop.train_loop`: self-distillation, no weight decay.

        Weight decay would pull the weights off the values fp32 answers with, which is all QAT wants to keep.
        """
        return LoopConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=0.0,
            alpha=self.alpha,
            temperature=self.temperature,
            label_smoothing=0.0,
            shuffle_seed=(self.seed, 2),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class QATResult:
    model_path: Path
    kernels: int
    history: tuple[dict[str, float], ...]
    fake_quant_agreement_before: float
    fake_quant_agreement_after: float
    seconds: float

    def record(self) -> dict[str, Any]:
        """What the provenance step keeps."""
        return {
            "kernels_fake_quantized": self.kernels,
            "history": list(self.history),
            "fake_quant_top1_agreement_before": round(self.fake_quant_agreement_before, 4),
            "fake_quant_top1_agreement_after": round(self.fake_quant_agreement_after, 4),
        }


def fake_quantize(kernel: Any, channel_axis: int, bits: int) -> Any:
    """Symmetric per-channel quantize-dequantize with a straight-through gradient (TensorFlow)."""
    import tensorflow as tf

    axes = [a for a in range(len(kernel.shape)) if a != channel_axis % len(kernel.shape)]
    levels = float(2 ** (bits - 1) - 1)
    scale = tf.maximum(tf.reduce_max(tf.abs(kernel), axis=axes, keepdims=True), 1e-12) / levels
    quantized = tf.clip_by_value(tf.round(kernel / scale), -levels, levels) * scale
    return kernel + tf.stop_gradient(quantized - kernel)


def quantized_kernels(model: keras.Model) -> dict[str, int]:
    """Variable path -> output-channel axis of every kernel an int8 runtime quantizes."""
    import keras

    axes: dict[str, int] = {}
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            axes[layer.kernel.path] = 2  # (kh, kw, channels, multiplier)
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            axes[layer.kernel.path] = -1
    return axes


def fine_tune(
    model_path: Path, tensors: np.ndarray, labels: np.ndarray, out_path: Path, config: QATConfig, log: Log = print
) -> QATResult:
    """Fine-tune the Keras model at ``model_path`` with fake-quantized kernels; save it to ``out_path``.

    Args:
        tensors: preprocessed training inputs (N, H, W, C) float32, as the model takes them.
        labels: their class ids (N,).

    Raises:
        ConfigError: empty or mismatched tensors/labels.
        ConversionError: the model cannot be loaded, has no quantizable kernel, or cannot be saved.
    """
    import tensorflow as tf

    started = time.perf_counter()
    if len(tensors) == 0 or len(tensors) != len(labels):
        raise ConfigError(f"QAT needs training tensors with one label each, got {len(tensors)} and {len(labels)}")
    model, axes = _load(model_path)
    simulated = _with_activation_fake_quant(model, tensors[: config.range_samples]) if config.activations else model
    trainable = list(simulated.trainable_variables)  # the same variables as the model's (shared layers)
    non_trainable = list(simulated.non_trainable_variables)
    bits = config.weight_bits

    def forward(x: Any, training: bool) -> Any:
        values = [fake_quantize(v, axes[v.path], bits) if v.path in axes else v for v in trainable]
        # training=False: no dropout either; the objective is exactly "the quantized model answers like fp32".
        outputs, _ = simulated.stateless_call(values, [v.value for v in non_trainable], x, training=False)
        return outputs

    fq_fn = tf.function(lambda x: forward(tf.cast(x, tf.float32), False), reduce_retracing=True)
    float_fn = tf.function(lambda x: model(tf.cast(x, tf.float32), training=False), reduce_retracing=True)
    reference = _predict(float_fn, tensors)
    before = _agreement(_predict(fq_fn, tensors), reference)
    log(
        f"[qat] {len(axes)} kernels fake-quantized to {bits} bits"
        + (f", {len(simulated.layers) - len(model.layers)} activations to 8 bits" if config.activations else "")
        + "; fp32 vs fake-quantized top-1 agreement on "
        f"{len(tensors)} training photos before: {before:.4f}"
    )
    # The only augmentation: a product photo mirrored is still the product. Its target is the
    # fp32 model's output on the mirrored photo, not on the original.
    mirrored = _predict(float_fn, np.ascontiguousarray(tensors[:, :, ::-1]))
    history = train_loop(
        forward=forward,
        variables=trainable,
        sample=_mirror_sampler(tensors, reference, mirrored, config.seed),
        labels=np.asarray(labels, np.int32),
        config=config.loop_config(),
        evaluate=None,
        log=log,
        label="qat",
    )
    after = _agreement(_predict(fq_fn, tensors), reference)
    log(f"[qat] fp32 vs fake-quantized top-1 agreement after: {after:.4f}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save(str(out_path))
    except Exception as e:
        raise ConversionError(f"{STEP_NAME}: cannot save the fine-tuned model to {out_path} ({e})") from e
    return QATResult(
        model_path=out_path,
        kernels=len(axes),
        history=tuple(history),
        fake_quant_agreement_before=before,
        fake_quant_agreement_after=after,
        seconds=time.perf_counter() - started,
    )


def _load(model_path: Path) -> tuple[keras.Model, dict[str, int]]:
    """The fp32 model with BatchNorm frozen, and the output-channel axis of each kernel to fake-quantize.

    Raises:
        ConversionError: the model cannot be loaded or has no quantizable kernel.
    """
    import keras

    try:
        model = keras.saving.load_model(str(model_path), compile=False)
    except Exception as e:
        raise ConversionError(f"{STEP_NAME}: {model_path}: cannot load the Keras model ({e})") from e
    axes = quantized_kernels(model)
    if not axes:
        raise ConversionError(f"{STEP_NAME}: {model_path} has no Conv2D/DepthwiseConv2D/Dense kernel to train")
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False  # inference mode: the statistics int8 folds stay as they are
    return model, axes


def _mirror_sampler(
    tensors: np.ndarray, reference: np.ndarray, mirrored: np.ndarray, seed: int
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Items -> (photos, fp32 targets), each photo mirrored with probability 1/2 (with its mirrored target)."""
    rng = np.random.default_rng([seed, 3])

    def sample(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        batch, targets = tensors[idx], reference[idx]
        flip = rng.random(len(idx)) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        targets[flip] = mirrored[idx[flip]]
        return batch, targets

    return sample


def _with_activation_fake_quant(model: keras.Model, samples: np.ndarray) -> keras.Model:
    """The same layers (shared weights) with 8-bit fake quantization after every stored activation."""
    import keras
    import tensorflow as tf

    consumers: dict[int, list[Any]] = {}  # layer id -> the layers fed by its output
    for other in model.layers:
        for node in other._inbound_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor._keras_history.operation), []).append(other)
    stored = [layer for layer in model.layers if _stores_activation(layer, consumers.get(id(layer), []))]
    if not stored:
        return model
    probe = keras.Model(model.inputs, [layer.output for layer in stored])
    values = probe.predict(samples, verbose=0, batch_size=64)
    values = values if isinstance(values, list) else [values]
    ranges = {
        layer.name: (min(float(v.min()), 0.0), max(float(v.max()), 0.0))
        for layer, v in zip(stored, values, strict=True)
    }

    class FakeQuant(keras.layers.Layer):
        def __init__(self, low: float, high: float, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.low, self.high = low, high

        def call(self, x: Any) -> Any:
            # 8-bit affine over [low, high] with a straight-through gradient inside the range.
            return tf.quantization.fake_quant_with_min_max_args(x, min=self.low, max=self.high, num_bits=8)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        out = layer(*args, **kwargs)
        if layer.name in ranges:
            out = FakeQuant(*ranges[layer.name], name=f"{layer.name}_fake_quant")(out)
        return out

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def _stores_activation(layer: Any, following: list[Any]) -> bool:
    """Whether an int8 graph keeps this layer's output as an int8 tensor (after fusing Conv+BN+ReLU)."""
    import keras

    if isinstance(
        layer,
        (
            keras.layers.ReLU,
            keras.layers.Activation,
            keras.layers.Add,
            keras.layers.Dense,
            keras.layers.GlobalAveragePooling2D,
            keras.layers.AveragePooling2D,
        ),
    ):
        return True
    if isinstance(layer, keras.layers.BatchNormalization):
        return not (len(following) == 1 and isinstance(following[0], (keras.layers.ReLU, keras.layers.Activation)))
    return False


def _all_layers(model: Any) -> list[Any]:
    layers = []
    for layer in model.layers:
        layers.extend(_all_layers(layer) if hasattr(layer, "layers") else [layer])
    return layers


def _predict(fn: Callable[[Any], Any], tensors: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([np.asarray(fn(tensors[i : i + batch_size])) for i in range(0, len(tensors), batch_size)])


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())
