"""Tiered parity metrics and their checks against a profile's tolerances (DESIGN.md, "Parity contract").

Three tiers, each a function of a candidate's outputs and the reference's outputs for the
same preprocessed inputs:

- tensor: max / mean / p99 absolute difference and PSNR (:func:`tensor_metrics`);
- output: cosine similarity per sample and KL divergence of the softmax (:func:`output_metrics`);
- task: top-1 agreement, top-5 overlap, accuracy, accuracy ratio and worst-class recall drop
  (:func:`task_metrics`).

:func:`evaluate` turns the metrics into one :class:`Check` per tolerance the profile sets, and
:class:`ParityVerdict` gathers them (both in :mod:`sdk.qa.parity_checks`, importable from here
too). Pure numpy: no runtime is imported here, so a saved
reference can be judged on any machine.

Conventions fixed here once:

- everything is computed in float64, whatever the output dtype; quantized outputs must be
  dequantized first (``Quantization.dequantize``), otherwise integer codes are compared;
- a sample is the first axis; its other axes are flattened (``(N, ...) -> (N, -1)``);
- PSNR uses the reference's dynamic range (max - min) as the peak. Identical tensors have an
  infinite PSNR, reported as :data:`PSNR_CAP_DB` with ``identical: True`` so the value stays
  valid JSON and still passes any ``min_psnr_db``; larger values are clipped to the cap too. A
  constant reference that the candidate does not match has no defined PSNR: NaN (fails);
- KL is ``KL(reference || candidate)``: expectation over the reference's distribution, so the
  classes the reference believes in weigh most (the direction quantization calibration uses);
- a metric that cannot be defined (NaN/inf outputs, a reference with zero accuracy) is NaN,
  and a NaN never passes a check; :func:`jsonable` turns NaN into ``None`` for reports.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sdk.enums import OutputKind
from sdk.errors import ConfigError, InputError
from sdk.qa.parity_checks import (
    TASK_FIELDS,
    TOLERANCE_METRICS,
    Check,
    Comparison,
    Missing,
    ParityVerdict,
    Tier,
    evaluate,
    jsonable,
)

__all__ = [
    "PROBABILITY_FLOOR",
    "PSNR_CAP_DB",
    "TASK_FIELDS",
    "TOLERANCE_METRICS",
    "TOP_K",
    "Check",
    "Comparison",
    "Missing",
    "ParityVerdict",
    "Tier",
    "compute_metrics",
    "evaluate",
    "jsonable",
    "output_metrics",
    "task_metrics",
    "tensor_metrics",
]

# 200 dB is far above any tolerance a profile sets (fp32 asks ~60 dB) and above what a
# one-ulp float32 difference gives (~140-200 dB), so the cap only ever replaces "infinite".
PSNR_CAP_DB = 200.0
# Quantized probability outputs round small probabilities to exactly 0; without a floor one
# such class makes KL infinite from rounding alone.
PROBABILITY_FLOOR = 1e-8
TOP_K = 5

# --------------------------------------------------------------------------- metrics


def tensor_metrics(candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Element-wise differences between two tensors of the same shape.

    Returns:
        ``max_abs_diff``, ``mean_abs_diff``, ``p99_abs_diff`` (99th percentile, linear
        interpolation), ``psnr_db`` (peak = reference max - min, capped at
        :data:`PSNR_CAP_DB`), ``identical`` (bool), ``reference_range`` and
        ``candidate_nonfinite`` (count of NaN/inf values in the candidate).

    Raises:
        InputError: the shapes differ (both are named), an array is empty or not numeric.
    """
    c, r = _pair(candidate, reference, "tensor_metrics")
    with np.errstate(invalid="ignore", over="ignore"):
        diff = c - r
        abs_diff = np.abs(diff)
        mse = float(np.mean(np.square(diff)))
    peak = float(r.max() - r.min())
    identical = mse == 0.0
    if identical:
        psnr = PSNR_CAP_DB
    elif not (math.isfinite(mse) and math.isfinite(peak)) or peak == 0.0:
        psnr = math.nan
    else:
        psnr = min(PSNR_CAP_DB, 10.0 * math.log10(peak * peak / mse))
    return {
        "max_abs_diff": float(abs_diff.max()),
        "mean_abs_diff": float(abs_diff.mean()),
        "p99_abs_diff": float(np.percentile(abs_diff, 99)),
        "psnr_db": psnr,
        "identical": identical,
        "reference_range": peak,
        "candidate_nonfinite": int(np.size(c) - np.count_nonzero(np.isfinite(c))),
    }


