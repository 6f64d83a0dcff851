"""ONNX Runtime static int8 (QDQ) quantization, sensitivity, nodes_to_exclude, accuracy budget;
and ONNX as a source model (ONNX -> OpenVINO IR).

A tiny Keras CNN is exported once per module to ONNX; every test quantizes that model with a
small calibration set of smooth random images and checks the result with onnxruntime itself
(graph inspection, outputs vs fp32) or through ``sdk.load`` after packaging.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
keras = pytest.importorskip("keras")

from converters.export.package import Lineage, PackageSpec, package  # noqa: E402
from converters.export.steps import ModelMetadata  # noqa: E402
from converters.quantize import common as qc  # noqa: E402
from converters.quantize import onnx as qox  # noqa: E402
from converters.quantize.calibration import from_arrays  # noqa: E402
from sdk.bundle import Bundle  # noqa: E402
from sdk.enums import ModelFormat, OutputKind, Precision, Task  # noqa: E402
from sdk.errors import ConfigError, ConversionError  # noqa: E402
from sdk.manifest import Preprocessing  # noqa: E402

pytestmark = [pytest.mark.onnxruntime, pytest.mark.tensorflow]

LABELS = ("apple", "banana", "milk", "yoghurt")
PREPROCESSING = Preprocessing(size=(32, 32), mean=(127.5,) * 3, std=(127.5,) * 3)
METADATA = ModelMetadata(
    task=Task.IMAGE_CLASSIFICATION, output_kind=OutputKind.LOGITS, preprocessing=PREPROCESSING, labels=LABELS
)


@pytest.fixture(scope="module")
def setup(quant_setup_for) -> Any:
    return quant_setup_for(ModelFormat.ONNX, qox.predictor, LABELS, PREPROCESSING)


@pytest.fixture(scope="module")
def int8_onnx(setup: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    return qox.run(
        setup.fp32_bundle.model_path, qox.ONNXQuantConfig(), tmp_path_factory.mktemp("int8"), setup.calibration
    )


def _nodes(path: Path) -> dict[str, object]:
    return {n.name: n for n in onnx.load(str(path)).graph.node}


def test_run_succeeds_with_qdq_model_close_to_fp32(setup: Any, int8_onnx: tuple[Path, list]) -> None:
    path, kept = int8_onnx
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert kept == []
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 8
    props = {p.key: p.value for p in model.metadata_props}
    fp32_props = {p.key: p.value for p in onnx.load(str(setup.fp32_bundle.model_path)).metadata_props}
    assert fp32_props.items() <= props.items() and props["shelfedge.task"] == "image_classification"
    int8_val = qox.predictor(path)(setup.val)
    assert qc.compare(setup.fp32_val, int8_val)["cosine"] > 0.98
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]


def _int8_weight_ranges(path: Path) -> list[tuple[int, int]]:
    from onnx import numpy_helper

    return [
        (int(a.min()), int(a.max()))
        for t in onnx.load(str(path)).graph.initializer
        if (a := numpy_helper.to_array(t)).dtype == np.int8 and a.size > 1 and a.any()
    ]  # weights, not zero points


def test_reduce_range_succeeds_with_7_bit_weights(setup: Any, int8_onnx: tuple[Path, list], tmp_path: Path) -> None:
    full = _int8_weight_ranges(int8_onnx[0])
    assert full and max(max(-low, high) for low, high in full) == 127
    path, _ = qox.run(setup.fp32_bundle.model_path, qox.ONNXQuantConfig(reduce_range=True), tmp_path, setup.calibration)
    reduced = _int8_weight_ranges(path)
    assert len(reduced) == len(full) and max(max(-low, high) for low, high in reduced) == 64  # symmetric 7 bits


@pytest.mark.parametrize(("vnni_flags", "reduced"), [((), True), (("avx_vnni",), False)], ids=["avx2", "vnni"])
def test_reduce_range_auto_succeeds_with_detected_cpu_recorded(
    setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vnni_flags: tuple, reduced: bool
) -> None:
    from converters.quantize import cpu

    monkeypatch.setattr(cpu, "host_cpu", lambda: cpu.CpuInt8(machine="x86_64", vnni_flags=vnni_flags, flags_read=True))
    result = qox.quantize_with_budget(
        setup.fp32_bundle.model_path,
        setup.calibration,
        lambda path: 1.0,
        1.0,
        max_drop=1.0,
        out_dir=tmp_path,
        config=qox.ONNXQuantConfig(reduce_range="auto"),
    )
    ranges = _int8_weight_ranges(result.model_path)
    assert max(max(-low, high) for low, high in ranges) == (64 if reduced else 127)
    record = result.step.config
    assert record["reduce_range"] is reduced and record["int8_arithmetic"]["seven_bit_weights"] is reduced
    assert record["int8_arithmetic"]["host_cpu"]["vnni_flags"] == list(vnni_flags)
    with pytest.raises(ConfigError, match="reduce_range"):
        qox.ONNXQuantConfig(reduce_range="sometimes")


def _int8_bundle(setup: Any, model: Path, out: Path) -> Bundle:
    return package(
        model,
        out_dir=out,
        spec=PackageSpec(name="tiny", format=ModelFormat.ONNX, precision=Precision.INT8, metadata=METADATA),
        lineage=Lineage(
            source=setup.source_model(),
            steps=(qc.step_record(qox.STEP_NAME, qox.ONNXQuantConfig(), setup.calibration, qox.TOOLS, 0.0),),
            parent=str(setup.fp32_bundle.path),
        ),
    )


def test_int8_bundle_succeeds_with_sdk_load(setup: Any, int8_onnx: tuple[Path, list], tmp_path: Path) -> None:
    import sdk

    bundle = _int8_bundle(setup, int8_onnx[0], tmp_path / "tiny-onnx-int8")
    with sdk.load(bundle) as model:
        logits = model.run({"image": setup.val[:8]})["logits"]
    assert qc.compare(setup.fp32_val[:8], logits)["cosine"] > 0.98


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_localize_succeeds_pairing_only_comparable_layers_of_a_qdq_model(
    setup: Any, int8_onnx: tuple[Path, list], tmp_path: Path, runtime: str
) -> None:
    pytest.importorskip(runtime)
    from sdk.enums import Runtime
    from sdk.qa.localize import localize

    bundle = _int8_bundle(setup, int8_onnx[0], tmp_path / "tiny-onnx-int8")
    x = setup.val[:4]
    # Tolerance 0: every compared layer "diverges", so the report lists what was paired.
    where = localize(
        Runtime(runtime),
        bundle,
        x,
        fp32=setup.fp32_bundle,
        fp32_inputs=x,
        compared_with="parent",
        tolerance=0.0,
        worst=100,
    )
    assert where.first is not None and where.first.index > 0
    # The quantizer folds ReLU into the convolution before it, under the ReLU's tensor name: such
    # pairs would differ by the whole negative half (relative error ~1) and must not be compared.
    assert where.worst and all(d.rel_error < 0.3 for d in where.worst)


def test_nodes_to_exclude_succeeds_with_sensitive_node_left_in_float(
    setup: Any, int8_onnx: tuple[Path, list], tmp_path: Path
) -> None:
    layers = qox.sensitive_layers(setup.fp32_bundle.model_path, int8_onnx[0], setup.calibration, samples=16)
    assert {s.op for s in layers} == {"Conv", "MatMul"} and len(layers) == 4
    assert [s.score for s in layers] == sorted((s.score for s in layers), reverse=True)
    assert all(0.9 < s.metrics["cosine"] <= 1.0 + 1e-6 for s in layers)
    top = layers[0].name
    path, kept = qox.run(
        setup.fp32_bundle.model_path, qox.ONNXQuantConfig(nodes_to_exclude=(top,)), tmp_path, setup.calibration
    )
    assert [k.layer for k in kept] == [top]
    nodes = _nodes(path)
    producers = {o: n for n in nodes.values() for o in n.output}
    # The excluded node reads float weights (an initializer, no DequantizeLinear) ...
    assert all(getattr(producers.get(name), "op_type", None) != "DequantizeLinear" for name in nodes[top].input[1:])
    # ... while every other ranked node still reads dequantized int8 weights.
    for other in layers[1:]:
        assert producers[nodes[other.name].input[1]].op_type == "DequantizeLinear"


def test_budget_zero_succeeds_with_fallback_and_kept_nodes_recorded(setup: Any, tmp_path: Path) -> None:
    eval_fn = qc.top1_eval(setup.val, setup.fp32_val.argmax(-1), qox.predictor)
    result = qox.quantize_with_budget(
        setup.fp32_bundle.model_path, setup.calibration, eval_fn, 1.0, max_drop=0.0, out_dir=tmp_path, max_ignored=4
    )
    assert result.attempts[0].description == "int8 static QDQ PTQ" and not result.attempts[0].met_budget
    assert len(result.attempts) >= 2 and all("most sensitive" in a.description for a in result.attempts[1:])
    assert result.kept_in_float and all("relative_error" in k.reason for k in result.kept_in_float)
    nodes = _nodes(result.model_path)
    producers = {o: n for n in nodes.values() for o in n.output}
    for kept in result.kept_in_float:
        assert producers.get(nodes[kept.layer].input[1]) is None  # weights straight from an initializer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    record = json.loads(json.dumps(result.step.to_dict()))
    assert record["config"]["budget"]["kept_in_float"][0]["layer"] == result.kept_in_float[0].layer


@pytest.mark.parametrize(
    "tensors",
    [np.zeros((0, 32, 32, 3), np.float32), np.zeros((4, 28, 28, 3), np.float32), np.zeros((4, 32, 32, 1), np.float32)],
    ids=["empty", "wrong-size", "wrong-channels"],
)
def test_run_fails_with_unusable_calibration_before_work(setup: Any, tmp_path: Path, tensors: np.ndarray) -> None:
    out_dir = tmp_path / "out"
    with pytest.raises(ConfigError, match="calibration"):
        qox.run(setup.fp32_bundle.model_path, qox.ONNXQuantConfig(), out_dir, from_arrays(tensors))
    with pytest.raises(ConfigError, match="calibration"):
        qox.quantize_with_budget(
            setup.fp32_bundle.model_path, from_arrays(tensors), lambda p: 1.0, 1.0, max_drop=0.01, out_dir=out_dir
        )
    with pytest.raises(ConfigError, match="needs a calibration set"):
        qox.run(setup.fp32_bundle.model_path, qox.ONNXQuantConfig(), out_dir, None)
    assert not out_dir.exists()


def test_config_fails_with_unknown_choices(setup: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="calibrate_method"):
        qox.ONNXQuantConfig(calibrate_method="Magic")
    with pytest.raises(ConfigError, match="activation_type"):
        qox.ONNXQuantConfig(activation_type="QInt4")
    with pytest.raises(ConfigError, match="not nodes of the pre-processed model"):
        qox.run(
            setup.fp32_bundle.model_path, qox.ONNXQuantConfig(nodes_to_exclude=("nope",)), tmp_path, setup.calibration
        )


def test_onnx_to_openvino_succeeds_matching_ort_fp32(setup: Any, tmp_path: Path) -> None:
    import openvino as ov

    import sdk
    from converters.export.onnx_source import load_onnx_source, onnx_to_openvino_step
    from converters.quantize import openvino as qov

    source = load_onnx_source(setup.fp32_bundle.model_path)
    assert source.kind is ModelFormat.ONNX and source.inputs[0].shape == (-1, 32, 32, 3)
    xml, step = onnx_to_openvino_step(setup.fp32_bundle.model_path, tmp_path / "ir")
    model = ov.Core().read_model(str(xml))
    assert model.get_rt_info(["shelfedge", "task"]).astype(str) == "image_classification"
    assert json.loads(model.get_rt_info(["shelfedge", "labels"]).astype(str)) == list(LABELS)
    assert np.max(np.abs(qov.predictor(xml)(setup.val) - setup.fp32_val)) < 1e-4
    bundle = package(
        xml,
        out_dir=tmp_path / "tiny-openvino-fp32",
        spec=PackageSpec(name="tiny", format=ModelFormat.OPENVINO, precision=Precision.FP32, metadata=METADATA),
        lineage=Lineage(source=source, steps=(step,)),
    )
    assert bundle.manifest.provenance.source_sha256 == source.sha256
    with sdk.load(bundle) as loaded:
        assert np.max(np.abs(loaded.run({"image": setup.val[:4]})["logits"] - setup.fp32_val[:4])) < 1e-4


def test_onnx_source_fails_with_missing_or_corrupted_file(tmp_path: Path) -> None:
    from converters.export.onnx_source import load_onnx_source, onnx_to_openvino

    corrupted = tmp_path / "broken.onnx"
    corrupted.write_bytes(b"\x08\x07garbage" * 8)
    with pytest.raises(ConversionError, match=r"broken\.onnx") as caught:
        onnx_to_openvino(corrupted, tmp_path / "out")
    assert caught.value.__cause__ is not None
    with pytest.raises(ConversionError, match=r"missing\.onnx"):
        load_onnx_source(tmp_path / "missing.onnx")
    with pytest.raises(ConversionError, match=r"broken\.onnx"):
        qox.run(corrupted, qox.ONNXQuantConfig(), tmp_path / "q", from_arrays(np.zeros((2, 32, 32, 3), np.float32)))
    assert not (tmp_path / "out").exists()
