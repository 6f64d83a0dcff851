"""Teacher training on cached features: model split, linear-probe warm-up, fine-tuning, BN recalibration.

The EfficientNet-Lite is one Keras model throughout. Its early stages (the frozen ``base``)
run once per augmented view in :mod:`converters.training.teacher_data`; the ``top`` sub-model (last
stage(s), head conv, classifier) shares its layers with the full model, so training the top on
cached features trains the model that is saved and evaluated end to end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.models.efficientnet_lite import block_specs, build_efficientnet_lite
from converters.models.torch_weights import load_pretrained_weights
from converters.training.teacher_data import Log, RateLog, format_seconds
from sdk.errors import ConfigError

if TYPE_CHECKING:
    import keras

    from converters.training.teacher_config import TeacherConfig

STAGES = 7  # MBConv stages of every EfficientNet-Lite
_EVAL_BATCH = 64


def cut_layer(variant: str, train_stages: int, drop_blocks: Sequence[str] = ()) -> str:
    """Name of the last frozen layer: the output of stage ``7 - train_stages`` (or the stem).

    A stage boundary is always a clean cut: the first block of a stage changes the channel
    count, so it has no skip connection reaching back into the frozen part. ``drop_blocks``
    (left out of the model) are skipped when finding the stage's last block.

    Raises:
        ConfigError: ``train_stages`` is not in 0..7, or the variant is unknown.
    """
    if not 0 <= train_stages <= STAGES:
        raise ConfigError(f"train_stages must be in 0..{STAGES}, got {train_stages}")
    frozen_stages = STAGES - train_stages
    if frozen_stages == 0:
        return "stem_activation"
    last = [b for b in block_specs(variant)
            if b.name.startswith(f"block{frozen_stages}") and b.name not in drop_blocks][-1]
    return f"{last.name}_add" if last.has_skip else f"{last.name}_project_bn"


def build_teacher(config: TeacherConfig, num_classes: int) -> keras.Model:
    """EfficientNet-Lite with the ImageNet backbone weights and a new ``num_classes`` classifier.

    Raises:
        ConfigError: a config value is out of range.
        BackendUnavailableError: PyTorch or the weight package is missing.
        ConversionError: the weights do not fit the model.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    model = build_efficientnet_lite(
        config.variant,
        num_classes=num_classes,
        input_size=config.input_size,
        dropout=config.dropout,
        drop_connect_rate=config.drop_connect_rate,
        name=f"teacher_{config.variant}",
    )
    load_pretrained_weights(model, config.variant, classifier=False)
    # A zero classifier starts at the uniform prediction; the builder's random init (meant for
    # training from scratch) starts with large logits on pretrained features, and a first
    # phase of large, wrong gradients.
    for variable in model.get_layer("logits").weights:
        variable.assign(np.zeros(variable.shape, "float32"))
    return model


def split(model: keras.Model, cut: str, bn_mode: str) -> tuple[keras.Model, keras.Model]:
    """(base, top) sub-models around layer ``cut``; only the top's layers stay trainable.

    ``bn_mode`` 'frozen' keeps the top's BatchNorm layers at their ImageNet statistics and
    affine parameters (Keras runs a non-trainable BatchNorm in inference mode); 'train'
    trains them with batch statistics.
    """
    import keras

    cut_tensor = model.get_layer(cut).output
    base = keras.Model(model.input, cut_tensor, name="frozen_base")
    top = keras.Model(cut_tensor, model.output, name="trained_top")
    top_names = {layer.name for layer in top.layers}
    for layer in model.layers:
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name in top_names and not (is_bn and bn_mode == "frozen")
    return base, top


