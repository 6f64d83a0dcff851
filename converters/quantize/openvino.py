"""Step: fp32 OpenVINO IR -> fp16 IR, or int8 IR by NNCF post-training quantization.

``run`` quantizes once with a config; ``quantize_with_budget`` searches for the least-float int8
model within an accuracy budget (``converters.quantize.budget``): plain PTQ, then
``nncf.quantize_with_accuracy_control``, then the layers ``sensitive_layers`` ranks first kept
in float through NNCF's ignored scope. The shelfedge metadata in the fp32 IR's rt_info is
carried into every IR written here.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

from converters.export.steps import library_error, no_telemetry
from converters.quantize import common as qc
from converters.quantize.budget import Budget, BudgetSearch, budget_result, search_budget
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, QuantResult
from converters.quantize.openvino_model import (
    LAYER_TYPES,
    MODEL_FILE,
    STEP_NAME,
    TOOLS,
    dedupe_friendly_names,
    input_spec,
    layer_names,
    predictor,
    read_metadata,
    read_model,
    restore_metadata,
)
from converters.quantize.openvino_nncf import (
    MODEL_TYPES,
    OVERFLOW_FIXES,
    PRESETS,
    OpenVINOQuantConfig,
    nncf_compress_weights,
    nncf_quantize,
)
from converters.quantize.openvino_nncf import accuracy_control as nncf_accuracy_control
from converters.quantize.openvino_sensitivity import quantized_layers, sensitive_layers
from converters.quantize.steps import QuantizeStep
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.manifest import KeptInFloat

__all__ = [
    "LAYER_TYPES",
    "MODEL_FILE",
    "MODEL_TYPES",
    "OVERFLOW_FIXES",
    "PRESETS",
    "STEP",
    "STEP_NAME",
    "TOOLS",
    "OpenVINOQuantConfig",
    "predictor",
    "quantize_with_budget",
    "quantized_layers",
    "run",
    "sensitive_layers",
]


def run(
    fp32_model_xml: Path,
    config: OpenVINOQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet | None,
) -> tuple[Path, list[KeptInFloat]]:
    """Write ``out_dir/model.xml`` (+ ``.bin``) at ``config.precision``.

    fp16 stores the weights as f16 (``compress_to_fp16``); int8 runs ``nncf.quantize`` on the
    calibration tensors, one sample per batch, and saves with fp32 weights for the float layers;
    dynamic_int8 compresses the weights to int8 (``nncf.compress_weights``), activations stay float.

    Returns:
        The IR and the layers left in float (``config.ignored_scope``).

    Raises:
        ConfigError: wrong config; for int8 a missing, empty or mismatched calibration set, or an
            ignored_scope name that is not a layer of the model (all before quantizing).
        ConversionError: the IR cannot be read, or NNCF / saving failed (the cause is chained).
    """
    if not isinstance(config, OpenVINOQuantConfig):
        raise ConfigError(f"{STEP_NAME}: config is a {type(config).__name__}, expected OpenVINOQuantConfig")
    fp32_model_xml, out_dir = Path(fp32_model_xml), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_model_xml}"
    if config.precision is Precision.INT8:
        qc.require_calibration(calibration, where)
    with no_telemetry():
        import openvino as ov

        model = read_model(fp32_model_xml)
        metadata = read_metadata(model)
        kept: list[KeptInFloat] = []
        if config.precision is Precision.INT8:
            calibration = qc.check_calibration(calibration, input_spec(model, where), where)
            names = dedupe_friendly_names(model)
            unknown = [n for n in config.ignored_scope if n not in names]
            if unknown:
                raise ConfigError(
                    f"{where}: ignored_scope names {unknown} are not layers of the model; use names from "
                    f"sensitive_layers(), e.g. {sorted(layer_names(model))[:8]}"
                )
            model = nncf_quantize(model, config, calibration, fp32_model_xml)
            kept = [
                KeptInFloat(layer=n, precision=Precision.FP32, reason="listed in OpenVINOQuantConfig.ignored_scope")
                for n in config.ignored_scope
            ]
        elif config.precision is Precision.DYNAMIC_INT8:
            model = nncf_compress_weights(model, fp32_model_xml)
        restore_metadata(model, metadata)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        try:
            ov.save_model(model, str(path), compress_to_fp16=config.precision is Precision.FP16)
        except Exception as e:  # OpenVINO raises RuntimeError and its own types
            raise library_error(
                STEP_NAME, fp32_model_xml, f"saving {path}", e, f"check that {out_dir} is writable"
            ) from e
    return path, kept


STEP = QuantizeStep(
    name=STEP_NAME,
    format=ModelFormat.OPENVINO,
    precisions=frozenset({Precision.FP16, Precision.INT8, Precision.DYNAMIC_INT8}),
    needs_calibration=frozenset({Precision.INT8}),
    budgeted=frozenset({Precision.INT8}),
    source_kinds=frozenset({ModelFormat.OPENVINO}),
    tools=TOOLS,
    config_type=OpenVINOQuantConfig,
    run=run,
)


def quantize_with_budget(
    fp32_xml: Path,
    calibration: CalibrationSet,
    eval_fn: EvalFn,
    fp32_accuracy: float,
    *,
    max_drop: float,
    out_dir: Path,
    max_ignored: int = 8,
    config: OpenVINOQuantConfig | None = None,
    accuracy_control: bool = True,
    log: Callable[[str], None] | None = None,
) -> QuantResult:
    """Quantize to int8 within ``max_drop`` of ``fp32_accuracy``, keeping layers in float if needed.

    Tries plain NNCF PTQ; then ``nncf.quantize_with_accuracy_control`` (its metric: top-1
    agreement with the fp32 model on the calibration tensors, so no labels are needed); then the
    1, 2, 4... ``max_ignored`` most sensitive layers in ``ignored_scope``. Each result is judged
    by ``eval_fn`` against ``fp32_accuracy``. A budget of 0 always runs the fallback.

    Args:
        eval_fn: model file -> accuracy in [0, 1], on the data ``fp32_accuracy`` came from (e.g.
            ``converters.quantize.common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
        fp32_accuracy: the fp32 model's accuracy, a fraction in [0, 1].
        max_drop: allowed drop in accuracy points (1.0 = one point), as profiles state it.
        out_dir: receives ``model.xml`` + ``model.bin``; scratch work happens below it.
        config: int8 settings (default ``OpenVINOQuantConfig()``); its ignored_scope is kept.
        accuracy_control: try NNCF's accuracy control before the ignored-scope fallback.

    Raises:
        ConfigError: bad budget arguments or config, or an unusable calibration set (before
            work); ``eval_fn`` returned something that is not an accuracy in [0, 1].
        ConversionError: quantization or sensitivity analysis failed (the cause is chained).
    """
    started = time.perf_counter()
    config = config if config is not None else OpenVINOQuantConfig()
    fp32_xml, out_dir = Path(fp32_xml), Path(out_dir)
    where = f"{STEP_NAME}: {fp32_xml}"
    if not isinstance(config, OpenVINOQuantConfig) or config.precision is not Precision.INT8:
        raise ConfigError(f"{where}: quantize_with_budget needs an int8 OpenVINOQuantConfig, got {config!r}")
    budget = Budget.checked(fp32_accuracy, max_drop, max_ignored, where)
    qc.require_calibration(calibration, where)
    with no_telemetry():
        qc.check_calibration(calibration, input_spec(read_model(fp32_xml), where), where)
    seven_bit = config.seven_bit()
    config = dataclasses.replace(config, overflow_fix=str(seven_bit.applied))
    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        outcome = search_budget(
            _search(fp32_xml, config, calibration, budget, eval_fn, accuracy_control=accuracy_control, log=log),
            budget,
            work_dir=Path(work),
            out_dir=out_dir,
        )
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


def _search(
    fp32_xml: Path,
    config: OpenVINOQuantConfig,
    calibration: CalibrationSet,
    budget: Budget,
    eval_fn: EvalFn,
    *,
    accuracy_control: bool,
    log: Callable[[str], None] | None,
) -> BudgetSearch:
    """The OpenVINO parts of the budget search: NNCF PTQ with an ignored scope, NNCF's accuracy control."""

    def quantize(extra: tuple[str, ...], directory: Path) -> Candidate:
        names = config.ignored_scope + tuple(n for n in extra if n not in config.ignored_scope)
        path, kept = run(fp32_xml, dataclasses.replace(config, ignored_scope=names), directory, calibration)
        return Candidate(
            model_path=path,
            kept=tuple(k.layer for k in kept),
            description="int8 NNCF PTQ",
            reasons={k.layer: k.reason for k in kept},
        )

    def control(plain: Path, directory: Path) -> Candidate:
        return nncf_accuracy_control(
            fp32_xml, plain, config, calibration, budget.max_drop, budget.max_ignored, directory
        )

    return BudgetSearch(
        quantize=quantize,
        evaluate=eval_fn,
        rank=lambda path: sensitive_layers(fp32_xml, path, calibration),
        accuracy_control=control if accuracy_control and budget.max_ignored > 0 else None,
        log=log,
    )
