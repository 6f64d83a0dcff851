"""Step: fp32 OpenVINO IR -> fp16 IR, or int8 IR by NNCF post-training quantization.

``run`` quantizes once with a config; ``quantize_with_budget`` searches for the least-float int8
model within an accuracy budget (``quant_common.search_budget``): plain PTQ, then
``nncf.quantize_with_accuracy_control``, then the layers ``sensitive_layers`` ranks first kept
in float through NNCF's ignored scope. The shelfedge metadata in the fp32 IR's rt_info is
carried into every IR written here.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.quantize import common as qc
from converters.quantize.calibration import CalibrationSet
from converters.quantize.common import Candidate, EvalFn, LayerSensitivity, QuantResult
from converters.export.steps import METADATA_PREFIX
from sdk.enums import Precision
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import KeptInFloat
from sdk.tensors import TensorSpec

STEP_NAME = "quantize_openvino"
TOOLS = ("openvino", "nncf")
MODEL_FILE = "model.xml"
PRESETS = ("performance", "mixed")
MODEL_TYPES = (None, "transformer")
OVERFLOW_FIXES = ("enable", "first_layer_only", "disable")
# Ops whose weights NNCF quantizes (weightless quantized ops are ranked too).
LAYER_TYPES = frozenset({"Convolution", "GroupConvolution", "MatMul"})
# Layout-only ops NNCF may place between a FakeQuantize and the layer it feeds.
_PASS_THROUGH = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Convert"})
# Ops that only carry quantization (dequantizing weights), never a layer of their own.
_QUANT_PLUMBING = frozenset({"FakeQuantize", "Constant", "Convert", "Multiply", "Subtract", "Parameter", "Result"})
_INT_WEIGHTS = frozenset({"i8", "u8", "i4", "u4"})
_FIX = "check that the IR is an fp32 model exported by shelfedge and that openvino and nncf are installed"


@dataclasses.dataclass(frozen=True, kw_only=True)
class OpenVINOQuantConfig:
    """How to quantize an OpenVINO IR.

    Attributes:
        precision: ``FP16`` (weights stored as f16, no calibration) or ``INT8`` (NNCF PTQ).
        preset: NNCF preset: ``performance`` (symmetric) or ``mixed`` (asymmetric activations).
        subset_size: calibration samples NNCF uses (capped at the set's size).
        ignored_scope: layer (friendly) names NNCF must leave in float.
        fast_bias_correction: NNCF's fast bias correction (False: the slower full one).
        model_type: None, or ``transformer`` for NNCF's transformer-specific patterns.
        overflow_fix: NNCF's overflow fix: ``enable`` stores int8 weights in 7 bits everywhere so
            that CPUs without VNNI (AVX2: ``vpmaddubsw`` saturates its int16 sums) compute the
            same answers as VNNI/AMX CPUs; ``first_layer_only`` (NNCF's default) and ``disable``
            are for VNNI-only or GPU/NPU targets. Measured on an AVX2 AMD EPYC, the Grocery
            EfficientNet-Lite0 teacher: 0.811 val top-1 with ``first_layer_only`` vs 0.855 with
            ``enable`` (fp32 0.838).
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
        if self.precision not in (Precision.FP16, Precision.INT8):
            raise ConfigError(f"{where}.precision must be fp16 or int8, got {self.precision!r}")
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


def run(
    fp32_model_xml: Path,
    config: OpenVINOQuantConfig,
    out_dir: Path,
    calibration: CalibrationSet | None,
) -> tuple[Path, list[KeptInFloat]]:
    """Write ``out_dir/model.xml`` (+ ``.bin``) at ``config.precision``.

    fp16 stores the weights as f16 (``compress_to_fp16``); int8 runs ``nncf.quantize`` on the
    calibration tensors, one sample per batch, and saves with fp32 weights for the float layers.

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
    with qc.no_telemetry():
        import openvino as ov

        model = _read(fp32_model_xml)
        metadata = _metadata(model)
        kept: list[KeptInFloat] = []
        if config.precision is Precision.INT8:
            calibration = qc.check_calibration(calibration, _input_spec(model, where), where)
            names = _dedupe_friendly_names(model)
            unknown = [n for n in config.ignored_scope if n not in names]
            if unknown:
                raise ConfigError(
                    f"{where}: ignored_scope names {unknown} are not layers of the model; use names from "
                    f"sensitive_layers(), e.g. {sorted(_layers(model))[:8]}"
                )
            model = _nncf_quantize(model, config, calibration, fp32_model_xml)
            kept = [
                KeptInFloat(layer=n, precision=Precision.FP32, reason="listed in OpenVINOQuantConfig.ignored_scope")
                for n in config.ignored_scope
            ]
        _restore_metadata(model, metadata)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / MODEL_FILE
        try:
            ov.save_model(model, str(path), compress_to_fp16=config.precision is Precision.FP16)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own types
            raise qc.library_error(STEP_NAME, fp32_model_xml, f"saving {path}", e, f"check that {out_dir} is writable") from e
    return path, kept


def sensitive_layers(
    fp32_xml: Path, int8_xml: Path, calibration: CalibrationSet, samples: int = 32
) -> list[LayerSensitivity]:
    """Rank the int8 model's quantized ops: Convolution / GroupConvolution / MatMul layers and
    the weightless ops NNCF quantizes too (pooling, ReduceMean, Add...), as its accuracy control does.

    Both models run on the first ``samples`` calibration tensors with each layer's output, its
    input quantizer's input and output, and its dequantized weights added as model outputs;
    layers are matched by friendly name (deduplicated as NNCF does, so every name is valid in
    ``ignored_scope``).

    Returns:
        Most sensitive first; ``score`` is the relative error of the layer's own quantization
        (activation input + weights), see ``quant_common.layer_sensitivity``.

    Raises:
        ConfigError: the calibration set does not fit the model, or ``samples`` < 1.
        ConversionError: a model cannot be read or run.
    """
    fp32_xml, int8_xml = Path(fp32_xml), Path(int8_xml)
    where = f"{STEP_NAME}: sensitivity of {int8_xml}"
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{where}: samples must be a positive integer, got {samples!r}")
    with qc.no_telemetry():
        reference, quantized = _read(fp32_xml), _read(int8_xml)
        calibration = qc.check_calibration(calibration, _input_spec(reference, where), where)
        _dedupe_friendly_names(reference)
        names = quantized_layers(quantized)
        by_name = {op.get_friendly_name(): op for op in quantized.get_ops() if op.get_friendly_name() in names}
        pairs = [
            (op, by_name[op.get_friendly_name()])
            for op in reference.get_ordered_ops()
            if op.get_friendly_name() in by_name
            and by_name[op.get_friendly_name()].get_type_name() == op.get_type_name()
        ]
        ref_ports: list[Any] = []
        int8_ports: list[Any] = []
        for ref_op, int8_op in pairs:
            ref_ports.append(ref_op.output(0))
            int8_ports.append(int8_op.output(0))
            quantizer = _input_quantizer(int8_op.input(_activation_input(ref_op)).get_source_output())
            if quantizer is not None:
                int8_ports += [quantizer.input(0).get_source_output(), quantizer.output(0)]
            weights = _weight_input(int8_op)
            if weights is not None:
                ref_ports.append(ref_op.input(weights).get_source_output())
                int8_ports.append(int8_op.input(weights).get_source_output())
        batch = calibration.tensors[:samples]
        ref_values = dict(zip(map(_key, ref_ports), _outputs(reference, ref_ports, batch, where)))
        int8_values = dict(zip(map(_key, int8_ports), _outputs(quantized, int8_ports, batch, where)))
    layers = []
    for ref_op, int8_op in pairs:
        output = qc.compare(ref_values[_key(ref_op.output(0))], int8_values[_key(int8_op.output(0))])
        quantizer = _input_quantizer(int8_op.input(_activation_input(ref_op)).get_source_output())
        input_error = 0.0
        if quantizer is not None:
            before = int8_values[_key(quantizer.input(0).get_source_output())]
            input_error = qc.compare(before, int8_values[_key(quantizer.output(0))])["relative_error"]
        weights = _weight_input(int8_op)
        weight_error = 0.0
        if weights is not None:
            weight_error = qc.compare(
                ref_values[_key(ref_op.input(weights).get_source_output())],
                int8_values[_key(int8_op.input(weights).get_source_output())],
            )["relative_error"]
        name, kind = ref_op.get_friendly_name(), ref_op.get_type_name()
        layers.append(qc.layer_sensitivity(name, kind, output, input_error, weight_error))
    return qc.ranked(layers)


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
            ``quant_common.top1_eval(tensors, labels, predictor)``, or the bundle through ``sdk``).
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
    qc.check_budget(fp32_accuracy, max_drop, max_ignored, where)
    qc.require_calibration(calibration, where)
    with qc.no_telemetry():
        qc.check_calibration(calibration, _input_spec(_read(fp32_xml), where), where)

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
        return _accuracy_control(fp32_xml, plain, config, calibration, max_drop, max_ignored, directory)

    with qc.scratch_dir(out_dir, STEP_NAME) as work:
        candidate, kept, attempts, met = qc.search_budget(
            quantize=quantize,
            evaluate=eval_fn,
            rank=lambda path: sensitive_layers(fp32_xml, path, calibration),
            fp32_accuracy=fp32_accuracy,
            max_drop=max_drop,
            max_ignored=max_ignored,
            work_dir=Path(work),
            accuracy_control=control if accuracy_control and max_ignored > 0 else None,
            log=log,
        )
        qc.keep_only(candidate.model_path.parent, out_dir)
    budget = {
        "fp32_accuracy": fp32_accuracy,
        "max_drop": max_drop,
        "max_ignored": max_ignored,
        "met_budget": met,
        "attempts": attempts,
        "kept_in_float": kept,
    }
    step = qc.step_record(STEP_NAME, config, calibration, TOOLS, time.perf_counter() - started, {"budget": budget})
    return QuantResult(
        model_path=out_dir / MODEL_FILE,
        precision=Precision.INT8,
        kept_in_float=kept,
        attempts=attempts,
        met_budget=met,
        step=step,
    )


def predictor(model_xml: Path) -> qc.Predict:
    """``predict(batch) -> first output`` for an IR on the CPU in f32 (how the adapter runs it).

    Raises:
        ConversionError: the IR cannot be read or compiled.
    """
    model_xml = Path(model_xml)
    with qc.no_telemetry():
        model = _read(model_xml)
        try:
            compiled = _core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        except Exception as e:  # noqa: BLE001
            raise qc.library_error(STEP_NAME, model_xml, "compiling for the CPU", e, _FIX) from e
    batch = _static_batch(model)

    def predict(tensors: np.ndarray) -> np.ndarray:
        step = batch or len(tensors)
        parts = [compiled(tensors[i : i + step])[0] for i in range(0, len(tensors), step)]
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    return predict


def quantized_layers(model: Any) -> set[str]:
    """Friendly names of the ops of an ``ov.Model`` that run quantized (fed by FakeQuantize or
    int8 weights), to see what ignored_scope or accuracy control left in float."""
    return {
        op.get_friendly_name()
        for op in model.get_ops()
        if op.get_type_name() not in _QUANT_PLUMBING | _PASS_THROUGH and _is_quantized(op)
    }


def _nncf_quantize(model: Any, config: OpenVINOQuantConfig, calibration: CalibrationSet, path: Path) -> Any:
    import nncf

    try:
        return nncf.quantize(
            model,
            nncf.Dataset(list(calibration.batches(1))),
            advanced_parameters=_advanced(config),
            **_nncf_options(nncf, config, calibration),
        )
    except Exception as e:  # noqa: BLE001 - NNCF raises its own types, RuntimeError, ValueError...
        raise qc.library_error(STEP_NAME, path, "nncf.quantize", e, _FIX) from e


def _nncf_options(nncf: Any, config: OpenVINOQuantConfig, calibration: CalibrationSet) -> dict[str, Any]:
    return {
        "preset": nncf.QuantizationPreset(config.preset),
        "subset_size": min(config.subset_size, len(calibration)),
        "fast_bias_correction": config.fast_bias_correction,
        "model_type": nncf.ModelType(config.model_type) if config.model_type else None,
        "ignored_scope": nncf.IgnoredScope(names=list(config.ignored_scope)) if config.ignored_scope else None,
    }


def _advanced(config: OpenVINOQuantConfig) -> Any:
    """NNCF's advanced parameters; None (NNCF's own defaults) unless the overflow fix differs from them."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    if config.overflow_fix == "first_layer_only":
        return None
    return AdvancedQuantizationParameters(overflow_fix=OverflowFix(config.overflow_fix))


def _accuracy_control(
    fp32_xml: Path,
    plain_xml: Path,
    config: OpenVINOQuantConfig,
    calibration: CalibrationSet,
    max_drop: float,
    max_ignored: int,
    directory: Path,
) -> Candidate:
    with qc.no_telemetry():
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

        model = _read(fp32_xml)
        metadata = _metadata(model)
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
            advanced_quantization_parameters=_advanced(config),
            **_nncf_options(nncf, config, calibration),
        )
        _restore_metadata(quantized, metadata)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MODEL_FILE
        ov.save_model(quantized, str(path), compress_to_fp16=False)
        reverted = quantized_layers(_read(plain_xml)) - quantized_layers(quantized)
    kept = config.ignored_scope + tuple(sorted(reverted - set(config.ignored_scope)))
    reason = (
        f"reverted to float by nncf.quantize_with_accuracy_control (top-1 agreement with fp32 on "
        f"{len(items)} calibration samples, max_drop {max_drop:g} pt)"
    )
    return Candidate(
        model_path=path,
        kept=kept,
        description="nncf.quantize_with_accuracy_control",
        reasons={n: reason for n in reverted} | {n: "listed in OpenVINOQuantConfig.ignored_scope" for n in config.ignored_scope},
    )


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino as ov

    # One Core per process: it owns the device plugins, costly to load twice.
    return ov.Core()


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ConversionError(f"{STEP_NAME}: {path} does not exist; export the fp32 OpenVINO IR first")
    try:
        return _core().read_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise qc.library_error(STEP_NAME, path, "reading the IR", e, "re-export it; the .xml/.bin pair is corrupted") from e


