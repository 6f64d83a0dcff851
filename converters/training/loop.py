"""The one training loop of the converters: teacher, distillation and quantization-aware fine-tuning.

Every trainer here fits some variables of a Keras model to the same objective,
:func:`distillation_loss` (plain cross-entropy when ``alpha`` is 0), with AdamW and a warm-up +
cosine learning rate, over mini-batches its ``sample`` function draws (cached features, augmented
views, mirrored photos). What differs between trainers is only the data and a few numbers, so
they pass a :class:`LoopConfig` and share :func:`train_loop`, the progress lines
(:class:`RateLog`) and the stage timings (:class:`StageTimer`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from converters.models.config_checks import check_fields
from sdk.errors import ConfigError
from sdk.progress import Log

__all__ = [
    "PROGRESS_EVERY_S",
    "Log",
    "LoopConfig",
    "RateLog",
    "Sampler",
    "StageTimer",
    "distillation_loss",
    "format_seconds",
    "make_optimizer",
    "train_loop",
]

# Samples -> (model inputs, soft targets or None) of those training items.
Sampler = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
# Seconds between two progress lines of a long loop.
PROGRESS_EVERY_S = 20.0
_T = TypeVar("_T")


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``'1m15s'``, ``9`` -> ``'9s'``; ``'?'`` for an unknown (infinite) duration."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class RateLog:
    """Periodic progress lines for a loop over ``total`` items: count, rate, ETA.

    Not thread-safe: one loop advances it.
    """

    def __init__(self, log: Log, label: str, total: int, unit: str = "img") -> None:
        self._log, self._label, self._total, self._unit = log, label, total, unit
        self._start = self._last = time.perf_counter()
        self.done = 0

    def advance(self, n: int, extra: str = "") -> None:
        """Count ``n`` more items; log a line when one is due (every 20 s and at the end)."""
        self.done += n
        now = time.perf_counter()
        if now - self._last >= PROGRESS_EVERY_S or self.done >= self._total:
            self._last = now
            rate = self.done / max(now - self._start, 1e-9)
            eta = (self._total - self.done) / rate if rate > 0 else math.inf
            self._log(
                f"  {self._label}: {self.done}/{self._total} {self._unit}, {rate:.1f} {self._unit}/s, "
                f"ETA {format_seconds(eta)}{extra}"
            )

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start


class StageTimer:
    """Runs the stages of a long job, logs each one's duration and keeps them for the job's report.

    Not thread-safe: a job's stages run one after the other.
    """

    def __init__(self, log: Log, prefix: str) -> None:
        self._log, self._prefix = log, prefix
        self._started = time.perf_counter()
        self.timings: dict[str, float] = {}

    def __call__(self, stage: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, timed as ``stage`` (seconds rounded to 0.1 in :attr:`timings`)."""
        started = time.perf_counter()
        value = fn()
        self.timings[stage] = round(time.perf_counter() - started, 1)
        self._log(f"{self._prefix} {stage}: {format_seconds(self.timings[stage])}")
        return value

    @property
    def seconds(self) -> float:
        """Since the timer was made: the whole job so far."""
        return time.perf_counter() - self._started


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoopConfig:
    """The numbers of one :func:`train_loop` run: schedule, optimizer and loss weights.

    Attributes:
        epochs: passes over the training items (0: no training).
        batch_size: items per step (capped at the number of items).
        lr: peak learning rate, reached after a warm-up of half an epoch, then cosine decay to 0.
        weight_decay: AdamW decoupled weight decay (not on BatchNorm scales/offsets or biases).
        alpha: weight of the soft-target term of :func:`distillation_loss`; 0 is cross-entropy alone.
        temperature: of the soft-target term.
        label_smoothing: of the hard labels.
        shuffle_seed: seeds the batch order (a NumPy seed: an int or a tuple of ints).
    """

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    alpha: float = 0.0
    temperature: float = 1.0
    label_smoothing: float = 0.0
    shuffle_seed: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        checks = (
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("alpha", 0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            ("temperature", self.temperature > 0, "> 0"),
            ("label_smoothing", 0.0 <= self.label_smoothing < 1.0, "in [0, 1)"),
        )
        check_fields(self, checks)


def distillation_loss(
    student_logits: Any,
    labels: Any,
    teacher_logits: Any | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.5,
    label_smoothing: float = 0.0,
) -> Any:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(labels, s)``, batch mean.

    Hinton et al. (2015): the ``T^2`` factor keeps the soft term's gradients on the same scale
    as the hard term's whatever the temperature. The hard term is the cross-entropy with the
    (optionally smoothed) one-hot labels. ``alpha = 0`` is plain cross-entropy (the teacher's
    objective and the no-KD baseline), bit for bit Keras' ``CategoricalCrossentropy(from_logits=True)``.

    Args:
        student_logits: (N, C) float.
        labels: (N,) int class ids.
        teacher_logits: (N, C) float, the teacher's logits for the same inputs; needed when ``alpha > 0``.
        temperature: softens both distributions (> 0).
        alpha: weight of the distillation term, in [0, 1].
        label_smoothing: of the hard targets, in [0, 1).

    Returns:
        A scalar float32 tensor.

    Raises:
        ConfigError: ``alpha > 0`` without teacher logits, or a value out of range.
    """
    import tensorflow as tf

    if not (temperature > 0 and 0.0 <= alpha <= 1.0 and 0.0 <= label_smoothing < 1.0):
        raise ConfigError(
            f"distillation_loss: need temperature > 0, alpha in [0, 1], label_smoothing in [0, 1); "
            f"got {temperature}, {alpha}, {label_smoothing}"
        )
    s = tf.cast(student_logits, tf.float32)
    classes = tf.shape(s)[-1]
    targets = tf.one_hot(tf.cast(labels, tf.int32), classes)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(classes, tf.float32)
    hard = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=s))
    if alpha == 0.0:
        return hard
    if teacher_logits is None:
        raise ConfigError("distillation_loss: alpha > 0 needs the teacher's logits for the same inputs")
    t = tf.cast(teacher_logits, tf.float32) / temperature
    soft = tf.nn.softmax(t)
    kl = tf.reduce_sum(soft * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s / temperature)), axis=-1)
    return alpha * temperature**2 * tf.reduce_mean(kl) + (1.0 - alpha) * hard


def make_optimizer(lr: float, total_steps: int, warmup_steps: int, weight_decay: float) -> Any:
    """AdamW with a linear warm-up from ``lr / 100`` to ``lr``, then cosine decay over the remaining steps."""
    import keras

    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.01 if warmup_steps else lr,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay)
    # Decaying BatchNorm scales/offsets and biases towards 0 only fights the normalisation.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def train_loop(
    *,
    forward: Callable[[Any, bool], Any],
    variables: list[Any],
    sample: Sampler,
    labels: np.ndarray,
    config: LoopConfig,
    evaluate: Callable[[], float] | None,
    log: Log,
    label: str,
) -> list[dict[str, float]]:
    """Fit ``variables`` so that ``forward(x, training=True)`` minimises :func:`distillation_loss`.

    Each epoch visits the items in a new order drawn from ``config.shuffle_seed`` (so two runs
    with the same seed, e.g. a KD student and its no-KD baseline, see the same batches); a last
    batch smaller than ``batch_size`` is dropped, as BatchNorm statistics of a handful of items
    are noise. Soft targets from ``sample`` are used only when ``config.alpha > 0``.

    Args:
        forward: ``(inputs, training) -> logits``.
        variables: what the optimizer updates.
        sample: item indices -> (inputs, soft targets or None) of those items.
        labels: (N,) int class ids of all items.
        config: schedule, optimizer and loss weights.
        evaluate: called after every epoch for the history's ``val_top1``; None skips it.
        log: receives a progress line per epoch (and :class:`RateLog` lines within).
        label: names the loop in those lines ('probe', 'fine-tune', 'qat').

    Returns:
        One record per epoch: ``epoch``, ``loss``, ``train_top1`` and, with ``evaluate``, ``val_top1``.

    Raises:
        ConfigError: ``config.alpha > 0`` and ``sample`` gives no soft targets.
    """
    n = len(labels)
    batch_size = min(config.batch_size, n)
    steps_per_epoch = n // batch_size if batch_size else 0
    total = steps_per_epoch * config.epochs
    if total == 0:
        return []
    step = _train_step(
        forward, variables, config, make_optimizer(config.lr, total, steps_per_epoch // 2, config.weight_decay)
    )
    rng = np.random.default_rng(config.shuffle_seed)
    history: list[dict[str, float]] = []
    progress = RateLog(log, label, total, unit="step")
    for epoch in range(config.epochs):
        order = rng.permutation(n)
        loss_sum, correct_sum, seen = 0.0, 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            loss, correct = step(*sample(idx), labels[idx])
            loss_sum += float(loss) * len(idx)
            correct_sum += float(correct)
            seen += len(idx)
            progress.advance(1)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_top1": correct_sum / max(seen, 1)}
        if evaluate is not None:
            record["val_top1"] = evaluate()
        history.append(record)
        remaining = progress.seconds / (epoch + 1) * (config.epochs - epoch - 1)
        val = f", val top-1 {record['val_top1']:.3f}" if "val_top1" in record else ""
        log(
            f"  {label} epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.3f}, "
            f"train top-1 {record['train_top1']:.3f}{val}, ETA {format_seconds(remaining)}"
        )
    return history


def _train_step(
    forward: Callable[[Any, bool], Any], variables: list[Any], config: LoopConfig, optimizer: Any
) -> Callable[[np.ndarray, np.ndarray | None, np.ndarray], tuple[Any, Any]]:
    """One compiled gradient step: (inputs, soft targets or None, labels) -> (batch loss, correct count)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, t: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits = forward(tf.cast(x, tf.float32), True)
            loss = distillation_loss(
                logits, y, t, temperature=config.temperature, alpha=config.alpha, label_smoothing=config.label_smoothing
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=False))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    def run(x: np.ndarray, soft: np.ndarray | None, y: np.ndarray) -> tuple[Any, Any]:
        # Without a soft-target term the targets are not even passed: one trace, no wasted copy.
        t = tf.constant(soft, tf.float32) if (soft is not None and config.alpha > 0) else None
        return step(x, tf.constant(y, tf.int32), t)

    return run
