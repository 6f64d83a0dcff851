"""``convert`` for a recommendation student: every format's int8 encoder built, verified through sdk, chosen.

A tiny recency student (dim 8, window 8) is trained once on the planted synthetic sequences (labels
only, 3 epochs); each test converts it for a profile on the synthetic data, so the whole module runs
on a laptop CPU in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("onnxruntime")

from cli import main
from converters.convert.choice import choose
from converters.convert.rec_pipeline import (
    RecConvertConfig,
    RecSource,
    convert_recommender,
    history_calibration,
    rec_plan,
    search_budget_pt,
)
from converters.convert.rec_source import is_recommendation_source
from converters.convert.rec_verify import make_rec_variant, overlap_at_10, verify_recommender
from converters.export.rec_bundle import package_recommender
from converters.export.source import load_source
from converters.quantize import tflite as quantize_tflite
from converters.quantize import tflite_debug
from converters.quantize.calibration import from_arrays
from converters.quantize.tflite_debug import TFLiteLayerSensitivity
from converters.training.rec_distill import DistillRecConfig, distill_recommender
from sdk.enums import ModelFormat, Precision, Runtime
from sdk.errors import ConfigError
from sdk.profiles import load_profile
from sdk.qa.ranking import RankedCases
from sdk.rec_datasets import RecDataset, open_rec_dataset
from sdk.recommender import Recommender
from sdk.tensors import TensorSpec

CONFIG = RecConvertConfig(calibration_size=64, max_cases=120, resamples=100, max_ignored=8)
RUNTIMES = {"x86-kiosk-cpu": Runtime.OPENVINO, "android-arm64": Runtime.LITERT, "onnxruntime-cpu": Runtime.ONNXRUNTIME}


def _quiet(message: str) -> None:
    pass


@pytest.fixture(scope="module")
def dataset() -> RecDataset:
    return open_rec_dataset("synthetic-sequences")


@pytest.fixture(scope="module")
def student_dir(dataset: RecDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = DistillRecConfig(shape="recency", dim=8, max_len=8, epochs=3, batch_size=64, lr=1e-2, alpha=0.0)
    out = tmp_path_factory.mktemp("rec-student")
    return distill_recommender(dataset.split, None, config, out, log=_quiet).student_dir


@pytest.fixture(scope="module")
def source(student_dir: Path, dataset: RecDataset) -> RecSource:
    return RecSource.open(student_dir, dataset.name)


@pytest.mark.parametrize("profile_id", list(RUNTIMES))
def test_rec_convert_succeeds_with_every_format_int8_built_and_verified(
    profile_id: str, source: RecSource, dataset: RecDataset, tmp_path: Path
) -> None:
    plan = rec_plan(load_profile(profile_id), max_drop_pt=100.0)
    lines: list[str] = []
    report = convert_recommender(source, plan, dataset, tmp_path, CONFIG, log=lines.append)
    by_precision = {v.precision: v for v in report.variants}
    assert set(by_precision) == set(plan.precisions)
    int8 = by_precision[Precision.INT8]
    manifest = int8.bundle.manifest
    assert (manifest.format, manifest.precision) == (plan.format, Precision.INT8)
    # The id input stays int32; the item files came from the fp32 bundle.
    assert manifest.inputs[0].dtype == "int32" and manifest.recommendation is not None
    parent = manifest.provenance.parent
    assert parent is not None and parent.startswith(f"{source.name}-{plan.format.value}-fp32@sha256:")
    for variant in report.variants:
        assert variant.evaluation.ran.runtime is RUNTIMES[profile_id]
        assert len(variant.evaluation.val) == CONFIG.max_cases and len(variant.evaluation.test) == CONFIG.max_cases
        assert 0.0 <= variant.overlap <= 1.0
    # A usable int8 encoder: it still ranks the planted successor near the fp32 model, within the budget.
    assert int8.meets_budget and int8.evaluation.val_ndcg > 0.5 * by_precision[Precision.FP32].evaluation.val_ndcg
    assert any(line.startswith("[quantize] ") for line in lines) and any("[verify]" in line for line in lines)
    saved = json.loads((tmp_path / profile_id / "report.json").read_text())
    assert saved["task"] == "recommendation" and saved["chosen"] == str(report.chosen.path)
    assert "| variant " in (tmp_path / profile_id / "report.md").read_text()
    chosen = report.chosen_variant
    assert report.chosen.path.name == f"{source.name}-{profile_id}-{chosen.precision.value}"
    metrics = report.chosen.manifest.metrics[profile_id]
    # The recorded numbers are reproduced by loading the published bundle through sdk.
    split = dataset.split
    again = verify_recommender(
        report.chosen, split.valid.head(CONFIG.max_cases), split.test.head(CONFIG.max_cases), plan, _quiet,
        resamples=100,
    )  # fmt: skip
    assert again.val_ndcg == pytest.approx(metrics["val_ndcg@10"], abs=1e-6)
    assert metrics["budget_pt"] == 100.0 and metrics["cases"] == {"val": CONFIG.max_cases, "test": CONFIG.max_cases}


def test_rec_convert_succeeds_with_budget_zero_and_large_budget_choosing_differently(
    source: RecSource, dataset: RecDataset, tmp_path: Path
) -> None:
    # Parity tolerances cleared: only the point budget decides, so the two budgets are the condition under test.
    profile = dataclasses.replace(load_profile("onnxruntime-cpu"), parity={})
    reports = {
        budget: convert_recommender(source, rec_plan(profile, budget), dataset, tmp_path / str(budget), CONFIG, _quiet)
        for budget in (0.0, 100.0)
    }
    for report in reports.values():
        text = report.to_markdown()
        for variant in report.variants:
            if not variant.chosen and variant.precision is Precision.INT8:
                # The report says why the preferred precision was not shipped.
                assert variant.misses or variant.larger_than_fp32
                assert f"{variant.name} misses" in text or f"{variant.name} is not chosen" in text
    large = reports[100.0].variants
    assert all(v.meets_budget for v in large)
    # Forced, deterministic: the same int8 evaluation one rank worse on every validation case drops NDCG@10.
    plan0, plan100 = rec_plan(profile, 0.0), rec_plan(profile, 100.0)
    fp32, int8 = large[0], next(v for v in large if v.precision is Precision.INT8)
    worse = dataclasses.replace(
        int8.evaluation, val=dataclasses.replace(int8.evaluation.val, ranks=int8.evaluation.val.ranks + 1)
    )
    smaller = int8.bundle.size_bytes() - 1
    for plan, expected in ((plan0, Precision.FP32), (plan100, Precision.INT8)):
        variant = make_rec_variant(int8.bundle, Precision.INT8, worse, fp32.evaluation, smaller + 1, plan, 0.0)
        variant = dataclasses.replace(variant, size_bytes=smaller)
        assert variant.drop_pt > 0
        candidates = [dataclasses.replace(fp32, fp32_size_bytes=smaller + 1), variant]
        # choose() is typed for the image Variant; RecVariant has every attribute it reads.
        assert choose(candidates, plan).precision is expected  # type: ignore[arg-type]
    assert search_budget_pt(rec_plan(load_profile("onnxruntime-cpu"), 0.5), Precision.INT8, 0.066) == pytest.approx(
        0.066
    )  # min_accuracy_ratio 0.99 of 0.066 allows 0.066 pt, tighter than 0.5


def test_rec_convert_fails_with_dataset_of_another_catalogue_naming_both(source: RecSource, tmp_path: Path) -> None:
    other = open_rec_dataset("synthetic-baskets")
    with pytest.raises(ConfigError, match=r"scores 100 items but dataset 'synthetic-baskets' .* has 60") as error:
        convert_recommender(source, rec_plan(load_profile("onnxruntime-cpu")), other, tmp_path, CONFIG, _quiet)
    assert str(source.description) in str(error.value)
    assert not (tmp_path / "onnxruntime-cpu").exists()  # refused before any export


def test_rec_source_fails_with_a_directory_that_is_no_model(tmp_path: Path) -> None:
    assert not is_recommendation_source(tmp_path)
    with pytest.raises(ConfigError, match="neither a recommendation student directory"):
        RecSource.open(tmp_path, "baskets")


def test_rec_source_succeeds_with_keras_bundle_and_fails_with_another_format(
    source: RecSource, dataset: RecDataset, tmp_path: Path
) -> None:
    bundles = package_recommender(
        source.encoder, source.item_table, source.item_bias, dataset.interactions.catalogue,
        np.ones(source.n_items), out_dir=tmp_path, name="tiny-rec", kind=source.kind, formats=("keras", "onnx"),
        max_len=source.max_len,
    )  # fmt: skip
    from_bundle = RecSource.open(bundles[ModelFormat.KERAS].path, "ignored")
    assert is_recommendation_source(bundles[ModelFormat.KERAS].path)
    assert (from_bundle.name, from_bundle.n_items, from_bundle.max_len) == ("tiny-rec", source.n_items, source.max_len)
    # The int8 table, dequantized: within half a step of each row's scale.
    step = np.abs(source.item_table).max(axis=1, keepdims=True) / 127
    assert np.all(np.abs(from_bundle.item_table - source.item_table) <= step / 2 + 1e-6)
    from_bundle.check_fits(dataset)
    with pytest.raises(ConfigError, match="a onnx bundle; convert starts from the Keras encoder"):
        RecSource.open(bundles[ModelFormat.ONNX].path, "ignored")


def test_calibration_succeeds_with_int32_histories_and_fails_with_float_images_for_the_id_input(
    source: RecSource, dataset: RecDataset
) -> None:
    calibration = history_calibration(dataset, source.max_len, 50, seed=0)
    assert calibration.tensors.dtype == np.int32 and calibration.tensors.shape == (50, source.max_len)
    assert calibration.tensors.max() <= source.n_items and calibration.tensors.min() >= 0  # index + 1, 0 = padding
    assert calibration.record()["histories"] == 50 and calibration.record()["dtype"] == "int32"
    spec = TensorSpec(name="history", shape=(-1, source.max_len), dtype="int32")
    calibration.check_matches(spec, "test")
    with pytest.raises(ConfigError, match="calibration tensors are float32 but the model input 'history' takes int32"):
        from_arrays(calibration.tensors.astype(np.float32)).check_matches(spec, "test")
    with pytest.raises(ConfigError, match="float32 or int32 batch"):
        from_arrays(calibration.tensors.astype(np.int64))


def test_tflite_ranking_succeeds_with_coarse_steps_first_and_a_student_without_them(
    source: RecSource, dataset: RecDataset, tmp_path: Path
) -> None:
    # The student's masked softmax has no large padding constant (a (mask - 1) * 1e9 term once gave
    # the logits an int8 scale of ~4e6, too coarse for the recency weights): no coarse step left.
    calibration = history_calibration(dataset, source.max_len, 32, seed=0)
    layers = quantize_tflite.sensitive_layers(load_source(source.encoder, tmp_path), calibration, samples=16)
    assert layers and not any(layer.coarse for layer in layers)
    assert max(layer.scale for layer in layers) < 1e3

    # The rule on its own: coarse first (most lost first), each followed by its readers, then by rmse/scale.
    def record(tensor: str, score: float, share: float) -> TFLiteLayerSensitivity:
        metrics = {"rmse/scale": score, "share below half a step": share}
        return TFLiteLayerSensitivity(
            name=tensor, op="ADD", metrics=metrics, score=score, tensor=tensor, layers=(), scale=1.0, coarse=share > 0.5
        )

    records = [record("a", 0.9, 0.0), record("b", 0.0, 0.7), record("c", 0.1, 0.0), record("d", 0.0, 0.9)]
    order = [r.tensor for r in tflite_debug._ranked(records, {"b": ("c",), "d": ("b",)})]
    assert order == ["d", "b", "c", "a"]


def test_overlap_at_10_succeeds_with_identical_and_disjoint_lists() -> None:
    top = np.arange(20, dtype=np.int32)[None].repeat(3, axis=0)
    ranked = RankedCases(
        model="a", n_items=100, ranks=np.ones(3, np.int64), top_items=top, targets=np.zeros(3, np.int32),
        groups=np.arange(3, dtype=np.int32),
    )  # fmt: skip
    assert overlap_at_10(ranked, ranked) == 1.0
    assert overlap_at_10(dataclasses.replace(ranked, top_items=top + 10), ranked) == 0.0
    half = top.copy()
    half[:, 5:10] = 50 + np.arange(5)
    assert overlap_at_10(dataclasses.replace(ranked, top_items=half), ranked) == 0.5


def test_cli_convert_succeeds_with_student_routed_to_the_recommendation_pipeline(
    student_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["convert", "--model", str(student_dir), "--dataset", "synthetic-sequences", "--profile", "onnxruntime-cpu"]
    code = main([*argv, "--out", str(tmp_path), "--eval-limit", "60", "--calibration-size", "32", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    report = payload["reports"][0]
    assert report["task"] == "recommendation" and report["plan"]["max_drop_pt"] == 0.5  # the profile's NDCG budget
    assert {v["precision"] for v in report["variants"]} == {"int8", "fp32"}
    with Recommender.from_bundle(report["chosen"], runtime="onnxruntime") as recommender:
        assert len(recommender.recommend(list(recommender.catalogue.ids[:2])).items) == 10
    # A recommendation model without its dataset, and a dataset with an image model, are refused.
    assert main(["convert", "--model", str(student_dir), "--profile", "onnxruntime-cpu"]) == 2
    assert "give --dataset" in capsys.readouterr().err
    assert main(["convert", "--model", str(tmp_path), "--dataset", "baskets", "--profile", "onnxruntime-cpu"]) == 2
    assert "--dataset is for recommendation models" in capsys.readouterr().err
