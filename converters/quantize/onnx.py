"""Step: fp32 ONNX -> static int8 ONNX (QDQ) with onnxruntime.quantization.

``run`` pre-processes the model (``quant_pre_process``: shape inference and graph
optimization, the form ORT's quantizer expects) and quantizes it with ``quantize_static`` over
the calibration tensors. ``quantize_with_budget`` searches for the least-float int8 model
within an accuracy budget (``converters.quantize.budget``): plain PTQ, then the layers
``sensitive_layers`` ranks first kept in float through ``nodes_to_exclude``. The fp32 model's
``metadata_props`` are carried into every model written here.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.steps import library_error
from converters.quantize import common as qc
from converters.quantize import cpu
from converters.quantize.budget import Budget, BudgetSearch, budget_result, search_budget
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, QuantResult
from converters.quantize.onnx_model import (
    FIX,
    LAYER_TYPES,
    MODEL_FILE,
    STEP_NAME,
    TOOLS,
    input_spec,
    load_model,
    predictor,
)
from converters.quantize.onnx_sensitivity import sensitive_layers
from converters.quantize.steps import QuantizeStep
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.manifest import KeptInFloat
from sdk.tensors import TensorSpec

__all__ = [
    "LAYER_TYPES",
    "MODEL_FILE",
    "STEP",
    "STEP_NAME",
    "TOOLS",
    "ONNXQuantConfig",
    "predictor",
    "quantize_with_budget",
    "run",
    "sensitive_layers",
]

QUANT_FORMATS = ("QDQ",)
ACTIVATION_TYPES = ("QInt8", "QUInt8")
WEIGHT_TYPES = ("QInt8",)
CALIBRATE_METHODS = ("MinMax", "Entropy", "Percentile")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ONNXQuantConfig:
    """How to quantize an ONNX model with onnxruntime.quantization.

    Attributes:
        precision: ``INT8`` (the only one: static QDQ quantization).
        quant_format: ``QDQ`` (QuantizeLinear/DequantizeLinear pairs every EP understands).
        activation_type: ``QInt8`` (symmetric-friendly, ORT's x86 default for QDQ) or ``QUInt8``.
        weight_type: ``QInt8``.
        per_channel: one weight scale per output channel (better for depthwise convolutions).
        calibrate_method: ``MinMax``, ``Entropy`` or ``Percentile``.
        nodes_to_exclude: node names left in float (names of the pre-processed model, as
            ``sensitive_layers`` reports them).
        op_types_to_quantize: only these op types (None: every op type ORT can quantize).
        reduce_range: 7-bit weights, so that x86 CPUs without VNNI (AVX2's ``vpmaddubsw`` sums
            ``u8 x s8`` pairs in int16 and saturates) compute what VNNI CPUs do; ``auto``: only
            where the host CPU needs it (``converters.quantize.cpu``); ``convert`` asks for
            ``auto`` on CPU profiles.
    """

    precision: Precision = Precision.INT8
    quant_format: str = "QDQ"
    activation_type: str = "QInt8"
    weight_type: str = "QInt8"
    per_channel: bool = True
    calibrate_method: str = "MinMax"
    nodes_to_exclude: tuple[str, ...] = ()
    op_types_to_quantize: tuple[str, ...] | None = None
    reduce_range: bool | str = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes_to_exclude", tuple(self.nodes_to_exclude))
        if self.op_types_to_quantize is not None:
            object.__setattr__(self, "op_types_to_quantize", tuple(self.op_types_to_quantize))
        where = "ONNXQuantConfig"
        if self.precision is not Precision.INT8:
            raise ConfigError(f"{where}.precision must be int8 (static QDQ), got {self.precision!r}")
        for name, allowed in (
            ("quant_format", QUANT_FORMATS),
            ("activation_type", ACTIVATION_TYPES),
            ("weight_type", WEIGHT_TYPES),
            ("calibrate_method", CALIBRATE_METHODS),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{where}.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not all(isinstance(n, str) and n for n in self.nodes_to_exclude):
            raise ConfigError(f"{where}.nodes_to_exclude must be node names (strings), got {self.nodes_to_exclude!r}")
        if self.op_types_to_quantize is not None and not self.op_types_to_quantize:
            raise ConfigError(f"{where}.op_types_to_quantize must be None (all) or name at least one op type")
        if not isinstance(self.reduce_range, bool) and self.reduce_range != cpu.AUTO:
            raise ConfigError(f"{where}.reduce_range must be True, False or 'auto', got {self.reduce_range!r}")

    def seven_bit(self) -> cpu.SevenBitChoice:
        """What ``reduce_range`` means on this host (``auto`` resolved), for the step record."""
        return cpu.choose_seven_bit(self.reduce_range, seven=True, eight=False)


def run(
    fp32_onnx: Path,
    config: ONNXQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet | None,
) -> tuple[Path, list[KeptInFloat]]:
    """Write ``out_dir/model.onnx``, statically quantized to int8 in QDQ format.

    Returns:
        The model and the layers left in float (``config.nodes_to_exclude``).

    Raises:
        ConfigError: wrong config; a missing, empty or mismatched calibration set; or a
            ``nodes_to_exclude`` name that is not a node of the pre-processed model.
        ConversionError: the model cannot be read, or pre-processing / quantization failed.
    """
    if not isinstance(config, ONNXQuantConfig):
        raise ConfigError(f"{STEP_NAME}: config is a {type(config).__name__}, expected ONNXQuantConfig")
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_onnx}"
    qc.require_calibration(calibration, where)
    model = load_model(fp32_onnx)
    spec = input_spec(model, where)
    calibration = qc.check_calibration(calibration, spec, where)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{STEP_NAME}-", dir=out_dir) as work:
        prepared = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")
        return _quantize(prepared, model, spec, config, out_dir, calibration), [
            KeptInFloat(layer=n, precision=Precision.FP32, reason="listed in ONNXQuantConfig.nodes_to_exclude")
            for n in config.nodes_to_exclude
        ]


STEP = QuantizeStep(
    name=STEP_NAME,
    format=ModelFormat.ONNX,
    precisions=frozenset({Precision.INT8}),
    needs_calibration=frozenset({Precision.INT8}),
    budgeted=frozenset({Precision.INT8}),
    source_kinds=frozenset({ModelFormat.ONNX}),
    tools=TOOLS,
    config_type=ONNXQuantConfig,
    run=run,
)


def quantize_with_budget(
    fp32_onnx: Path,
    calibration: CalibrationSet,
    eval_fn: EvalFn,
    fp32_accuracy: float,
    *,
    max_drop: float,
    out_dir: Path,
    max_ignored: int = 8,
    config: ONNXQuantConfig | None = None,
    log: Callable[[str], None] | None = None,
) -> QuantResult:
    """Quantize to int8 QDQ within ``max_drop`` of ``fp32_accuracy``, excluding nodes if needed.

    Tries plain static quantization, then the 1, 2, 4... ``max_ignored`` most sensitive nodes
    in ``nodes_to_exclude`` (ORT has no accuracy-aware quantizer of its own). Each result is
    judged by ``eval_fn`` against ``fp32_accuracy``. A budget of 0 always runs the fallback.

    Args:
        eval_fn: model file -> accuracy in [0, 1], on the data ``fp32_accuracy`` came from (e.g.
            ``converters.quantize.common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
        fp32_accuracy: the fp32 model's accuracy, a fraction in [0, 1].
        max_drop: allowed drop in accuracy points (1.0 = one point), as profiles state it.
        out_dir: receives ``model.onnx``; scratch work happens below it.
        config: the settings (default ``ONNXQuantConfig()``); its nodes_to_exclude are kept.

    Raises:
        ConfigError: bad budget arguments or config, or an unusable calibration set (before
            work); ``eval_fn`` returned something that is not an accuracy in [0, 1].
        ConversionError: quantization or sensitivity analysis failed (the cause is chained).
    """
    started = time.perf_counter()
    config = config if config is not None else ONNXQuantConfig()
    fp32_onnx, out_dir = Path(fp32_onnx), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_onnx}"
    if not isinstance(config, ONNXQuantConfig):
        raise ConfigError(f"{where}: config is a {type(config).__name__}, expected ONNXQuantConfig")
    budget = Budget.checked(fp32_accuracy, max_drop, max_ignored, where)
    qc.require_calibration(calibration, where)
    model = load_model(fp32_onnx)
    spec = input_spec(model, where)
    qc.check_calibration(calibration, spec, where)
    seven_bit = config.seven_bit()
    config = dataclasses.replace(config, reduce_range=bool(seven_bit.applied))

    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        prepared = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")

        def quantize(extra: tuple[str, ...], directory: Path) -> Candidate:
            names = config.nodes_to_exclude + tuple(n for n in extra if n not in config.nodes_to_exclude)
            path = _quantize(
                prepared, model, spec, dataclasses.replace(config, nodes_to_exclude=names), directory, calibration
            )
            reasons = dict.fromkeys(config.nodes_to_exclude, "listed in ONNXQuantConfig.nodes_to_exclude")
            return Candidate(model_path=path, kept=names, description="int8 static QDQ PTQ", reasons=reasons)

        search = BudgetSearch(
            quantize=quantize,
            evaluate=eval_fn,
            rank=lambda path: sensitive_layers(prepared, path, calibration),
            log=log,
        )
        outcome = search_budget(search, budget, work_dir=Path(work), out_dir=out_dir)
    return budget_result(
        outcome,
        budget,
        step=STEP_NAME,
        tools=TOOLS,
        config=config,
        calibration=calibration,
        started=started,
        extra={"int8_arithmetic": seven_bit.to_record()},
    )


class _Reader:
    """ORT's CalibrationDataReader over the calibration tensors, one sample per batch.

    ORT accepts any object with ``get_next`` (its ABC has a ``__subclasshook__``), so
    onnxruntime need not be imported to define it.
    """

    def __init__(self, name: str, tensors: np.ndarray) -> None:
        self._name = name
        self._tensors = tensors
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._tensors):
            return None
        self._next += 1
        return {self._name: self._tensors[self._next - 1 : self._next]}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._tensors)


def _quantize(
    prepared: Path,
    fp32_model: Any,
    spec: TensorSpec,
    config: ONNXQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet,
) -> Path:
    import onnx
    from onnxruntime import quantization as q

    known = {n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node}
    unknown = [n for n in config.nodes_to_exclude if n not in known]
    if unknown:
        layers = sorted(n.name for n in fp32_model.graph.node if n.op_type in LAYER_TYPES)
        raise ConfigError(
            f"{STEP_NAME}: nodes_to_exclude {unknown} are not nodes of the pre-processed model; use names "
            f"from sensitive_layers(), e.g. {layers[:8]}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_FILE
    reader = _Reader(spec.name, calibration.tensors)
    try:
        q.quantize_static(
            str(prepared),
            str(path),
            reader,
            quant_format=q.QuantFormat.QDQ,
            op_types_to_quantize=list(config.op_types_to_quantize) if config.op_types_to_quantize else None,
            per_channel=config.per_channel,
            activation_type=getattr(q.QuantType, config.activation_type),
            weight_type=getattr(q.QuantType, config.weight_type),
            nodes_to_exclude=list(config.nodes_to_exclude),
            calibrate_method=getattr(q.CalibrationMethod, config.calibrate_method),
            reduce_range=bool(config.seven_bit().applied),
        )
        quantized = onnx.load(str(path))
    except Exception as e:  # ORT's quantizer raises ValueError, RuntimeError, ORT Fail...
        raise library_error(STEP_NAME, prepared, "onnxruntime.quantization.quantize_static", e, FIX) from e
    # quantize_static keeps metadata_props today; the bundle's embedded metadata must not depend on that.
    props = {p.key: p.value for p in quantized.metadata_props}
    missing = {p.key: p.value for p in fp32_model.metadata_props if props.get(p.key) != p.value}
    if missing:
        onnx.helper.set_model_props(quantized, {**props, **missing})
        onnx.save(quantized, str(path))
    return path


def _pre_process(fp32_onnx: Path, path: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    try:
        quant_pre_process(str(fp32_onnx), str(path))
    except Exception as e:  # shape inference and the optimizer raise many types
        raise library_error(STEP_NAME, fp32_onnx, "quant_pre_process (shape inference / optimization)", e, FIX) from e
    return path
