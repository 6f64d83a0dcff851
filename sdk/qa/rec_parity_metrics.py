"""Recommendation parity metrics and their checks (DESIGN.md, "Parity contract", recommendations).

For a candidate's score vectors against a reference's, on the same cases:

- task tier: ``overlap_at_10`` (mean share of the reference's top-10 found in the candidate's
  top-10, the history excluded in both), ``ndcg_at_10_vs_reference`` (the candidate's top-10
  graded by the reference's ranking: an item's relevance is the gain it has in the reference's
  top-10, ``1 / log2(position + 2)``, 0 outside it; the ideal is the reference's own list, so
  1.0 means the same ten items in the same order), and held-out NDCG@10 of both models on the
  hidden items with 95 % grouped-bootstrap intervals, their ratio (``heldout_ndcg_ratio``) and the
  paired difference's interval;
- tensor tier on the score vectors: max / mean / p99 absolute difference, PSNR and cosine
  (:func:`sdk.qa.parity.tensor_metrics`, :func:`sdk.qa.parity.output_metrics`).

Which ``ParityTolerance`` fields judge a recommender, and the metric each bounds, is the shared
table of :mod:`sdk.qa.parity_checks` (``TASK_FIELDS["recommendation"]``: abs differences, cosine,
overlap@10, NDCG@10 vs the reference, ``min_accuracy_ratio`` on the held-out NDCG@10 ratio, kept as
``accuracy_ratio``); the classification fields (KL, top-1/top-5, worst-class recall, PSNR) do not
apply. Pure numpy: a saved reference is judged on any machine.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from sdk.enums import OutputKind, Precision
from sdk.errors import InputError
from sdk.profiles import ParityTolerance
from sdk.qa.parity import Check, output_metrics, tensor_metrics
from sdk.qa.parity_checks import TASK_FIELDS, evaluate
from sdk.qa.ranking import RankedCases
from sdk.qa.ranking_stats import compare_ranked, ranking_report
from sdk.qa.rec_reference import TOP_K, RecReference
from sdk.recommender_items import ItemTable

__all__ = [
    "agreement_metrics",
    "effective_precision",
    "heldout_metrics",
    "rec_checks",
    "same_model",
    "score_metrics",
]

# Lower precision ranks higher: a bundle is as precise as its least precise part.
_PRECISION_RANK = {
    Precision.FP32: 0,
    Precision.MIXED: 1,
    Precision.FP16: 1,
    Precision.INT16X8: 2,
    Precision.DYNAMIC_INT8: 3,
    Precision.INT8: 3,
}
_DISCOUNT = 1.0 / np.log2(np.arange(TOP_K) + 2.0)


def effective_precision(*precisions: Precision) -> Precision:
    """The least precise of a bundle's parts (encoder as it ran, item table): whose tolerances apply."""
    return max(precisions, key=lambda p: _PRECISION_RANK[p])


def agreement_metrics(candidate_top: np.ndarray, reference_top: np.ndarray) -> dict[str, Any]:
    """``overlap_at_10`` and ``ndcg_at_10_vs_reference`` of two (cases, 10) top lists (-1: no item).

    Raises:
        InputError: the lists are not (cases, 10) of the same shape, or a reference list is empty.
    """
    c, r = np.asarray(candidate_top), np.asarray(reference_top)
    if c.shape != r.shape or c.ndim != 2 or c.shape[1] != TOP_K or not len(c):
        raise InputError(f"top-{TOP_K} lists of shapes {c.shape} and {r.shape}; pass (cases, {TOP_K}) for both")
    valid = r >= 0
    if not valid.any(axis=1).all():
        raise InputError("a reference top-10 list is empty (every item was in the history); drop that case")
    # match[i, j, p]: the candidate's j-th item is the reference's p-th.
    match = (c[:, :, None] == r[:, None, :]) & valid[:, None, :] & (c[:, :, None] >= 0)
    overlap = match.any(axis=2).sum(axis=1) / valid.sum(axis=1)
    gains = (match * _DISCOUNT[None, None, :]).sum(axis=2)  # each candidate item's gain in the reference's list
    dcg = (gains * _DISCOUNT[None, :]).sum(axis=1)
    ideal = (valid * _DISCOUNT[None, :] ** 2).sum(axis=1)
    ndcg = dcg / ideal
    return {
        "overlap_at_10": float(overlap.mean()),
        "overlap_at_10_min": float(overlap.min()),
        "ndcg_at_10_vs_reference": float(ndcg.mean()),
        "ndcg_at_10_vs_reference_min": float(ndcg.min()),
        "same_top_10": float(np.mean(np.all(c == r, axis=1))),
    }