def _input_spec(model: Any, where: str) -> TensorSpec:
    if len(model.inputs) != 1:
        raise ConfigError(f"{where}: the model has {len(model.inputs)} inputs; calibration sets feed one image input")
    port = model.inputs[0]
    shape = port.get_partial_shape()
    dims = () if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else -1 for d in shape)
    return TensorSpec(name=port.get_any_name(), shape=dims, dtype="float32")


def _static_batch(model: Any) -> int | None:
    shape = model.inputs[0].get_partial_shape()
    if shape.rank.is_dynamic or not shape[0].is_static:
        return None
    return shape[0].get_length()


def _metadata(model: Any) -> dict[str, str]:
    if not model.has_rt_info([METADATA_PREFIX]):
        return {}
    keys = model.get_rt_info()[METADATA_PREFIX]
    return {key: model.get_rt_info([METADATA_PREFIX, key]).astype(str) for key in keys}


def _restore_metadata(model: Any, metadata: dict[str, str]) -> None:
    # NNCF keeps rt_info today; the bundle's embedded metadata must not depend on that.
    for key, value in metadata.items():
        if not model.has_rt_info([METADATA_PREFIX, key]):
            model.set_rt_info(value, [METADATA_PREFIX, key])


def _dedupe_friendly_names(model: Any) -> set[str]:
    """Rename duplicate friendly names exactly as NNCF does before quantizing (``name`` + "0"),
    so names read here are the names NNCF's IgnoredScope and its output use."""
    names: set[str] = set()
    for op in model.get_ops():
        name = op.get_friendly_name()
        if name in names:
            name += "0"
            op.set_friendly_name(name)
        names.add(name)
    return names


