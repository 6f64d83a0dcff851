"""The student recipe (:class:`DistillConfig`) and the names of the files a distillation run writes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from converters.models.efficientnet_lite import VARIANTS, check_droppable
from converters.training.teacher_data import Augment
from sdk.errors import ConfigError

REPORT_FILE = "distill.json"
MODEL_FILE = "student.keras"
LABELS_FILE = "labels.txt"
VAL_LOGITS_FILE = "val_logits.npy"
SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Everything that decides a trained student (and so its config hash).

    Attributes:
        variant: the student's EfficientNet-Lite variant ('lite0', 'lite1', 'lite2').
        input_size: the student's square input side. ``shelfedge convert`` passes the profile's
            input size here unless the student spec names one (``lite0@160``).
        drop_blocks: residual blocks of the variant left out (depth pruning): with the default
            (6c and 6d, in the trained top) a Lite0 student has 2.55 M parameters instead of
            3.52 M, so its int8 model is more than 4x smaller than the fp32 teacher.
        kd: train on the teacher's soft targets too; False is the hard-label baseline.
        temperature: softening of teacher and student distributions in the KD term.
        alpha: weight of the KD term; ``1 - alpha`` weighs the hard-label cross-entropy.
        label_smoothing: of the hard labels (both runs).
        views: cached augmented views per training photo (view 0 un-augmented).
        augment: how views are drawn; None takes the teacher's recipe (so its feature cache
            can be reused), or :class:`Augment` defaults when the teacher's is unknown.
        train_stages: top MBConv stages trained (with the head conv and classifier).
        probe_epochs, probe_lr, probe_batch_size: classifier-only warm-up on pooled features.
        epochs, lr, batch_size: fine-tuning of the top, one random view per photo per epoch.
        weight_decay: AdamW decoupled weight decay (not on BatchNorm or biases).
        bn_mode: 'frozen' keeps the trained top's BatchNorm at the ImageNet statistics (no
            recalibration needed); 'train' trains it and recalibrates afterwards.
        dropout: before the classifier; None is the variant's.
        drop_connect_rate: stochastic depth of the last block.
        pretrained: load the ImageNet backbone (False only for quick tests).
        seed: of weights, views and batch order (the same for the KD student and its baseline).
    """

    variant: str = "lite0"
    input_size: int = 160
    drop_blocks: tuple[str, ...] = ("block6c", "block6d")
    kd: bool = True
    temperature: float = 4.0
    alpha: float = 0.9
    label_smoothing: float = 0.1
    views: int = 4
    augment: Augment | None = None
    train_stages: int = 2
    probe_epochs: int = 10
    probe_lr: float = 3e-3
    probe_batch_size: int = 256
    # 6 epochs: the KD student and its baseline together fit in about 20 minutes on 2 shared CPU cores.
    epochs: int = 6
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 0.05
    bn_mode: str = "frozen"
    dropout: float | None = None
    drop_connect_rate: float = 0.2
    pretrained: bool = True
    seed: int = 0

    @property
    def name(self) -> str:
        pruned = "-no" + "".join(b.removeprefix("block") for b in self.drop_blocks) if self.drop_blocks else ""
        return f"student-{self.variant}-{self.input_size}{pruned}-{'kd' if self.kd else 'nokd'}"

    def __post_init__(self) -> None:
        object.__setattr__(self, "drop_blocks", tuple(self.drop_blocks))

    def validate(self) -> None:
        """Raises: ConfigError naming the first bad value and its allowed range."""
        if self.variant not in VARIANTS:
            raise ConfigError(
                f"DistillConfig.variant {self.variant!r} is not supported; use one of {', '.join(VARIANTS)}"
            )
        try:
            check_droppable(self.variant, self.drop_blocks)
        except ConfigError as e:
            raise ConfigError(f"DistillConfig.{e}") from e
        checks = (
            ("input_size", self.input_size >= 32, ">= 32"),
            ("temperature", self.temperature > 0, "> 0"),
            (
                "alpha",
                0 < self.alpha <= 1 if self.kd else 0 <= self.alpha <= 1,
                "in (0, 1] with kd=True (alpha 0 is the baseline: use kd=False)",
            ),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("views", self.views >= 1, ">= 1"),
            ("train_stages", 0 <= self.train_stages <= 7, "in 0..7"),
            ("epochs", self.epochs >= 0 and self.probe_epochs >= 0, ">= 0"),
            ("lr", self.lr > 0 and self.probe_lr > 0, "> 0"),
            ("batch_size", self.batch_size >= 1 and self.probe_batch_size >= 1, ">= 1"),
            ("bn_mode", self.bn_mode in ("train", "frozen"), "'train' or 'frozen'"),
        )
        for field, ok, allowed in checks:
            if not ok:
                raise ConfigError(f"DistillConfig.{field} must be {allowed}; got {self!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode("utf-8")).hexdigest()


# The recipe of ``shelfedge distill`` and ``convert --distill-from`` (frozen, so one instance serves every call).
DEFAULT_CONFIG = DistillConfig()