def heldout_metrics(
    candidate: RankedCases, reference: RankedCases, *, resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Held-out NDCG@10 (and HR@10) of both with 95 % grouped-bootstrap intervals, their ratio, the paired test.

    Raises:
        ConfigError: the rankings are not of the same cases, or the bootstrap settings are out of range.
    """
    ours = ranking_report(candidate, resamples=resamples, seed=seed)
    theirs = ranking_report(reference, resamples=resamples, seed=seed)
    paired = compare_ranked(candidate, reference, resamples=resamples, seed=seed)
    ndcg_c, ndcg_r = ours.metric("ndcg@10"), theirs.metric("ndcg@10")
    difference = next(d for d in paired.differences if d.name == "ndcg@10")
    ratio = ndcg_c.value / ndcg_r.value if ndcg_r.value > 0 else math.nan
    return {
        "heldout_cases": len(candidate),
        "heldout_groups": ours.n_groups,
        "heldout_ndcg_candidate": ndcg_c.value,
        "heldout_ndcg_candidate_ci": [ndcg_c.low, ndcg_c.high],
        "heldout_ndcg_reference": ndcg_r.value,
        "heldout_ndcg_reference_ci": [ndcg_r.low, ndcg_r.high],
        "heldout_ndcg_ratio": ratio,
        "accuracy_ratio": ratio,  # what min_accuracy_ratio bounds for a recommender
        "heldout_ndcg_difference_ci": [difference.low, difference.high],
        "heldout_ndcg_verdict": str(difference.verdict),
        "heldout_hr_candidate": ours.metric("hr@10").value,
        "heldout_hr_reference": theirs.metric("hr@10").value,
    }


def score_metrics(candidate: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Tensor tier on (cases, n_items) score vectors: abs differences, PSNR, cosine (and softmax KL, reported).

    Raises:
        InputError: the shapes differ or an array is empty.
    """
    tensor = tensor_metrics(candidate, reference)
    output = output_metrics(candidate, reference, OutputKind.LOGITS)
    return {**tensor, **output}


def same_model(reference: RecReference, source_sha256: str, items: ItemTable) -> tuple[bool, str]:
    """Whether the candidate is the model the reference ran (so its scores may be compared number by number).

    Yes when the candidate's lineage root (provenance source sha256) is the reference model's, or
    when its item table is the reference bundle's within one int8 rounding step per row (a bundle
    re-packaged or quantized from the same trained student) and its bias is the same.

    Returns:
        (same, the basis in words).
    """
    if reference.info.get("model_sha256") == source_sha256:
        return True, "same model: the bundle's lineage root is the reference's model"
    table = reference.item_table
    if table is None or table.shape != (items.n_items, items.dim):
        return False, "different model (e.g. the teacher): not judged"
    ours = items.dequantized()
    step = np.abs(table).max(axis=1) / 127.0  # one int8 step of each row
    close = bool(np.all(np.abs(ours - table) <= 0.5 * step[:, None] * (1 + 1e-3) + 1e-7))
    bias_ref, bias = reference.item_bias, items.bias
    same_bias = (bias_ref is None) == (bias is None) and (
        bias is None or bias_ref is None or np.allclose(bias, bias_ref, rtol=1e-5, atol=1e-6)
    )
    if close and same_bias:
        return True, "same model: its item table is the reference bundle's (within its quantization step)"
    return False, "different model (e.g. the teacher): not judged"


def rec_checks(metrics: Mapping[str, Any], tolerance: ParityTolerance) -> tuple[list[Check], list[str]]:
    """The checks of the tolerances that apply to a recommender (``TASK_FIELDS["recommendation"]``).

    A NaN or unmeasured metric fails.

    Returns:
        (checks, the tolerances set but not checked, and why).
    """
    applies = TASK_FIELDS["recommendation"]
    skipped = [
        f"{f.name}: not a recommendation metric"
        for f in dataclasses.fields(tolerance)
        if getattr(tolerance, f.name) is not None and f.name not in applies
    ]
    return evaluate(metrics, tolerance, task="recommendation"), skipped
