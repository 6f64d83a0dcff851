"""A small product-recognition CNN, trained in seconds: the quickstart's model.

Not the reference server model (that is the EfficientNet-Lite teacher); it exists so
the main job can build, export and compare a real trained model on any machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from sdk import preprocess as pp
from sdk.data import ImageDataset
from sdk.enums import Layout
from sdk.manifest import Preprocessing
from sdk.tensors import TensorSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmallCnnConfig:
    input_size: int = 96
    width: int = 32
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 3e-3
    seed: int = 0


def preprocessing_for(config: SmallCnnConfig) -> Preprocessing:
    """The preprocessing the model is trained with, recorded in every bundle's manifest."""
    return Preprocessing(
        size=(config.input_size, config.input_size),
        crop_fraction=0.875,
        mean=(127.5, 127.5, 127.5),
        std=(127.5, 127.5, 127.5),
    )


def build_small_cnn(num_classes: int, config: SmallCnnConfig = SmallCnnConfig()) -> keras.Model:  # noqa: F821
    """Depthwise-separable CNN: stem, four separable blocks, global pooling, logits.

    BatchNorm momentum is 0.9 (not Keras' 0.99) because a quick run takes only tens of
    steps: with 0.99 the moving statistics stay near their initial values and the
    inference-mode model answers at chance level.
    """
    import keras

    keras.utils.set_random_seed(config.seed)
    layers = keras.layers
    inputs = keras.Input((config.input_size, config.input_size, 3), name="image")
    x = layers.Conv2D(config.width, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (mult, stride) in enumerate(((1, 1), (2, 2), (4, 2), (8, 2))):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"block{i}_dw")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_dw_relu")(x)
        x = layers.Conv2D(config.width * mult, 1, use_bias=False, name=f"block{i}_pw")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"block{i}_pw_bn")(x)
        x = layers.ReLU(6.0, name=f"block{i}_pw_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="shelf_cnn")


def load_tensors(
    dataset: ImageDataset, pre: Preprocessing, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Decode and preprocess every image of ``dataset`` into one float32 NHWC array."""
    spec = TensorSpec(name="image", shape=(-1, *pre.size, 3), dtype="float32", layout=Layout.NHWC)
    out = np.empty((len(dataset), *pre.size, 3), np.float32)
    for i, path in enumerate(dataset.paths):
        out[i] = pp.load_and_preprocess(path, pre, spec)[0]
        if progress and (i + 1) % 200 == 0:
            progress(i + 1, len(dataset))
    return out


def train_small_cnn(
    train: ImageDataset,
    config: SmallCnnConfig = SmallCnnConfig(),
    log: Callable[[str], None] = print,
) -> keras.Model:  # noqa: F821
    """Train on ``train`` with flips/shifts/zoom augmentation; returns the inference model."""
    import keras

    pre = preprocessing_for(config)
    log(f"decoding {len(train)} training images at {config.input_size}x{config.input_size}")
    x = load_tensors(train, pre, progress=lambda i, n: log(f"  decoded {i}/{n}"))
    y = np.asarray(train.labels, np.int32)
    model = build_small_cnn(len(train.class_names), config)
    augment = keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal"),
            keras.layers.RandomTranslation(0.1, 0.1),
            keras.layers.RandomZoom(0.15),
        ],
        name="augment",
    )
    trainer = keras.Sequential([augment, model])
    steps = max(1, len(x) // config.batch_size) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
    trainer.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )

    class _Log(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            log(
                f"  epoch {epoch + 1}/{config.epochs}: loss {logs.get('loss', 0):.3f} "
                f"train acc {logs.get('accuracy', 0):.3f}"
            )

    trainer.fit(x, y, batch_size=config.batch_size, epochs=config.epochs, shuffle=True, verbose=0, callbacks=[_Log()])
    _recalibrate_batchnorm(model, x, config.batch_size)
    return model


def _recalibrate_batchnorm(model: keras.Model, x: np.ndarray, batch_size: int, passes: int = 3) -> None:  # noqa: F821
    """Re-estimate BatchNorm moving statistics on un-augmented data with the final weights.

    A short run ends with moving statistics that lag the weights (they average over
    batches from earlier, different weights); a few forward passes in training mode with
    no gradient step bring them in line, which the inference-mode model depends on.
    """
    # Shuffled: split files list images class by class, and batch statistics of one
    # class would drag the moving averages towards the last classes seen.
    order = np.random.default_rng(0).permutation(len(x))
    for _ in range(passes):
        for start in range(0, len(x), batch_size):
            model(x[order[start : start + batch_size]], training=True)
