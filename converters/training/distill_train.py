"""Student training on cached features: the distillation loss, the student model, probe and fine-tuning.

The student is an EfficientNet-Lite split like the teacher (:func:`converters.training.teacher_train.split`):
its frozen early stages ran once per augmented view (cached), and only the top is trained here.
Each training item is one (view, photo) pair, and the teacher logits that go with it were
computed on that very view, so the soft targets describe exactly the crop the student sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.models.efficientnet_lite import build_efficientnet_lite
from converters.training.teacher_data import Log, RateLog, format_seconds
from converters.training.teacher_train import inference_fn, predict, topk_accuracy
from sdk.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from converters.training.distill import DistillConfig

# Samples -> (student inputs, teacher logits or None) of those training items.
Sampler = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


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
    (optionally smoothed) one-hot labels. ``alpha = 0`` is plain cross-entropy, the no-KD baseline.

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
        raise ConfigError(f"distillation_loss: need temperature > 0, alpha in [0, 1], label_smoothing in [0, 1); "
                          f"got {temperature}, {alpha}, {label_smoothing}")
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


def build_student(config: DistillConfig, num_classes: int) -> keras.Model:
    """EfficientNet-Lite ``config.variant`` at ``config.input_size`` with a new, zeroed classifier.

    The backbone gets the ImageNet weights unless ``config.pretrained`` is False (tests).

    Raises:
        ConfigError: a config value is out of range.
        BackendUnavailableError: PyTorch or the weight package is missing (pretrained only).
        ConversionError: the weights do not fit the model.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_efficientnet_lite(
        config.variant, num_classes=num_classes, input_size=config.input_size, dropout=config.dropout,
        drop_connect_rate=config.drop_connect_rate, drop_blocks=config.drop_blocks,
        name=f"student_{config.variant}_{config.input_size}",
    )
    if config.pretrained:
        from converters.models.torch_weights import load_pretrained_weights

        load_pretrained_weights(model, config.variant, classifier=False, drop_blocks=config.drop_blocks)
    # A zero classifier starts at the uniform prediction instead of large random logits on
    # pretrained features (the same reasoning as the teacher's).
    for variable in model.get_layer("logits").weights:
        variable.assign(np.zeros(variable.shape, "float32"))
    return model


def _optimizer(lr: float, total_steps: int, warmup_steps: int, weight_decay: float) -> Any:
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
    config: DistillConfig,
    epochs: int,
    batch_size: int,
    lr: float,
    evaluate: Callable[[], float] | None,
    log: Log,
    label: str,
) -> list[dict[str, float]]:
    """AdamW, warm-up + cosine LR, :func:`distillation_loss` (alpha 0 unless ``config.kd``); per-epoch history.

    A last batch smaller than ``batch_size`` is dropped: BatchNorm statistics of a handful of
    items are noise. The batch order depends only on ``config.seed``, so the KD student and
    its no-KD baseline see the same items in the same order.
    """
    import tensorflow as tf

    n = len(labels)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size if batch_size else 0
    total = steps_per_epoch * epochs
    if total == 0:
        return []
    optimizer = _optimizer(lr, total, steps_per_epoch // 2, config.weight_decay)
    alpha = config.alpha if config.kd else 0.0

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, t: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits = forward(tf.cast(x, tf.float32), True)
            loss = distillation_loss(logits, y, t, temperature=config.temperature, alpha=alpha,
                                     label_smoothing=config.label_smoothing)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    rng = np.random.default_rng([config.seed, 2])
    history: list[dict[str, float]] = []
    progress = RateLog(log, label, total, unit="step")
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum, correct_sum, seen = 0.0, 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            x, t = sample(idx)
            teacher = tf.constant(t, tf.float32) if (t is not None and config.kd) else None
            loss, correct = step(x, tf.constant(labels[idx], tf.int32), teacher)
            loss_sum += float(loss) * len(idx)
            correct_sum += float(correct)
            seen += len(idx)
            progress.advance(1)
        record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_top1": correct_sum / max(seen, 1)}
        if evaluate is not None:
            record["val_top1"] = evaluate()
        history.append(record)
        remaining = progress.seconds / (epoch + 1) * (epochs - epoch - 1)
        val = f", val top-1 {record['val_top1']:.3f}" if "val_top1" in record else ""
        log(f"  {label} epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f}, "
            f"train top-1 {record['train_top1']:.3f}{val}, ETA {format_seconds(remaining)}")
    return history


def train_probe(
    model: keras.Model,
    cut: str,
    features: np.ndarray,
    teacher_logits: np.ndarray | None,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int],
    config: DistillConfig,
    log: Log,
) -> list[dict[str, float]]:
    """Train only the classifier on pooled features of every cached view (linear probe), with the same loss.

    Row ``v * N + i`` of the pooled features is view ``v`` of photo ``i``, and so is row
    ``v * N + i`` of the flattened teacher logits.
    """
    import keras

    pool = inference_fn(keras.Model(model.get_layer(cut).output, model.get_layer("avg_pool").output))
    views, n = features.shape[:2]
    pooled = predict(pool, features.reshape(views * n, *features.shape[2:]))
    val_pooled = predict(pool, val_features) if len(val_features) else None
    soft = None if teacher_logits is None else teacher_logits.reshape(views * n, -1)
    dense = model.get_layer("logits")
    dropout = model.get_layer("top_dropout") if "top_dropout" in {layer.name for layer in model.layers} else None
    head = _layer_fn(dense) if val_pooled is not None else None

    def forward(x: Any, training: bool) -> Any:
        return dense(dropout(x, training=training) if dropout is not None else x)

    return train_loop(
        forward=forward,
        variables=list(dense.trainable_variables),
        sample=lambda idx: (pooled[idx], None if soft is None else soft[idx]),
        labels=np.tile(labels, views),
        config=config,
        epochs=config.probe_epochs,
        batch_size=config.probe_batch_size,
        lr=config.probe_lr,
        evaluate=(lambda: topk_accuracy(predict(head, val_pooled), val_labels, 1)) if head else None,
        log=log,
        label="probe",
    )


def _layer_fn(layer: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    return tf.function(lambda x: layer(tf.cast(x, tf.float32)), reduce_retracing=True)


def fine_tune(
    top: keras.Model,
    features: np.ndarray,
    teacher_logits: np.ndarray | None,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int],
    config: DistillConfig,
    log: Log,
) -> list[dict[str, float]]:
    """Train the top on cached features: each epoch one random view per photo, with that view's teacher logits."""
    views = features.shape[0]
    rng = np.random.default_rng([config.seed, 1])
    top_fn = inference_fn(top)

    def sample(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        chosen = rng.integers(0, views, len(idx))
        return features[chosen, idx], None if teacher_logits is None else teacher_logits[chosen, idx]

    return train_loop(
        forward=lambda x, training: top(x, training=training),
        variables=list(top.trainable_variables),
        sample=sample,
        labels=labels,
        config=config,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        evaluate=(lambda: topk_accuracy(predict(top_fn, val_features), val_labels, 1)) if len(val_labels) else None,
        log=log,
        label="fine-tune",
    )
