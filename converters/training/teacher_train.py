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
from converters.training.loop import Log, LoopConfig, train_loop
from converters.training.teacher_config import TeacherConfig
from sdk.errors import ConfigError

if TYPE_CHECKING:
    import keras

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
    last = [
        b for b in block_specs(variant) if b.name.startswith(f"block{frozen_stages}") and b.name not in drop_blocks
    ][-1]
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


def layer_fn(layer: Any) -> Callable[[Any], Any]:
    """A compiled call of one layer (one trace per batch shape)."""
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


def loop_config(config: TeacherConfig, *, probe: bool) -> LoopConfig:
    """The teacher's objective for :func:`converters.training.loop.train_loop`: label-smoothed cross-entropy.

    ``probe`` picks the classifier-only warm-up's schedule, else the fine-tuning's.
    """
    return LoopConfig(
        epochs=config.probe_epochs if probe else config.epochs,
        batch_size=config.probe_batch_size if probe else config.batch_size,
        lr=config.probe_lr if probe else config.lr,
        weight_decay=config.weight_decay,
        label_smoothing=config.label_smoothing,
        shuffle_seed=config.seed,
    )


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
    dropout = model.get_layer("top_dropout") if "top_dropout" in {layer.name for layer in model.layers} else None
    head = layer_fn(dense)

    def forward(x: Any, training: bool) -> Any:
        return dense(dropout(x, training=training) if dropout is not None else x)

    return train_loop(
        forward=forward,
        variables=list(dense.trainable_variables),
        sample=lambda idx: (pooled[idx], None),
        labels=np.tile(labels, views),
        config=loop_config(config, probe=True),
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
    views, _n = features.shape[:2]
    rng = np.random.default_rng([config.seed, 1])
    top_fn = inference_fn(top)

    def sample(idx: np.ndarray) -> tuple[np.ndarray, None]:
        return features[rng.integers(0, views, len(idx)), idx], None

    return train_loop(
        forward=lambda x, training: top(x, training=training),
        variables=list(top.trainable_variables),
        sample=sample,
        labels=labels,
        config=loop_config(config, probe=False),
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

    layers = [x for x in top.layers if isinstance(x, keras.layers.BatchNormalization) and x.trainable]
    if not layers:
        return
    saved = [layer.momentum for layer in layers]
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
        for layer, momentum in zip(layers, saved, strict=False):
            layer.momentum = momentum
