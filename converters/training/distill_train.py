"""Student training on cached features: the student model, its objective, probe and fine-tuning.

The student is an EfficientNet-Lite split like the teacher (:func:`converters.training.teacher_train.split`):
its frozen early stages ran once per augmented view (cached), and only the top is trained here,
by :func:`converters.training.loop.train_loop` on the distillation loss. Each training item is one
(view, photo) pair, and the teacher logits that go with it were computed on that very view, so
the soft targets describe exactly the crop the student sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from converters.models.efficientnet_lite import build_efficientnet_lite
from converters.models.torch_weights import load_pretrained_weights
from converters.training.distill_config import DistillConfig
from converters.training.loop import Log, LoopConfig, train_loop
from converters.training.teacher_train import inference_fn, layer_fn, predict, topk_accuracy

if TYPE_CHECKING:
    import keras


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
        config.variant,
        num_classes=num_classes,
        input_size=config.input_size,
        dropout=config.dropout,
        drop_connect_rate=config.drop_connect_rate,
        drop_blocks=config.drop_blocks,
        name=f"student_{config.variant}_{config.input_size}",
    )
    if config.pretrained:
        load_pretrained_weights(model, config.variant, classifier=False, drop_blocks=config.drop_blocks)
    # A zero classifier starts at the uniform prediction instead of large random logits on
    # pretrained features (the same reasoning as the teacher's).
    for variable in model.get_layer("logits").weights:
        variable.assign(np.zeros(variable.shape, "float32"))
    return model


def loop_config(config: DistillConfig, *, probe: bool) -> LoopConfig:
    """The student's objective for :func:`converters.training.loop.train_loop`.

    With ``config.kd`` the distillation loss at the config's temperature and alpha, without it the
    hard labels alone (alpha 0, whatever the config says). ``probe`` picks the classifier-only
    warm-up's schedule, else the fine-tuning's. The batch order depends only on ``config.seed``,
    so the KD student and its no-KD baseline see the same items in the same order.
    """
    return LoopConfig(
        epochs=config.probe_epochs if probe else config.epochs,
        batch_size=config.probe_batch_size if probe else config.batch_size,
        lr=config.probe_lr if probe else config.lr,
        weight_decay=config.weight_decay,
        alpha=config.alpha if config.kd else 0.0,
        temperature=config.temperature,
        label_smoothing=config.label_smoothing,
        shuffle_seed=(config.seed, 2),
    )


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
    head = layer_fn(dense) if val_pooled is not None else None

    def forward(x: Any, training: bool) -> Any:
        return dense(dropout(x, training=training) if dropout is not None else x)

    return train_loop(
        forward=forward,
        variables=list(dense.trainable_variables),
        sample=lambda idx: (pooled[idx], None if soft is None else soft[idx]),
        labels=np.tile(labels, views),
        config=loop_config(config, probe=True),
        evaluate=(lambda: topk_accuracy(predict(head, val_pooled), val_labels, 1)) if head else None,
        log=log,
        label="probe",
    )


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
        config=loop_config(config, probe=False),
        evaluate=(lambda: topk_accuracy(predict(top_fn, val_features), val_labels, 1)) if len(val_labels) else None,
        log=log,
        label="fine-tune",
    )