def inference_fn(model: keras.Model) -> Callable[[Any], Any]:
    """A compiled inference-mode call of ``model`` (one trace per batch shape)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def call(x: Any) -> Any:
        return model(tf.cast(x, tf.float32), training=False)

    return call


def _layer_fn(layer: Any) -> Callable[[Any], Any]:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def call(x: Any) -> Any:
        return layer(tf.cast(x, tf.float32))

    return call


def predict(fn: Callable[[Any], Any], x: np.ndarray, batch_size: int = _EVAL_BATCH) -> np.ndarray:
    """Run ``fn`` over ``x`` in batches; float32 NumPy result."""
    if len(x) == 0:
        return np.asarray(fn(x))
    return np.concatenate([np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def topk_accuracy(logits: np.ndarray, labels: Sequence[int], k: int) -> float:
    """Share of rows whose label is among the ``k`` largest logits."""
    if len(labels) == 0:
        return float("nan")
    best = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(best == np.asarray(labels)[:, None], axis=1)))


def _cosine(lr: float, total_steps: int, warmup_steps: int) -> Any:
    import keras

    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr * 0.01 if warmup_steps else lr,
        decay_steps=max(total_steps - warmup_steps, 1),
        warmup_target=lr if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def _optimizer(lr: Any, weight_decay: float) -> Any:
    import keras

    optimizer = keras.optimizers.AdamW(learning_rate=lr, weight_decay=weight_decay)
    # Decaying BatchNorm scales/offsets and biases towards 0 only fights the normalisation.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def _train_loop(
    *,
    forward: Callable[[Any, bool], Any],
    variables: list[Any],
    sample: Callable[[np.ndarray], np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    label_smoothing: float,
    seed: int,
    evaluate: Callable[[], float] | None,
    log: Log,
    label: str,
) -> list[dict[str, float]]:
    """Mini-batch AdamW with warm-up + cosine LR and label smoothing; per-epoch history.

    ``sample(indices)`` returns the (augmented, cached) inputs of those training items; a
    batch smaller than ``batch_size`` at the end of an epoch is dropped so every step sees a
    full batch (BatchNorm statistics of a handful of items are noise).
    """
    import keras
    import tensorflow as tf

    n = len(labels)
    batch_size = min(batch_size, n)
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * epochs
    optimizer = _optimizer(_cosine(lr, total, warmup_steps=steps_per_epoch // 2), weight_decay)
    loss_fn = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            logits = forward(tf.cast(x, tf.float32), True)
            loss = loss_fn(tf.one_hot(y, num_classes), logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y), tf.float32))
        return loss, correct

    rng = np.random.default_rng(seed)
    history: list[dict[str, float]] = []
    progress = RateLog(log, label, total, unit="step")
    for epoch in range(epochs):
        order = rng.permutation(n)
        loss_sum, correct_sum, seen = 0.0, 0.0, 0
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            loss, correct = step(sample(idx), tf.constant(labels[idx], tf.int32))
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
        log(
            f"  {label} epoch {epoch + 1}/{epochs}: loss {record['loss']:.3f}, "
            f"train top-1 {record['train_top1']:.3f}{val}, ETA {format_seconds(remaining)}"
        )
    return history


def train_probe(
    model: keras.Model,
    cut: str,
    features: np.ndarray,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int],
    config: TeacherConfig,
    log: Log,
) -> list[dict[str, float]]:
    """Train only the new classifier on pooled features of the pretrained model (every view).

    The linear-probe-then-fine-tune recipe: fine-tuning from a trained head distorts the
    pretrained features less than from a random one, which helps most on shifted data (the
    val photos come from other stores).
    """
    import keras

    pooled_model = keras.Model(model.get_layer(cut).output, model.get_layer("avg_pool").output)
    pool = inference_fn(pooled_model)
    views, n = features.shape[:2]
    pooled = predict(pool, features.reshape(views * n, *features.shape[2:]))
    val_pooled = predict(pool, val_features)
    dense = model.get_layer("logits")
    dropout = model.get_layer("top_dropout") if "top_dropout" in {l.name for l in model.layers} else None
    head = _layer_fn(dense)

    def forward(x: Any, training: bool) -> Any:
        return dense(dropout(x, training=training) if dropout is not None else x)

    return _train_loop(
        forward=forward,
        variables=list(dense.trainable_variables),
        sample=lambda idx: pooled[idx],
        labels=np.tile(labels, views),
        num_classes=dense.units,
        epochs=config.probe_epochs,
        batch_size=config.probe_batch_size,
        lr=config.probe_lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        seed=config.seed,
        evaluate=(lambda: topk_accuracy(predict(head, val_pooled), val_labels, 1)) if len(val_labels) else None,
        log=log,
        label="probe",
    )


def fine_tune(
    top: keras.Model,
    features: np.ndarray,
    labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int],
    config: TeacherConfig,
    log: Log,
) -> list[dict[str, float]]:
    """Train the top on cached features: each epoch, one random view of every training image."""
    views, n = features.shape[:2]
    rng = np.random.default_rng([config.seed, 1])
    top_fn = inference_fn(top)

    def sample(idx: np.ndarray) -> np.ndarray:
        return features[rng.integers(0, views, len(idx)), idx]

    return _train_loop(
        forward=lambda x, training: top(x, training=training),
        variables=list(top.trainable_variables),
        sample=sample,
        labels=labels,
        num_classes=top.output_shape[-1],
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        seed=config.seed,
        evaluate=(lambda: topk_accuracy(predict(top_fn, val_features), val_labels, 1)) if len(val_labels) else None,
        log=log,
        label="fine-tune",
    )


def recalibrate_batchnorm(top: keras.Model, clean: np.ndarray, batch_size: int, passes: int = 2) -> None:
    """Re-estimate the trained BatchNorm layers' moving statistics on un-augmented training views.

    Training leaves statistics averaged over augmented crops and over weights that kept
    changing; evaluation sees plain photos with the final weights. A few forward passes in
    training mode (no gradient step) at a fast momentum bring the statistics in line.
    """
    import keras
    import tensorflow as tf

    layers = [l for l in top.layers if isinstance(l, keras.layers.BatchNormalization) and l.trainable]
    if not layers:
        return
    saved = [l.momentum for l in layers]
    for layer in layers:
        layer.momentum = 0.9
    try:
        call = tf.function(lambda x: top(tf.cast(x, tf.float32), training=True))
        order = np.random.default_rng(0).permutation(len(clean))
        batch_size = min(batch_size, len(clean))
        for _ in range(passes):
            for start in range(0, len(clean) - batch_size + 1, batch_size):
                call(clean[order[start : start + batch_size]])
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