def output_metrics(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    output_kind: OutputKind | str,
) -> dict[str, Any]:
    """Per-sample agreement of two model outputs: cosine similarity and softmax KL.

    Cosine is taken on the raw outputs (logits, probabilities or embeddings). Two all-zero
    samples count as identical (1.0), one all-zero sample as unrelated (0.0). KL is
    ``KL(softmax(reference) || softmax(candidate))`` via log-softmax for logits; for
    probability outputs the probabilities are floored at :data:`PROBABILITY_FLOOR` and
    renormalised; for embeddings KL is not defined and reported as ``None``.

    Args:
        candidate_logits: ``(N, ...)`` outputs of the model under test.
        reference_logits: ``(N, ...)`` reference outputs for the same inputs.
        output_kind: what the outputs are (the bundle manifest's ``output_kind``).

    Returns:
        ``cosine_mean``, ``cosine_min``, ``cosine_min_index`` (the worst sample),
        ``kl_mean`` and ``kl_max`` (``None`` for embeddings).

    Raises:
        InputError: the shapes differ (both are named), there is no sample axis, or an
            array is empty or not numeric.
        ConfigError: ``output_kind`` is not an OutputKind.
    """
    kind = _output_kind(output_kind)
    c, r = _samples(candidate_logits, reference_logits, "output_metrics")
    cosine = _cosine_rows(c, r)
    result: dict[str, Any] = {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "cosine_min_index": int(np.argmin(cosine)),
        "kl_mean": None,
        "kl_max": None,
    }
    if kind is not OutputKind.EMBEDDING:
        log_r = _log_probabilities(r, kind)
        log_c = _log_probabilities(c, kind)
        with np.errstate(invalid="ignore"):
            kl = np.sum(np.exp(log_r) * (log_r - log_c), axis=1)
        # KL >= 0; rounding can leave -1e-17 for identical rows. np.maximum keeps NaN.
        kl = np.maximum(kl, 0.0)
        result["kl_mean"] = float(kl.mean())
        result["kl_max"] = float(kl.max())
    return result


def task_metrics(
    candidate_logits: np.ndarray,
    reference_logits: np.ndarray,
    labels: np.ndarray | None,
    num_classes: int,
    *,
    per_class: bool = False,
) -> dict[str, Any]:
    """Classification agreement with the reference and, given labels, accuracy and recall.

    Ties resolve to the lowest class index (``argmax`` and a stable sort), the same on both
    sides. With fewer than five classes the overlap is over all of them (``top5_k``).

    Args:
        candidate_logits: ``(N, num_classes)`` scores of the model under test (logits or
            probabilities: only their order matters).
        reference_logits: ``(N, num_classes)`` reference scores for the same inputs.
        labels: ``(N,)`` integer ground-truth class ids, or None (accuracy metrics are then
            ``None``).
        num_classes: the number of classes; must equal the scores' width.
        per_class: also return ``recall_reference`` and ``recall_candidate``, one value per
            class (``None`` for classes absent from ``labels``).

    Returns:
        ``num_samples``, ``top1_agreement``, ``top5_overlap`` (mean of
        ``|top5_c ∩ top5_r| / 5``), ``top5_k``, ``accuracy_candidate``,
        ``accuracy_reference``, ``accuracy_ratio`` (candidate / reference, NaN when the
        reference scores 0), ``worst_class_recall_drop`` (max over classes present in
        ``labels`` of reference recall - candidate recall), ``worst_class``,
        ``worst_class_recall_reference``, ``worst_class_recall_candidate`` and
        ``classes_evaluated``.

    Raises:
        InputError: the shapes differ (both are named), the width is not ``num_classes``,
            or the labels are not ``N`` integers in ``[0, num_classes)``.
    """
    c, r = _samples(candidate_logits, reference_logits, "task_metrics")
    n, width = c.shape
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise InputError(f"task_metrics: num_classes must be a positive integer, got {num_classes!r}")
    if width != num_classes:
        raise InputError(
            f"task_metrics: scores have {width} values per sample but num_classes is {num_classes}; "
            "pass the classification output, or the number of labels of the bundle"
        )
    pred_c = np.argmax(c, axis=1)
    pred_r = np.argmax(r, axis=1)
    k = min(TOP_K, width)
    top_c = _top_k(c, k)
    top_r = _top_k(r, k)
    # Indices within a row are distinct, so counting matches counts the intersection.
    overlap = (top_c[:, :, None] == top_r[:, None, :]).any(axis=2).sum(axis=1) / k
    result: dict[str, Any] = {
        "num_samples": int(n),
        "top1_agreement": float(np.mean(pred_c == pred_r)),
        "top5_overlap": float(overlap.mean()),
        "top5_k": int(k),
        "accuracy_candidate": None,
        "accuracy_reference": None,
        "accuracy_ratio": None,
        "worst_class_recall_drop": None,
        "worst_class": None,
        "worst_class_recall_reference": None,
        "worst_class_recall_candidate": None,
        "classes_evaluated": None,
    }
    if labels is None:
        return result
    result.update(_accuracy_metrics(pred_c, pred_r, _labels(labels, n, width), width, per_class=per_class))
    return result


