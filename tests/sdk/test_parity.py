"""Tiered parity metrics against hand computations on tiny arrays, and tolerance checks."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from sdk.enums import OutputKind
from sdk.errors import ConfigError, InputError
from sdk.profiles import ParityTolerance
from sdk.qa.parity import (
    PSNR_CAP_DB,
    TASK_FIELDS,
    TOLERANCE_METRICS,
    ParityVerdict,
    compute_metrics,
    evaluate,
    output_metrics,
    task_metrics,
    tensor_metrics,
)

LOGITS = np.array([[2.0, 1.0, 0.5, -1.0], [0.1, 0.3, 2.5, 0.0], [1.0, 4.0, -2.0, 0.5]], dtype=np.float32)


# --------------------------------------------------------------------------- tensor tier


def test_tensor_metrics_succeeds_with_identical_arrays() -> None:
    m = tensor_metrics(LOGITS, LOGITS.copy())
    assert m["max_abs_diff"] == m["mean_abs_diff"] == m["p99_abs_diff"] == 0.0
    assert m["identical"] is True
    assert m["psnr_db"] == PSNR_CAP_DB  # "infinite", kept finite for JSON
    assert m["candidate_nonfinite"] == 0
    json.dumps(m, allow_nan=False)


def test_tensor_metrics_succeeds_with_known_perturbation() -> None:
    reference = np.arange(101, dtype=np.float64)
    candidate = reference + np.arange(101) * 0.01  # |diff| = 0.00, 0.01, ..., 1.00
    m = tensor_metrics(candidate, reference)
    assert m["max_abs_diff"] == pytest.approx(1.0)
    assert m["mean_abs_diff"] == pytest.approx(0.5)
    assert m["p99_abs_diff"] == pytest.approx(0.99)  # linear interpolation: element 99 of 0..100
    assert m["identical"] is False


def test_tensor_metrics_succeeds_with_psnr_formula() -> None:
    reference = np.array([0.0, 1.0, 2.0, 3.0])
    candidate = reference + np.array([0.1, -0.1, 0.0, 0.0])
    m = tensor_metrics(candidate, reference)
    # peak = 3 - 0, mse = 0.02 / 4 = 0.005: 10 * log10(9 / 0.005)
    assert m["reference_range"] == 3.0
    assert m["psnr_db"] == pytest.approx(10 * math.log10(1800.0))


def test_tensor_metrics_succeeds_with_nan_for_constant_reference() -> None:
    m = tensor_metrics(np.array([1.0, 1.5]), np.array([1.0, 1.0]))
    assert math.isnan(m["psnr_db"])


def test_tensor_metrics_fails_with_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(3, 4\).*\(3, 1, 4\)"):
        tensor_metrics(LOGITS, LOGITS.reshape(3, 1, 4))


def test_tensor_metrics_fails_with_empty_arrays() -> None:
    with pytest.raises(InputError, match="empty"):
        tensor_metrics(np.zeros((0, 4)), np.zeros((0, 4)))


# --------------------------------------------------------------------------- output tier


def test_output_metrics_succeeds_with_identical_logits() -> None:
    m = output_metrics(LOGITS, LOGITS.copy(), OutputKind.LOGITS)
    assert m["cosine_mean"] == pytest.approx(1.0) and m["cosine_min"] == pytest.approx(1.0)
    assert m["kl_mean"] == 0.0 and m["kl_max"] == 0.0


def test_output_metrics_succeeds_with_known_cosine_and_kl_direction() -> None:
    reference = np.array([[0.0, 0.0], [1.0, 0.0]])
    candidate = np.array([[math.log(3.0), 0.0], [1.0, 1.0]])
    m = output_metrics(candidate, reference, "logits")
    # Row 0: cosine with a zero reference row is 0; row 1: cos 45° = 1/sqrt(2).
    assert m["cosine_min"] == 0.0 and m["cosine_min_index"] == 0
    assert m["cosine_mean"] == pytest.approx((0.0 + 1 / math.sqrt(2)) / 2)
    # Row 0: p = (.5, .5), q = (.75, .25): KL(p || q) = 0.5 ln(4/3); KL(q || p) would be ~0.1308.
    kl_row0 = 0.5 * math.log(4 / 3)
    # Row 1: p = softmax(1, 0), q = (.5, .5): KL = sum p ln(2 p).
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    kl_row1 = float(np.sum(p * np.log(2 * p)))
    assert m["kl_max"] == pytest.approx(max(kl_row0, kl_row1))
    assert m["kl_mean"] == pytest.approx((kl_row0 + kl_row1) / 2)


def test_output_metrics_succeeds_with_large_logits_without_overflow() -> None:
    reference = np.array([[1000.0, 0.0]])
    m = output_metrics(reference + 1.0, reference, OutputKind.LOGITS)  # softmax is shift-invariant
    assert m["kl_mean"] == pytest.approx(0.0, abs=1e-12)


def test_output_metrics_succeeds_with_probabilities_containing_zeros() -> None:
    reference = np.array([[0.5, 0.5, 0.0]])
    candidate = np.array([[0.5, 0.25, 0.25]])
    m = output_metrics(candidate, reference, OutputKind.PROBABILITIES)
    assert math.isfinite(m["kl_mean"]) and m["kl_mean"] == pytest.approx(0.5 * math.log(2), rel=1e-6)


def test_output_metrics_succeeds_with_embeddings_without_kl() -> None:
    m = output_metrics(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]]), OutputKind.EMBEDDING)
    assert m["cosine_mean"] == pytest.approx(1.0)
    assert m["kl_mean"] is None


def test_output_metrics_fails_with_unknown_output_kind() -> None:
    with pytest.raises(ConfigError, match="output_kind"):
        output_metrics(LOGITS, LOGITS, "scores")


def test_output_metrics_fails_with_shape_mismatch() -> None:
    with pytest.raises(InputError, match=r"\(3, 4\).*\(2, 4\)"):
        output_metrics(LOGITS, LOGITS[:2], OutputKind.LOGITS)


# --------------------------------------------------------------------------- task tier


def test_task_metrics_succeeds_with_identical_logits() -> None:
    labels = np.array([0, 2, 3])
    m = task_metrics(LOGITS, LOGITS.copy(), labels, 4)
    assert m["top1_agreement"] == 1.0 and m["top5_overlap"] == 1.0
    assert m["top5_k"] == 4  # fewer than five classes: overlap over all of them
    assert m["accuracy_reference"] == m["accuracy_candidate"] == pytest.approx(2 / 3)
    assert m["accuracy_ratio"] == 1.0
    assert m["worst_class_recall_drop"] == 0.0


def test_task_metrics_succeeds_with_top5_overlap_case() -> None:
    reference = np.array([[6, 5, 4, 3, 2, 1, 0], [6, 5, 4, 3, 2, 1, 0]], dtype=np.float32)
    candidate = np.array([[0, 1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1, 0]], dtype=np.float32)
    m = task_metrics(candidate, reference, None, 7)
    # Row 0: {0..4} vs {2..6} share {2, 3, 4}: 3/5; row 1 identical: 5/5.
    assert m["top5_overlap"] == pytest.approx((0.6 + 1.0) / 2)
    assert m["top1_agreement"] == 0.5
    assert m["accuracy_ratio"] is None and m["worst_class"] is None


def test_task_metrics_succeeds_with_worst_class_recall_drop() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2])
    ref_pred = np.array([0, 0, 1, 1, 1, 0, 2, 1])  # recall: c0 2/2, c1 3/4, c2 1/2
    cand_pred = np.array([0, 1, 1, 0, 0, 0, 2, 2])  # recall: c0 1/2, c1 1/4, c2 2/2
    eye = np.eye(4)  # a 4th class never appears in the labels: not evaluated
    m = task_metrics(eye[cand_pred], eye[ref_pred], labels, 4, per_class=True)
    # drops: c0 0.5, c1 0.5, c2 -0.5: worst is 0.5, ties go to the lowest class id.
    assert m["worst_class_recall_drop"] == pytest.approx(0.5)
    assert m["worst_class"] == 0
    assert m["worst_class_recall_reference"] == 1.0 and m["worst_class_recall_candidate"] == 0.5
    assert m["classes_evaluated"] == 3
    assert m["recall_reference"] == [1.0, 0.75, 0.5, None]
    assert m["recall_candidate"] == [0.5, 0.25, 1.0, None]
    assert m["accuracy_reference"] == pytest.approx(6 / 8)
    assert m["accuracy_candidate"] == pytest.approx(4 / 8)
    assert m["accuracy_ratio"] == pytest.approx(4 / 6)


def test_task_metrics_succeeds_with_nan_ratio_for_zero_reference_accuracy() -> None:
    eye = np.eye(2)
    m = task_metrics(eye[[0, 0]], eye[[1, 1]], np.array([0, 0]), 2)
    assert m["accuracy_reference"] == 0.0 and math.isnan(m["accuracy_ratio"])


def test_task_metrics_fails_with_labels_out_of_range() -> None:
    with pytest.raises(InputError, match=r"\[0, 4\)"):
        task_metrics(LOGITS, LOGITS, np.array([0, 1, 4]), 4)


def test_task_metrics_fails_with_wrong_label_count() -> None:
    with pytest.raises(InputError, match="3 integers"):
        task_metrics(LOGITS, LOGITS, np.array([0, 1]), 4)


def test_task_metrics_fails_with_num_classes_mismatch() -> None:
    with pytest.raises(InputError, match="num_classes is 5"):
        task_metrics(LOGITS, LOGITS, None, 5)


def test_compute_metrics_succeeds_with_all_tiers_merged() -> None:
    m = compute_metrics(LOGITS, LOGITS, output_kind=OutputKind.LOGITS, labels=np.array([0, 2, 1]))
    assert {"max_abs_diff", "psnr_db", "cosine_mean", "kl_mean", "top1_agreement", "accuracy_ratio"} <= set(m)
    embedding = compute_metrics(LOGITS, LOGITS, output_kind=OutputKind.EMBEDDING)
    assert "top1_agreement" not in embedding


# --------------------------------------------------------------------------- checks


def test_tolerance_metrics_succeeds_with_every_tolerance_field_mapped() -> None:
    fields = {f.name for f in dataclasses.fields(ParityTolerance)}
    assert fields == set(TOLERANCE_METRICS)
    metrics = compute_metrics(LOGITS, LOGITS, output_kind="logits", labels=np.array([0, 2, 1]))
    image = {TOLERANCE_METRICS[f][1] for f in TASK_FIELDS["classification"]}
    assert image <= set(metrics)
    assert set().union(*TASK_FIELDS.values()) == fields


def test_evaluate_succeeds_with_only_the_fields_of_the_task() -> None:
    tolerance = ParityTolerance(min_top1_agreement=1.0, min_overlap_at_10=0.9, min_accuracy_ratio=0.99)
    metrics = {"top1_agreement": 1.0, "accuracy_ratio": 1.0, "overlap_at_10": 0.5}
    assert [c.metric for c in evaluate(metrics, tolerance)] == ["top1_agreement", "accuracy_ratio"]
    rec = evaluate(metrics, tolerance, task="recommendation")
    assert [(c.metric, c.passed) for c in rec] == [("accuracy_ratio", True), ("overlap_at_10", False)]
    with pytest.raises(ConfigError, match="parity task must be one of"):
        evaluate(metrics, tolerance, task="detection")


def test_evaluate_succeeds_with_identical_outputs_under_fp32_tolerances() -> None:
    tolerance = ParityTolerance(
        max_abs_diff=1e-4, min_psnr_db=60, min_cosine=0.99999, max_kl=1e-6,
        min_top1_agreement=1.0, min_top5_overlap=1.0, min_accuracy_ratio=1.0,
        max_worst_class_recall_drop=0.0,
    )  # fmt: skip
    metrics = compute_metrics(LOGITS, LOGITS.copy(), output_kind="logits", labels=np.array([0, 2, 1]))
    verdict = ParityVerdict.from_metrics(metrics, tolerance)
    assert verdict.passed and verdict.failed == ()
    assert len(verdict.checks) == 8
    assert json.loads(json.dumps(verdict.to_dict(), allow_nan=False))["checked"] == 8


def test_evaluate_fails_with_observed_beyond_allowed() -> None:
    metrics = {"max_abs_diff": 0.02, "psnr_db": 45.0, "top1_agreement": 0.97}
    tolerance = ParityTolerance(max_abs_diff=0.01, min_psnr_db=40.0, min_top1_agreement=0.98)
    checks = evaluate(metrics, tolerance)
    by_metric = {c.metric: c for c in checks}
    assert [c.tier for c in checks] == ["tensor", "tensor", "task"]
    failed = by_metric["max_abs_diff"]
    assert (failed.observed, failed.allowed, failed.comparison, failed.passed) == (0.02, 0.01, "<=", False)
    assert by_metric["psnr_db"].passed and by_metric["psnr_db"].comparison == ">="
    assert not by_metric["top1_agreement"].passed
    assert "0.97 >= 0.98: FAIL" in by_metric["top1_agreement"].describe()
    verdict = ParityVerdict.from_metrics(metrics, tolerance)
    assert not verdict.passed and verdict.failed == ("max_abs_diff", "top1_agreement")


def test_evaluate_succeeds_with_observed_equal_to_allowed() -> None:
    tolerance = ParityTolerance(min_top1_agreement=1.0, max_abs_diff=0.0)
    checks = evaluate({"top1_agreement": 1.0, "max_abs_diff": 0.0}, tolerance)
    assert all(c.passed for c in checks)


def test_evaluate_fails_with_nan_observed() -> None:
    candidate = LOGITS.copy()
    candidate[1, 2] = np.nan
    metrics = compute_metrics(candidate, LOGITS, output_kind="logits")
    tolerance = ParityTolerance(max_abs_diff=1.0, min_psnr_db=0.0, min_cosine=0.0, max_kl=10.0)
    verdict = ParityVerdict.from_metrics(metrics, tolerance)
    assert verdict.failed == ("max_abs_diff", "psnr_db", "cosine_mean", "kl_mean")
    assert all("NaN" in c.note for c in verdict.checks)
    assert metrics["candidate_nonfinite"] == 1
    document = verdict.to_dict()
    json.dumps(document, allow_nan=False)  # NaN reported as null
    assert document["checks"][0]["observed"] is None


def test_evaluate_fails_with_metric_not_measured() -> None:
    metrics = compute_metrics(LOGITS, LOGITS, output_kind="logits")  # no labels
    tolerance = ParityTolerance(min_top1_agreement=0.9, min_accuracy_ratio=0.99)
    verdict = ParityVerdict.from_metrics(metrics, tolerance)
    assert verdict.failed == ("accuracy_ratio",)
    assert verdict.checks[1].note == "not measured" and verdict.checks[1].observed is None
    skipping = ParityVerdict.from_metrics(metrics, tolerance, missing="skip")
    assert skipping.passed and skipping.skipped == ("accuracy_ratio",)


def test_evaluate_succeeds_with_no_tolerances_set() -> None:
    verdict = ParityVerdict.from_metrics({"max_abs_diff": 5.0}, ParityTolerance())
    assert verdict.passed and verdict.to_dict()["checked"] == 0


def test_evaluate_fails_with_unknown_missing_policy() -> None:
    with pytest.raises(ConfigError, match="missing"):
        evaluate({}, ParityTolerance(), missing="ignore")  # type: ignore[arg-type]
