"""NNCF for the OpenVINO quantize step: the config, plain PTQ and NNCF's own accuracy control."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import library_error, no_telemetry
from converters.quantize import cpu
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate
from converters.quantize.openvino_model import (
    FIX,
    MODEL_FILE,
    STEP_NAME,
    predictor,
    read_metadata,
    read_model,
    restore_metadata,
)
from converters.quantize.openvino_sensitivity import quantized_layers
from sdk.enums import Precision
from sdk.errors import ConfigError

PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
OVERFLOW_FIXES = (cpu.AUTO, "enable", "first_layer_only", "disable")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenVINOQuantConfig:
    """How to quantize an OpenVINO IR.

    Attributes:
        precision: ``FP16`` (weights stored as f16, no calibration), ``INT8`` (NNCF PTQ) or
            ``DYNAMIC_INT8`` (NNCF weight compression: int8 weights with per-channel asymmetric
            scales, embedding tables included, activations in float; no calibration).
        preset: NNCF preset: ``performance`` (symmetric) or ``mixed`` (asymmetric activations).
        subset_size: calibration samples NNCF uses (capped at the set's size).
        ignored_scope: layer (friendly) names NNCF must leave in float.
        fast_bias_correction: NNCF's fast bias correction (False: the slower full one).
        model_type: None, or ``transformer`` for NNCF's transformer-specific patterns.
        overflow_fix: NNCF's overflow fix: ``enable`` stores int8 weights in 7 bits everywhere so
            that CPUs without VNNI (AVX2: ``vpmaddubsw`` saturates its int16 sums) compute the
            same answers as VNNI/AMX CPUs; ``first_layer_only`` (NNCF's default) and ``disable``
            are for VNNI-only or GPU/NPU targets; ``auto`` is ``enable`` on an x86 host CPU
            without VNNI and ``first_layer_only`` elsewhere (``converters.quantize.cpu``).
            Measured on an AVX2 AMD EPYC, the Grocery EfficientNet-Lite0 teacher: 0.811 val
            top-1 with ``first_layer_only`` vs 0.855 with ``enable`` (fp32 0.838).
    """

    precision: Precision = Precision.INT8
    preset: str = "performance"
    subset_size: int = 300
    ignored_scope: tuple[str, ...] = ()
    fast_bias_correction: bool = True
    model_type: str | None = None
    overflow_fix: str = "enable"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ignored_scope", tuple(self.ignored_scope))
        where = "OpenVINOQuantConfig"
        if self.precision not in (Precision.FP16, Precision.INT8, Precision.DYNAMIC_INT8):
            raise ConfigError(f"{where}.precision must be fp16, int8 or dynamic_int8, got {self.precision!r}")
        if self.preset not in PRESETS:
            raise ConfigError(f"{where}.preset must be one of {PRESETS}, got {self.preset!r}")
        if isinstance(self.subset_size, bool) or not isinstance(self.subset_size, int) or self.subset_size < 1:
            raise ConfigError(f"{where}.subset_size must be a positive integer, got {self.subset_size!r}")
        if not all(isinstance(n, str) and n for n in self.ignored_scope):
            raise ConfigError(f"{where}.ignored_scope must be layer names (strings), got {self.ignored_scope!r}")
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"{where}.model_type must be None or 'transformer', got {self.model_type!r}")
        if self.overflow_fix not in OVERFLOW_FIXES:
            raise ConfigError(f"{where}.overflow_fix must be one of {OVERFLOW_FIXES}, got {self.overflow_fix!r}")

    def seven_bit(self) -> cpu.SevenBitChoice:
        """What ``overflow_fix`` means on this host (``auto`` resolved), for the step record."""
        return cpu.choose_seven_bit(self.overflow_fix, seven="enable", eight="first_layer_only")


def nncf_compress_weights(model: Any, path: Path) -> Any:
    """Int8 weights (per-channel asymmetric) for every MatMul/Gather/Conv, activations in float.

    Raises:
        ConversionError: NNCF failed (the cause is chained).
    """
    import nncf

    try:
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    except Exception as e:  # NNCF raises its own and OpenVINO's types
        raise library_error(STEP_NAME, path, "nncf.compress_weights", e, "report the model and NNCF version") from e


def nncf_quantize(model: Any, config: OpenVINOQuantConfig, calibration: CalibrationSet, path: Path) -> Any:
    import nncf

    try:
        return nncf.quantize(
            model,
            nncf.Dataset(list(calibration.batches(1))),
            advanced_parameters=advanced(config),
            **nncf_options(nncf, config, calibration),
        )
    except Exception as e:  # NNCF raises its own types, RuntimeError, ValueError...
        raise library_error(STEP_NAME, path, "nncf.quantize", e, FIX) from e


def nncf_options(nncf: Any, config: OpenVINOQuantConfig, calibration: CalibrationSet) -> dict[str, Any]:
    return {
        "preset": nncf.QuantizationPreset(config.preset),
        "subset_size": min(config.subset_size, len(calibration)),
        "fast_bias_correction": config.fast_bias_correction,
        "model_type": nncf.ModelType(config.model_type) if config.model_type else None,
        "ignored_scope": nncf.IgnoredScope(names=list(config.ignored_scope)) if config.ignored_scope else None,
    }


def advanced(config: OpenVINOQuantConfig) -> Any:
    """NNCF's advanced parameters; None (NNCF's own defaults) unless the overflow fix differs from them."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    overflow_fix = config.seven_bit().applied
    if overflow_fix == "first_layer_only":
        return None
    return AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))


def accuracy_control(
    fp32_xml: Path,
    plain_xml: Path,
    config: OpenVINOQuantConfig,
    calibration: CalibrationSet,
    max_drop: float,
    max_ignored: int,
    directory: Path,
) -> Candidate:
    with no_telemetry():
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

        reference = predictor(fp32_xml)(calibration.tensors).argmax(-1)
        # Items carry the fp32 top-1, so the metric is agreement with fp32: no labels needed,
        # and it bounds the accuracy drop (a sample can only lose accuracy by changing answer).
        items = [(calibration.tensors[i : i + 1], int(reference[i])) for i in range(len(calibration))]
        dataset = nncf.Dataset(items, lambda item: item[0])

        def agreement(compiled: Any, data: Any) -> tuple[float, list[float]]:
            values = [float(int(np.argmax(compiled(x)[0])) == y) for x, y in data]
            return (float(np.mean(values)) if values else 0.0), values

        model = read_model(fp32_xml)
        metadata = read_metadata(model)
        quantized = nncf.quantize_with_accuracy_control(
            model,
            dataset,
            dataset,
            agreement,
            max_drop=max_drop / 100.0,  # NNCF's absolute drop is a fraction; ours is in points
            drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
                max_num_iterations=max(1, max_ignored), num_ranking_workers=1
            ),
            advanced_quantization_parameters=advanced(config),
            **nncf_options(nncf, config, calibration),
        )
        restore_metadata(quantized, metadata)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MODEL_FILE
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        reverted = quantized_layers(read_model(plain_xml)) - quantized_layers(quantized)
    kept = config.ignored_scope + tuple(sorted(reverted - set(config.ignored_scope)))
    reason = (
        f"reverted to float by nncf.quantize_with_accuracy_control (top-1 agreement with fp32 on "
        f"{len(items)} calibration samples, max_drop {max_drop:g} pt)"
    )
    return Candidate(
        model_path=path,
        kept=kept,
        description="nncf.quantize_with_accuracy_control",
        reasons=dict.fromkeys(reverted, reason)
        | dict.fromkeys(config.ignored_scope, "listed in OpenVINOQuantConfig.ignored_scope"),
    )
