"""The knobs of a conversion run that are not in the hardware profile."""

from __future__ import annotations

import dataclasses

from sdk.errors import ConfigError

QAT_MODES = ("auto", "always", "off")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConvertConfig:
    """Knobs of a conversion run that are not in the profile.

    Immutable; safe to share across threads.

    Raises:
        ConfigError: ``qat`` is not one of :data:`QAT_MODES` (on construction).
    """

    calibration_per_class: int = 3
    max_ignored: int = 8
    eval_limit: int = 0  # 0: the whole val split
    seed: int = 0
    # Quantization-aware fine-tuning (converters.training.qat) of the Keras source, then PTQ again:
    # "auto" as the last resort when an int8 candidate misses the budget, "always" as an extra
    # int8 candidate, "off" never.
    qat: str = "auto"
    qat_epochs: int = 2
    qat_per_class: int = 20

    def __post_init__(self) -> None:
        if self.qat not in QAT_MODES:
            raise ConfigError(f"ConvertConfig.qat must be one of {QAT_MODES}, got {self.qat!r}")


DEFAULT_CONFIG = ConvertConfig()