def _layers(model: Any) -> set[str]:
    return {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in LAYER_TYPES}


def _source(output: Any) -> Any:
    """The node an output comes from, walking up layout-only ops."""
    node = output.get_node()
    while node.get_type_name() in _PASS_THROUGH:
        node = node.input(0).get_source_output().get_node()
    return node


def _is_quantized(op: Any) -> bool:
    for port in op.inputs():
        node = _source(port.get_source_output())
        if node.get_type_name() == "FakeQuantize" or _int_weights(node, depth=4):
            return True
    return False


def _int_weights(node: Any, depth: int) -> bool:
    """Whether ``node`` dequantizes integer weights: Constant(i8/u8) -> Convert -> [Subtract] -> Multiply."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _INT_WEIGHTS
    if depth == 0 or kind not in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
        return False
    return any(_int_weights(p.get_source_output().get_node(), depth - 1) for p in node.inputs())


def _activation_input(op: Any) -> int:
    """The input that carries activations (MatMul may take its weights first)."""
    for i, port in enumerate(op.inputs()):
        if _source(port.get_source_output()).get_type_name() != "Constant":
            return i
    return 0


def _input_quantizer(output: Any) -> Any | None:
    """The FakeQuantize feeding a layer input (through layout-only ops), if there is one."""
    node = _source(output)
    return node if node.get_type_name() == "FakeQuantize" else None


def _weight_input(op: Any) -> int | None:
    """The input whose weights NNCF stored as integers, if any."""
    for i, port in enumerate(op.inputs()):
        if _int_weights(_source(port.get_source_output()), depth=4):
            return i
    return None


def _outputs(model: Any, ports: Sequence[Any], batch: np.ndarray, where: str) -> list[np.ndarray]:
    """Values of ``ports`` (outputs of ``model``'s nodes) for ``batch``, one array each."""
    try:
        model.add_outputs(list(ports))
        # add_outputs reuses an existing Result for a port that already is a model output (and
        # for repeats), so each port is found by the node output its Result reads.
        where_is = {_key(out.get_node().input(0).get_source_output()): j for j, out in enumerate(model.outputs)}
        # With low-precision transformations on, the CPU plugin (2026.4) returns zeros for every
        # Result downstream of an added intermediate output of an int8 graph; without them it
        # runs FakeQuantize as float simulation, which is what a per-layer error needs anyway.
        config = {"INFERENCE_PRECISION_HINT": "f32", "LP_TRANSFORMS_MODE": False}
        compiled = _core().compile_model(model, "CPU", config)
        step = _static_batch(model) or len(batch)
        runs = [compiled(batch[i : i + step]) for i in range(0, len(batch), step)]
    except Exception as e:  # noqa: BLE001
        raise qc.library_error(STEP_NAME, where, "running the model with per-layer outputs", e, _FIX) from e
    values = []
    for port in ports:
        j = where_is[_key(port)]
        values.append(np.concatenate([np.asarray(r[j], np.float32) for r in runs]))
    return values


def _key(output: Any) -> tuple[str, int]:
    return output.get_node().get_name(), output.get_index()
