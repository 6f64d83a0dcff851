"""What a conversion starts from: a Keras model (object, file or SavedModel) with its labels and preprocessing.

It lives at the bottom of the converters' layers because both ends make one: ``convert`` takes
it, and distillation (``converters.training``) returns its student as one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sdk.bundle import Bundle
from sdk.enums import ModelFormat, Task
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing

__all__ = ["ModelSource"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSource:
    """What to convert: a Keras model / file / SavedModel, with how it is used.

    Immutable; safe to share across threads (the model object itself is not, if one is given).
    """

    model: Any  # keras.Model | str | Path
    name: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    description: str

    @classmethod
    def from_bundle(cls, path: str | Path) -> ModelSource:
        """A Keras reference bundle (the teacher's, a distilled student's) as the source.

        Raises:
            ConfigError: the bundle is not a Keras/SavedModel image classification bundle.
            BundleError, ManifestError: see ``Bundle.open``.
        """
        bundle = Bundle.open(path)
        m = bundle.manifest
        if m.format not in (ModelFormat.KERAS, ModelFormat.SAVEDMODEL) or m.preprocessing is None:
            raise ConfigError(
                f"{bundle.path}: convert starts from a Keras reference bundle (format keras with "
                f"preprocessing), this one is {m.format.value}; pass the teacher/student bundle"
            )
        if m.task is not Task.IMAGE_CLASSIFICATION:
            raise ConfigError(f"{bundle.path}: convert handles image_classification bundles, not {m.task.value}")
        return cls(
            model=bundle.model_path,
            name=m.name,
            labels=bundle.labels,
            preprocessing=m.preprocessing,
            description=f"bundle {bundle.path}",
        )
