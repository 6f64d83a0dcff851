"""convert end to end on a tiny model: plan, quantize, verify through sdk, choose, report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converters.convert.pipeline import ConvertConfig, ModelSource, convert
from converters.convert.plan import plan
from sdk import synthetic
from sdk.data import load_split
from sdk.enums import ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.qa.evaluation import evaluate
from sdk.manifest import Preprocessing
from sdk.profiles import load_profile

SIZE = 32


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("data"), train_per_class=6, val_per_class=4, size=48)


@pytest.fixture(scope="module")
def keras_bundle(data_root: Path, tmp_path_factory: pytest.TempPathFactory):
    import keras

    from converters.export.pipeline import export

    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(6, name="logits")(x)
    model = keras.Model(inputs, outputs)
    names = load_split(data_root, "train").class_names
    pre = Preprocessing(size=(SIZE, SIZE), mean=(127.5,) * 3, std=(127.5,) * 3)
    out = tmp_path_factory.mktemp("source")
    return export(model, out_dir=out, formats=["keras"], name="tiny", labels=names, preprocessing=pre)[ModelFormat.KERAS]


@pytest.mark.parametrize("profile_id", ["android-arm64", "x86-kiosk-cpu"])
def test_convert_succeeds_with_budget_zero_forcing_accuracy_control(
    profile_id: str, data_root: Path, keras_bundle, tmp_path: Path
) -> None:
    the_plan = plan(load_profile(profile_id), max_drop_pt=0.0)
    report = convert(ModelSource.from_bundle(keras_bundle.path), the_plan, data_root, tmp_path,
                     ConvertConfig(calibration_per_class=2, max_ignored=2, qat="off"), log=lambda m: None)
    by_precision = {v.precision: v for v in report.variants}
    assert set(by_precision) == set(the_plan.precisions)
    int8 = by_precision[Precision.INT8]
    # A budget of 0 never accepts plain PTQ: the int8 candidate either kept layers in float or
    # missed the budget and was not chosen.
    assert int8.kept_in_float > 0 or not int8.meets_budget
    for variant in report.variants:
        assert variant.bundle.manifest.format is the_plan.format
        assert 0.0 <= variant.agreement <= 1.0
    chosen = [v for v in report.variants if v.chosen]
    assert len(chosen) == 1 and chosen[0].meets_budget
    saved = json.loads((tmp_path / profile_id / "report.json").read_text())
    assert saved["chosen"] == str(report.chosen.path)
    metrics = report.chosen.manifest.metrics[profile_id]
    # The recorded numbers are reproduced by loading the published bundle through sdk.
    again = evaluate(report.chosen.path, load_split(data_root, "val"), profile=profile_id, fallback="record")
    assert again.top1 == pytest.approx(metrics["val_top1"], abs=1e-6)
    if int8.kept_in_float:
        kept = int8.bundle.manifest.kept_in_float
        assert kept and all(k.reason for k in kept)
    assert int8.bundle.manifest.provenance.parent.startswith("tiny-")
    calibration_steps = [s for s in int8.bundle.manifest.provenance.steps if "calibration" in s.config]
    assert calibration_steps and calibration_steps[-1].config["calibration"]["sha256"]


@pytest.mark.parametrize("profile_id", ["android-arm64", "x86-kiosk-cpu"])
def test_convert_succeeds_with_quantization_aware_fine_tuning_as_an_extra_int8(
    profile_id: str, data_root: Path, keras_bundle, tmp_path: Path
) -> None:
    the_plan = plan(load_profile(profile_id))
    lines: list[str] = []
    report = convert(ModelSource.from_bundle(keras_bundle.path), the_plan, data_root, tmp_path,
                     ConvertConfig(calibration_per_class=2, max_ignored=0, qat="always", qat_epochs=1, qat_per_class=4),
                     log=lines.append)

    int8 = [v for v in report.variants if v.precision is Precision.INT8]
    assert [v.name.endswith(f"-qat-{the_plan.format.value}-int8") for v in int8] == [False, True]
    qat = int8[1]
    steps = [s.name for s in qat.bundle.manifest.provenance.steps]
    assert steps[0] == "quantization_aware_fine_tuning" and steps[-1].startswith("quantize_")
    record = qat.bundle.manifest.provenance.steps[0].config
    assert record["images"] == 4 * 6 and record["weight_bits"] == (7 if profile_id == "x86-kiosk-cpu" else 8)
    assert record["source_sha256"] == keras_bundle.manifest.files[keras_bundle.model_path.name]
    # Verified through sdk like every candidate, against the same fp32 model.
    assert 0.0 <= qat.agreement <= 1.0 and qat.evaluation.ran.runtime.value in ("litert", "openvino")
    assert any(line.startswith("[qat] asked for") for line in lines)
    assert "-qat-" in (tmp_path / profile_id / "report.md").read_text()


def test_budget_misses_fails_with_parity_task_tier_even_inside_the_point_budget() -> None:
    from converters.convert.pipeline import budget_misses

    the_plan = plan(load_profile("x86-kiosk-cpu"))  # 1 pt budget; int8 parity: ratio 0.99, agreement 0.95
    # 0.6 pt below a 41.5 % fp32 model is 1.4 % relative: inside the budget, outside parity's ratio.
    misses = budget_misses(the_plan, Precision.INT8, 0.6, 0.409, 0.415, 0.97)
    assert len(misses) == 1 and "min_accuracy_ratio 0.99" in misses[0]
    misses = budget_misses(the_plan, Precision.INT8, 1.5, 0.835, 0.85, 0.90)
    assert [m.split()[0] for m in misses] == ["drop", "accuracy", "top-1"]
    assert budget_misses(the_plan, Precision.INT8, 0.3, 0.852, 0.855, 0.98) == ()


def test_convert_config_fails_with_unknown_qat_mode() -> None:
    with pytest.raises(ConfigError, match="qat"):
        ConvertConfig(qat="sometimes")


def test_plan_fails_with_reference_profile() -> None:
    with pytest.raises(ConfigError, match="no edge bundle to convert"):
        plan(load_profile("server-gpu-reference"))


def test_convert_fails_with_dataset_of_other_classes(keras_bundle, tmp_path: Path) -> None:
    other = synthetic.generate(tmp_path / "other", train_per_class=2, val_per_class=1, size=32)
    lines = (other / "classes.csv").read_text().splitlines()
    (other / "classes.csv").write_text("\n".join(lines[:-1]) + "\n")  # 5 classes, model has 6
    for split in ("train.txt", "val.txt"):
        kept = [line for line in (other / split).read_text().splitlines() if not line.endswith(", 5, 5")]
        (other / split).write_text("".join(line + "\n" for line in kept))
    with pytest.raises(ConfigError, match="the model has 6 classes but .* has 5"):
        convert(ModelSource.from_bundle(keras_bundle.path), plan(load_profile("onnxruntime-cpu")), other,
                tmp_path / "out", log=lambda m: None)
    assert not (tmp_path / "out" / "onnxruntime-cpu" / "variants").exists()


def test_model_source_fails_with_non_keras_bundle(tmp_path: Path, exported_bundles) -> None:
    with pytest.raises(ConfigError, match="starts from a Keras reference bundle"):
        ModelSource.from_bundle(exported_bundles[ModelFormat.ONNX].path)
