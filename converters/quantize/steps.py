"""The declaration of a quantize step: what it accepts, what it produces, the function that runs it.

Like ``converters.export.steps.ExportStep`` (a typed config plus a pure function), with what
quantizing adds: the precisions that need a calibration set and those the accuracy-budget
search can produce. A planner asks the declaration before any work whether a request can be
honoured; ``converters.quantize.formats`` derives the precision table from these declarations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converters.quantize.calibration import CalibrationSet
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.manifest import KeptInFloat

# ``run(input, config, out_dir, calibration) -> (model file, layers kept in float)``; the input is
# the step's ``source_kinds``: a Keras/SavedModel ``SourceModel`` (LiteRT) or an fp32 model file.
QuantizeRun = Callable[[Any, Any, Path, "CalibrationSet | None"], tuple[Path, list[KeptInFloat]]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantizeStep:
    """The declaration of one format's quantize step. Immutable: safe to share across threads.

    Attributes:
        name: the step name recorded in provenance, e.g. ``quantize_onnx``.
        format: the model format it writes.
        precisions: precisions its config may ask for.
        needs_calibration: those of ``precisions`` that need a calibration set.
        budgeted: those its ``quantize_with_budget`` searches (keeping layers in float).
        source_kinds: what ``run`` converts from (``keras``/``savedmodel`` sources, or the fp32
            model file of ``format``).
        tools: distributions whose versions the step record carries.
        config_type: the frozen dataclass ``run`` takes.
        run: ``run(input, config, out_dir, calibration) -> (model file, kept in float)``.
    """

    name: str
    format: ModelFormat
    precisions: frozenset[Precision]
    needs_calibration: frozenset[Precision]
    budgeted: frozenset[Precision]
    source_kinds: frozenset[ModelFormat]
    tools: tuple[str, ...]
    config_type: type
    run: QuantizeRun

    def check_config(self, config: object) -> Precision:
        """Refuse a config of another type or a precision this step does not produce.

        Returns:
            The config's precision.

        Raises:
            ConfigError: naming the step, what it expected and what it produces.
        """
        if not isinstance(config, self.config_type):
            raise ConfigError(f"{self.name}: config is a {type(config).__name__}, expected {self.config_type.__name__}")
        precision = getattr(config, "precision", None)
        if precision not in self.precisions:
            accepted = ", ".join(sorted(p.value for p in self.precisions))
            raise ConfigError(
                f"{self.name}: precision {precision!r} is not produced by this step; it writes {accepted}"
            )
        return precision

    def check_calibration_given(self, precision: Precision, calibration: CalibrationSet | None, where: str) -> None:
        """Refuse a missing calibration set where ``precision`` needs one.

        Raises:
            ConfigError: ``precision`` needs calibration and ``calibration`` is None.
        """
        if precision in self.needs_calibration and calibration is None:
            raise ConfigError(
                f"{where}: {precision.value} needs a calibration set; build one with "
                "converters.quantize.calibration.build_calibration_set (or from_arrays)"
            )