def _accuracy_metrics(
    pred_c: np.ndarray, pred_r: np.ndarray, y: np.ndarray, width: int, *, per_class: bool
) -> dict[str, Any]:
    """Accuracy of both sides, their ratio and the worst class's recall drop (see task_metrics)."""
    acc_c = float(np.mean(pred_c == y))
    acc_r = float(np.mean(pred_r == y))
    counts = np.bincount(y, minlength=width)
    recall_c = np.bincount(y[pred_c == y], minlength=width) / np.maximum(counts, 1)
    recall_r = np.bincount(y[pred_r == y], minlength=width) / np.maximum(counts, 1)
    present = np.flatnonzero(counts)
    drops = recall_r[present] - recall_c[present]
    worst = int(present[int(np.argmax(drops))])  # first (lowest id) of equal drops
    result: dict[str, Any] = {
        "accuracy_candidate": acc_c,
        "accuracy_reference": acc_r,
        "accuracy_ratio": acc_c / acc_r if acc_r > 0 else math.nan,
        "worst_class_recall_drop": float(drops.max()),
        "worst_class": worst,
        "worst_class_recall_reference": float(recall_r[worst]),
        "worst_class_recall_candidate": float(recall_c[worst]),
        "classes_evaluated": int(present.size),
    }
    if per_class:
        result["recall_reference"] = [float(v) if counts[i] else None for i, v in enumerate(recall_r)]
        result["recall_candidate"] = [float(v) if counts[i] else None for i, v in enumerate(recall_c)]
    return result


def compute_metrics(
    candidate: np.ndarray,
    reference: np.ndarray,
    *,
    output_kind: OutputKind | str,
    labels: np.ndarray | None = None,
    num_classes: int | None = None,
    per_class: bool = False,
) -> dict[str, Any]:
    """All three tiers for one output, merged into the flat dict :func:`evaluate` reads.

    The task tier is left out for embeddings. ``num_classes`` defaults to the outputs' width.

    Raises:
        InputError: see :func:`tensor_metrics`, :func:`output_metrics`, :func:`task_metrics`.
        ConfigError: ``output_kind`` is not an OutputKind.
    """
    kind = _output_kind(output_kind)
    metrics = {**tensor_metrics(candidate, reference), **output_metrics(candidate, reference, kind)}
    if kind is not OutputKind.EMBEDDING:
        c, _ = _samples(candidate, reference, "compute_metrics")
        classes = c.shape[1] if num_classes is None else num_classes
        metrics.update(task_metrics(candidate, reference, labels, classes, per_class=per_class))
    return metrics


# --------------------------------------------------------------------------- helpers


def _output_kind(value: OutputKind | str) -> OutputKind:
    try:
        return OutputKind.parse(value, "output_kind")
    except ValueError as e:
        raise ConfigError(str(e)) from e


def _pair(candidate: np.ndarray, reference: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    c = _numeric(candidate, "candidate", where)
    r = _numeric(reference, "reference", where)
    if c.shape != r.shape:
        # No broadcasting: a (N, C) vs (N, 1, C) mix-up must not compare the wrong elements.
        raise InputError(
            f"{where}: candidate shape {c.shape} differs from reference shape {r.shape}; "
            "compare the same output for the same inputs, in the same layout"
        )
    if c.size == 0:
        raise InputError(f"{where}: the arrays are empty (shape {c.shape}); nothing to compare")
    return c, r


def _samples(candidate: np.ndarray, reference: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    c, r = _pair(candidate, reference, where)
    if c.ndim < 2:
        raise InputError(f"{where}: expected (batch, ...) outputs, got shape {c.shape}; add the batch axis")
    return c.reshape(c.shape[0], -1), r.reshape(r.shape[0], -1)


def _numeric(array: np.ndarray, what: str, where: str) -> np.ndarray:
    x = np.asarray(array)
    if x.dtype.kind not in "iuf":
        raise InputError(f"{where}: {what} has dtype {x.dtype}; expected a numeric array")
    return x.astype(np.float64, copy=False)


def _cosine_rows(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        dot = np.sum(c * r, axis=1)
        norm_c = np.linalg.norm(c, axis=1)
        norm_r = np.linalg.norm(r, axis=1)
        cosine = dot / (norm_c * norm_r)
    zero_c, zero_r = norm_c == 0, norm_r == 0
    cosine = np.where(zero_c & zero_r, 1.0, cosine)
    cosine = np.where(zero_c ^ zero_r, 0.0, cosine)
    # Rounding puts identical rows at 1 + 1e-16; np.clip keeps NaN.
    return np.clip(cosine, -1.0, 1.0)


def _log_probabilities(x: np.ndarray, kind: OutputKind) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if kind is OutputKind.PROBABILITIES:
            p = np.maximum(x, PROBABILITY_FLOOR)
            return np.log(p / p.sum(axis=1, keepdims=True))
        shifted = x - x.max(axis=1, keepdims=True)  # exp never overflows after the shift
        return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise InputError(
            f"task_metrics: labels must be {n} integers (shape ({n},)), got shape {y.shape} "
            f"dtype {y.dtype}; pass one class id per sample"
        )
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(
            f"task_metrics: labels must be class ids in [0, {num_classes}), got values from "
            f"{int(y.min())} to {int(y.max())}; use the dataset's class ids of the bundle's labels"
        )
    return y.astype(np.int64, copy=False)
