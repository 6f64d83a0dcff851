"""Distillation: the KD loss against a hand computation, soft targets steering training, a tiny
teacher -> student run with and without KD, the cache, and bad student specs."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from converters.training import distill as distill_module
from converters.training.distill import DistillConfig, distill_for_convert, parse_student_spec
from converters.training.distill_compare import compare, mcnemar_exact, paired_stats
from converters.training.distill_data import count_macs
from converters.training.distill_train import loop_config
from converters.training.loop import distillation_loss, train_loop
from converters.training.teacher_data import augment, input_spec
from sdk import synthetic
from sdk.bundle import Bundle
from sdk.data import load_split
from sdk.errors import ConfigError
from sdk.manifest import Preprocessing
from sdk.preprocess import decode_image, preprocess

pytestmark = pytest.mark.tensorflow

# pretrained=False: the tiny run checks the plumbing, not the ImageNet weights (no PyTorch needed).
TINY = DistillConfig(
    variant="lite0",
    input_size=32,
    views=2,
    train_stages=1,
    probe_epochs=1,
    epochs=1,
    batch_size=8,
    probe_batch_size=16,
    pretrained=False,
)
TEACHER_PRE = Preprocessing(size=(32, 32), crop_fraction=0.875, mean=(127.5,) * 3, std=(127.5,) * 3)
# MACs of the suite's tiny CNN at 32 px with 6 classes: conv (16x16 out, 3x3x3 -> 8), depthwise
# (16x16, 3x3x8) and the classifier (8 -> 6); BatchNorm and ReLU are not counted.
TINY_TEACHER_MACS = 16 * 16 * 9 * 3 * 8 + 16 * 16 * 9 * 8 + 8 * 6


def _tiny_teacher(tiny_cnn, classes: int):  # -> keras.Model
    return tiny_cnn(classes=classes, size=32, seed=1, name="tiny_teacher")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("data"), train_per_class=4, val_per_class=2, size=64)


@pytest.fixture(scope="module")
def teacher(data: Path, tiny_cnn, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from converters.export.pipeline import export
    from sdk.enums import ModelFormat

    classes = load_split(data, "train").class_names
    bundles = export(
        _tiny_teacher(tiny_cnn, len(classes)),
        out_dir=tmp_path_factory.mktemp("teacher"),
        formats=["keras"],
        name="tiny-teacher",
        labels=classes,
        preprocessing=TEACHER_PRE,
    )
    return bundles[ModelFormat.KERAS].path


@pytest.fixture(scope="module")
def compared(teacher: Path, data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("distill")
    lines: list[str] = []
    return compare(teacher, data, out, TINY, log=lines.append), out, lines


def test_distillation_loss_succeeds_with_hand_computed_value() -> None:
    s = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], np.float32)
    t = np.array([[1.0, 3.0, 0.0], [-2.0, 0.0, 2.0]], np.float32)
    y = np.array([0, 2])
    temperature, alpha, smoothing = 2.0, 0.6, 0.1

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_t, p_s = softmax(t / temperature), softmax(s / temperature)
    kl = (p_t * np.log(p_t / p_s)).sum(1).mean()
    targets = np.eye(3)[y] * (1 - smoothing) + smoothing / 3
    ce = -(targets * np.log(softmax(s))).sum(1).mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * ce

    got = float(distillation_loss(s, y, t, temperature=temperature, alpha=alpha, label_smoothing=smoothing))

    assert got == pytest.approx(expected, rel=1e-5)
    # The soft term is the teacher's: other teacher logits give another loss; alpha 0 ignores them.
    assert float(distillation_loss(s, y, -t, temperature=temperature, alpha=alpha)) != pytest.approx(got)
    assert float(distillation_loss(s, y, t, alpha=0.0, label_smoothing=smoothing)) == pytest.approx(ce, rel=1e-5)
    # A student equal to its teacher pays only the hard term.
    assert float(distillation_loss(t, y, t, temperature=3.0, alpha=alpha)) == pytest.approx(
        (1 - alpha) * float(distillation_loss(t, y, alpha=0.0)), rel=1e-5
    )


def test_distillation_loss_fails_with_kd_weight_and_no_teacher_logits() -> None:
    with pytest.raises(ConfigError, match="teacher"):
        distillation_loss(np.zeros((1, 3), np.float32), np.array([0]), None, alpha=0.5)


def test_train_loop_succeeds_with_soft_targets_steering_the_student() -> None:
    """Hard labels say class 0, the teacher says class 1: alpha 1 must follow the teacher, kd=False the labels."""
    import keras

    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    labels = np.zeros(64, np.int32)
    teacher_logits = np.tile(np.array([[0.0, 8.0, 0.0]], np.float32), (64, 1))
    predictions = {}
    for kd in (True, False):
        keras.utils.set_random_seed(0)
        dense = keras.layers.Dense(3)
        dense.build((None, 4))
        # kd=False must train on the labels alone, whatever alpha says.
        config = dataclasses.replace(TINY, kd=kd, alpha=1.0, temperature=2.0, weight_decay=0.0)
        schedule = dataclasses.replace(loop_config(config, probe=False), epochs=20, batch_size=16, lr=0.1)
        train_loop(
            forward=lambda inputs, training, layer=dense: layer(inputs),
            variables=list(dense.trainable_variables),
            sample=lambda idx: (x[idx], teacher_logits[idx]),
            labels=labels,
            config=schedule,
            evaluate=None,
            log=lambda line: None,
            label="t",
        )
        predictions[kd] = np.asarray(dense(x)).argmax(1)

    assert (predictions[True] == 1).all()
    assert (predictions[False] == 0).all()


def test_compare_succeeds_with_tiny_teacher_and_both_students(compared, teacher: Path) -> None:
    comparison, out, lines = compared

    assert [row["model"] for row in comparison.rows()] == ["teacher tiny-teacher", "lite0 + KD", "lite0 no KD"]
    for result, kd in ((comparison.kd, True), (comparison.baseline, False)):
        assert result.name == f"student-lite0-32-no6c6d-{'kd' if kd else 'nokd'}" and not result.cached
        assert result.model_path.is_file() and (result.student_dir / "labels.txt").is_file()
        bundle = Bundle.open(result.bundle_path)
        assert bundle.manifest.preprocessing.size == (32, 32)
        # The student keeps the teacher's field of view and uses its own backbone's normalisation.
        assert bundle.manifest.preprocessing.crop_fraction == TEACHER_PRE.crop_fraction
        assert bundle.manifest.provenance.parent == str(teacher)
        assert bundle.manifest.provenance.steps[0].name == "distill"
        assert bundle.manifest.metrics["val"]["val_top1"] == pytest.approx(result.student.val_top1, abs=1e-6)
        report = json.loads(result.report_path.read_text())
        assert report["config"]["kd"] is kd and report["config_hash"] == result.config_hash
        assert len(report["teacher_sha256"]) == 64 and len(report["data_hash"]) == 64
        assert report["teacher"]["macs"] == TINY_TEACHER_MACS
        assert report["student"]["macs"] > report["teacher"]["macs"] > 0 and report["student"]["params"] > 0
        assert 0.0 <= report["student"]["val_top1"] <= report["student"]["val_top5"] <= 1.0
        assert report["student"]["max_abs_logit_diff_cached_vs_bundle"] < 0.05
        assert {"student_features", "probe", "fine_tune", "export", "evaluate"} <= set(report["timings_s"])
        assert (report["teacher_logits"] is not None) is kd
    assert comparison.baseline.config.alpha == 0.0  # normalised: the baseline does not depend on KD settings
    saved = json.loads((out / "comparison.json").read_text())
    assert {
        "delta_top1_pt",
        "kd_only_correct",
        "baseline_only_correct",
        "mcnemar_p",
        "delta_top5_pt",
        "top5_mcnemar_p",
        "nll_kd",
        "nll_baseline",
    } <= set(saved["kd_vs_baseline"])
    assert "KD vs no KD" in (out / "comparison.md").read_text()
    # The baseline reuses the KD student's cached features.
    assert any("student train: reused 2 cached view(s)" in line for line in lines)


def test_teacher_logits_succeed_with_the_same_augmented_crop_the_student_sees(compared, data: Path) -> None:
    import keras

    comparison, out, _ = compared
    train = load_split(data, "train")
    view, i = 1, 5
    cached = np.load(next((out / "cache").glob(f"teacher-logits-*-view{view}.npy")))
    rng = np.random.default_rng([TINY.seed, view, i])
    crop = augment(decode_image(train.paths[i]), rng, comparison.kd.config.augment)
    bundle = Bundle.open(json.loads(comparison.kd.report_path.read_text())["teacher"]["bundle"])
    model = keras.saving.load_model(bundle.model_path, compile=False)
    expected = np.asarray(model(preprocess(crop, TEACHER_PRE, input_spec(TEACHER_PRE))))[0]
    np.testing.assert_allclose(cached[i].astype(np.float32), expected, atol=2e-2)
    # ... and the student's cached frozen features of that view come from the same crop.
    report = json.loads(comparison.kd.report_path.read_text())
    student = keras.saving.load_model(comparison.kd.model_path, compile=False)
    base = keras.Model(student.input, student.get_layer(report["student"]["frozen_up_to"]).output)
    student_pre = Bundle.open(comparison.kd.bundle_path).manifest.preprocessing
    features = np.load(next((out / "cache").glob(f"student-train-*-view{view}.npy")))
    expected = np.asarray(base(preprocess(crop, student_pre, input_spec(student_pre))))[0]
    np.testing.assert_allclose(features[i].astype(np.float32), expected, atol=2e-2 * max(1.0, np.abs(expected).max()))


def test_distill_succeeds_with_reusing_a_finished_student(compared, teacher: Path, data: Path) -> None:
    _, out, _ = compared
    lines: list[str] = []
    started = time.perf_counter()

    again = compare(teacher, data, out, TINY, log=lines.append)

    assert again.kd.cached and again.baseline.cached
    assert time.perf_counter() - started < 5.0
    assert sum("reusing" in line for line in lines) == 2


def test_distill_for_convert_succeeds_with_spec_and_profile_size(
    compared, teacher: Path, data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, out, _ = compared
    # The tiny recipe in place of the defaults: the hook then finds the KD student already made.
    monkeypatch.setattr(distill_module, "DistillConfig", lambda **kw: dataclasses.replace(TINY, **kw))
    lines: list[str] = []

    source = distill_for_convert("efficientnet_lite0", teacher, data, out, (32, 32), log=lines.append)

    assert source.name == "student-lite0-32-no6c6d-kd" and tuple(source.preprocessing.size) == (32, 32)
    assert len(source.labels) == 6 and any("reusing" in line for line in lines)


@pytest.mark.parametrize("spec", ["resnet50", "lite3", "lite0@", "lite0@16", "efficientnet_b0"])
def test_distill_for_convert_fails_with_bad_student_spec(spec: str, teacher: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lite0, lite1, lite2"):
        distill_for_convert(spec, teacher, data, tmp_path, (224, 224))


def test_parse_student_spec_succeeds_with_every_form() -> None:
    assert parse_student_spec("lite0") == ("lite0", None)
    assert parse_student_spec("efficientnet_lite1") == ("lite1", None)
    assert parse_student_spec("EfficientNet-Lite2@192") == ("lite2", 192)


def test_distill_fails_with_kd_and_zero_alpha(teacher: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        distill_module.distill(teacher, data, tmp_path, dataclasses.replace(TINY, alpha=0.0))


def test_distill_fails_with_a_block_that_cannot_be_dropped(teacher: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"DistillConfig\.drop_blocks: 'block6a' changes the shape"):
        distill_module.distill(teacher, data, tmp_path, dataclasses.replace(TINY, drop_blocks=("block6a",)))
    assert not any(tmp_path.iterdir())


def test_count_macs_succeeds_with_hand_count(tiny_cnn) -> None:
    assert count_macs(_tiny_teacher(tiny_cnn, 6)) == TINY_TEACHER_MACS


def test_mcnemar_exact_succeeds_with_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def test_paired_stats_succeed_with_hand_counted_photos() -> None:
    labels = np.array([0, 1, 2, 0])
    kd = np.eye(6)[[0, 1, 2, 3]] * 5.0  # right on the first three
    base = np.eye(6)[[0, 4, 5, 0]] * 5.0  # right on the first and the last

    stats = paired_stats(kd, base, labels)

    assert stats["delta_top1_pt"] == 25.0
    assert (stats["kd_only_correct"], stats["baseline_only_correct"]) == (2, 1)
    assert stats["mcnemar_p"] == pytest.approx(1.0)
    assert stats["nll_kd"] < stats["nll_baseline"]
