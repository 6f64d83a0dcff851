"""The teacher's recipe (:class:`TeacherConfig`), what a run returns, and the hashes that key its cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from converters.models.efficientnet_lite import CROP_PADDING, MEAN_RGB, STD_RGB, get_variant
from converters.training.teacher_data import Augment
from sdk.enums import ColorOrder, Interpolation, ResizeMode
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing

BN_MODES = ("train", "frozen")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """Everything that decides the trained teacher (and so its config hash).

    Attributes:
        variant: 'lite0', 'lite1' or 'lite2'.
        input_size: square input side; None is the variant's own (224 / 240 / 260).
        train_stages: how many of the 7 MBConv stages (counted from the top) are trained, besides
            the head conv and the classifier; the stages below are frozen and cached.
        views: views per training photo in the feature cache (view 0 un-augmented).
        augment: how views 1.. are drawn.
        probe_epochs, probe_lr, probe_batch_size: the classifier-only warm-up.
        epochs, lr, batch_size: fine-tuning of the top; one random view per photo per epoch.
        weight_decay: AdamW decoupled weight decay (not on BatchNorm or biases).
        label_smoothing: of the cross-entropy targets.
        bn_mode: 'train' (batch statistics) or 'frozen' (ImageNet statistics and affine).
        recalibrate_bn: after training, re-estimate the trained BatchNorm statistics on the
            un-augmented views (only with bn_mode 'train').
        dropout: before the classifier; None is the variant's (0.2 / 0.2 / 0.3).
        drop_connect_rate: stochastic depth of the last block (scaled down towards the input).
        seed: of weights, views and batch order.
    """

    variant: str = "lite0"
    input_size: int | None = None
    train_stages: int = 2
    views: int = 6
    augment: Augment = dataclasses.field(default_factory=Augment)
    probe_epochs: int = 10
    probe_lr: float = 3e-3
    probe_batch_size: int = 256
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    bn_mode: str = "train"
    recalibrate_bn: bool = False
    dropout: float | None = None
    drop_connect_rate: float = 0.2
    seed: int = 0

    @property
    def size(self) -> int:
        return get_variant(self.variant).resolution if self.input_size is None else self.input_size

    def validate(self) -> None:
        """Check every value before any work.

        Raises:
            ConfigError: names the first bad field, its value and the allowed range.
        """
        get_variant(self.variant)
        low, high = self.augment.crop_scale
        checks = (
            ("input_size", self.size, self.size >= 32, ">= 32"),
            ("train_stages", self.train_stages, 0 <= self.train_stages <= 7, "in 0..7"),
            ("views", self.views, self.views >= 1, ">= 1"),
            ("probe_epochs", self.probe_epochs, self.probe_epochs >= 0, ">= 0"),
            ("epochs", self.epochs, self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("probe_batch_size", self.probe_batch_size, self.probe_batch_size >= 1, ">= 1"),
            ("lr", self.lr, self.lr > 0, "> 0"),
            ("probe_lr", self.probe_lr, self.probe_lr > 0, "> 0"),
            ("weight_decay", self.weight_decay, self.weight_decay >= 0, ">= 0"),
            ("label_smoothing", self.label_smoothing, 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("bn_mode", self.bn_mode, self.bn_mode in BN_MODES, " or ".join(map(repr, BN_MODES))),
            ("augment.crop_scale", self.augment.crop_scale, 0 < low <= high <= 1, "(min, max), 0 < min <= max <= 1"),
            ("augment.jitter", self.augment.jitter, 0 <= self.augment.jitter < 1, "in [0, 1)"),
        )
        for name, value, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"TeacherConfig.{name} must be {allowed}, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = self.size  # None and the variant's own size are the same model
        return data

    def hash(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherResult:
    """What :func:`train_teacher` produced (or found already produced)."""

    model_path: Path
    labels_path: Path
    report_path: Path
    bundle_path: Path
    variant: str
    input_size: int
    params: int
    val_top1: float | None
    val_top5: float | None
    train_seconds: float
    cached: bool
    config_hash: str
    data_hash: str


def preprocessing_for(config: TeacherConfig) -> Preprocessing:
    """The official EfficientNet-Lite eval preprocessing at ``config``'s input size."""
    size = config.size
    return Preprocessing(
        size=(size, size),
        color_order=ColorOrder.RGB,
        resize_mode=ResizeMode.SHORTER_SIDE_CROP,
        crop_fraction=size / (size + CROP_PADDING),
        interpolation=Interpolation.BICUBIC,
        mean=MEAN_RGB,
        std=STD_RGB,
    )


def data_hash(data_root: Path) -> str:
    """sha256 over the split files and classes.csv (names and bytes); the photos are not read."""
    digest = hashlib.sha256()
    for name in ("train.txt", "val.txt", "classes.csv"):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update((data_root / name).read_bytes())
    return digest.hexdigest()
