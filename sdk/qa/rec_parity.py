"""Recommendation parity: every bundle on every runtime against a saved recommendation reference.

Each bundle is opened with :class:`sdk.recommender.Recommender` on each runtime that reads its format
(or the profile's, or those asked for), fed the reference's cases (history hashes checked first,
the catalogue and, for the same window, the encoder inputs too) and judged per
:mod:`sdk.qa.rec_parity_metrics`:

- the task tier (overlap@10, NDCG@10 vs the reference's ranking, held-out NDCG@10 ratio) and the
  tensor tier on the score vectors (abs differences, cosine) when the reference ran the same model
  (same lineage root, or the same item table within its quantization step);
- against another model (the teacher) nothing is judged: the row reports overlap@10, NDCG@10 vs the
  teacher's ranking and the held-out NDCG@10 ratio as "different model: not judged", because a
  profile's tolerances bound one model's drift across runtimes and precisions, not how closely a
  student ranks like its teacher.

Tolerances are the profile's (``profile``), else the generic profile of each runtime
(:data:`sdk.qa.parity_run.DEFAULT_TOLERANCE_PROFILE`), for the bundle's effective precision: the
least precise of its encoder (as it ran) and its item table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, Runtime
from sdk.errors import BackendUnavailableError, ConfigError, ParityError
from sdk.interaction_splits import EvalCases
from sdk.profiles import HardwareProfile
from sdk.progress import Log
from sdk.qa.parity import ParityVerdict, jsonable
from sdk.qa.parity_run import tolerance_profile
from sdk.qa.ranking import RankedCases
from sdk.qa.rec_parity_metrics import (
    agreement_metrics,
    effective_precision,
    heldout_metrics,
    rec_checks,
    same_model,
    score_metrics,
)
from sdk.qa.rec_reference import TOP_K, RecReference, rank_scores
from sdk.qa.rec_reference_make import score_cases
from sdk.qa.tables import markdown_table
from sdk.recommender import Recommender, RecommenderOptions
from sdk.recommender_items import read_item_files
from sdk.runtime import SessionInfo

__all__ = ["RecParityResult", "markdown", "run_rec_parity"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecParityResult:
    """One recommendation bundle on one runtime, against the reference. Immutable; safe to share.

    Attributes:
        judged: False when the reference is another model, or the tolerance profile sets nothing for
            this precision; the row is then reported, never failed.
        note: why it was not judged, or what was compared (windows, model identity).
    """

    bundle: str
    runtime: Runtime
    ran: dict[str, Any]
    precision: str
    encoder_precision: str
    table_precision: str
    tolerance_profile: str
    same_model: bool
    judged: bool
    note: str
    metrics: dict[str, Any]
    verdict: ParityVerdict

    @property
    def passed(self) -> bool:
        return not self.judged or self.verdict.passed

    @property
    def status(self) -> str:
        if not self.judged:
            return "not judged: " + ("different model" if not self.same_model else "no tolerances")
        return "PASS" if self.verdict.passed else "FAIL: " + ", ".join(self.verdict.failed)

    def row(self) -> dict[str, Any]:
        m = self.metrics
        low, high = m["heldout_ndcg_candidate_ci"]
        return {
            "bundle": Path(self.bundle).name,
            "runtime": self.runtime.value,
            "device": self.ran["actual_device"] + (" (fell back)" if self.ran["fell_back"] else ""),
            "precision": f"{self.encoder_precision} / table {self.table_precision}",
            "max abs diff": m["max_abs_diff"] if self.same_model else "—",
            "cosine": m["cosine_mean"] if self.same_model else "—",
            "overlap@10": m["overlap_at_10"],
            "NDCG@10 vs ref": m["ndcg_at_10_vs_reference"],
            "held-out NDCG@10 [95% CI]": f"{m['heldout_ndcg_candidate']:.4f} [{low:.4f}, {high:.4f}]",
            "% of ref": 100 * m["heldout_ndcg_ratio"],
            "verdict": self.status,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "runtime": self.runtime.value,
            "ran": self.ran,
            "precision": self.precision,
            "encoder_precision": self.encoder_precision,
            "table_precision": self.table_precision,
            "tolerance_profile": self.tolerance_profile,
            "same_model": self.same_model,
            "judged": self.judged,
            "passed": self.passed,
            "status": self.status,
            "note": self.note,
            "metrics": jsonable(self.metrics),
            "verdict": self.verdict.to_dict(),
        }


def run_rec_parity(
    bundles: Sequence[str | Path],
    reference: RecReference,
    cases: EvalCases,
    *,
    profile: HardwareProfile | None = None,
    runtimes: Sequence[Runtime] | None = None,
    resamples: int = 1000,
    log: Log = print,
) -> list[RecParityResult]:
    """Every recommendation bundle on every runtime that can open it, against ``reference``.

    Args:
        bundles: recommendation bundle directories.
        reference: a loaded recommendation reference.
        cases: the evaluation cases, opened again from the reference's dataset spec.
        profile: run on its runtime/device and judge with its tolerances.
        runtimes: restrict to these runtimes (default: every runtime of each format; one whose
            backend is not installed is skipped and logged).
        resamples: bootstrap resamples of the held-out NDCG@10 intervals.
        log: progress lines.

    Raises:
        ParityError: the cases, the catalogue or the windows are not the reference's.
        ConfigError: a bundle is not a recommendation bundle.
        BundleError, ManifestError, BackendUnavailableError (a runtime asked for by name),
            InferenceError: see ``Recommender.create``.
    """
    reference.check_cases(cases, "parity cases")
    context = _Context(
        reference=reference,
        ranked=rank_scores(reference.scores.astype(np.float32), cases, "reference"),
        cases=cases,
        profile=profile,
        resamples=resamples,
    )
    results = []
    for path in bundles:
        bundle = Bundle.open(path)
        spec = bundle.manifest.recommendation
        if spec is None:
            raise ConfigError(f"{bundle.path}: not a recommendation bundle; pass bundles made by package_recommender")
        items = read_item_files(bundle.path, spec)
        reference.check_catalogue(items.catalogue.ids, str(bundle.path))
        windows = reference.check_windows(cases, spec.max_len, spec.kind, str(bundle.path))
        same, basis = same_model(reference, bundle.manifest.provenance.source_sha256, items)
        chosen = _runtimes(bundle, profile, runtimes)
        if not chosen:
            log(f"[parity] {bundle.path.name}: no runtime asked for reads {bundle.manifest.format.value}; skipped")
        for runtime in chosen:
            options = RecommenderOptions(profile=profile, runtime=runtime, fallback="record")
            try:
                recommender = Recommender.create(bundle, options)
            except BackendUnavailableError as e:
                if runtimes:
                    raise
                log(f"[parity] {bundle.path.name} on {runtime.value}: skipped ({e})")
                continue
            with recommender:
                log(f"[parity] {bundle.path.name} on {runtime.value}: {reference.cases}")
                scores = score_cases(recommender, cases, log=log, label=f"[parity]   {runtime.value}")
                ran = recommender.info
            results.append(_judge(bundle, runtime, ran, scores, context, same=same, note=f"{basis}; {windows}"))
            log(f"[parity]   {results[-1].status}")
    return results


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Context:
    """What every row is judged against: the reference, its ranking of the cases, the tolerances' source."""

    reference: RecReference
    ranked: RankedCases
    cases: EvalCases
    profile: HardwareProfile | None
    resamples: int


def _judge(
    bundle: Bundle,
    runtime: Runtime,
    ran: SessionInfo,
    scores: np.ndarray,
    context: _Context,
    *,
    same: bool,
    note: str,
) -> RecParityResult:
    """The metrics and verdict of one bundle's scores on one runtime."""
    spec = bundle.manifest.recommendation
    assert spec is not None  # run_rec_parity checked
    reference = context.reference
    if scores.shape != reference.scores.shape:
        raise ParityError(f"{bundle.path}: scores {scores.shape} vs the reference's {reference.scores.shape}")
    ranked = rank_scores(scores, context.cases, f"{bundle.path.name} on {runtime.value}")
    metrics = {
        **agreement_metrics(ranked.top_items[:, :TOP_K], reference.top_k),
        **heldout_metrics(ranked, context.ranked, resamples=context.resamples),
        **score_metrics(scores, reference.scores),
    }
    precision = effective_precision(ran.precision, bundle.manifest.precision, spec.table_precision)
    judge = tolerance_profile(runtime, context.profile)
    if same:
        checks, skipped = rec_checks(metrics, judge.tolerance(precision))
        if not checks:
            note += f"; {judge.id} sets no recommendation tolerances for {precision.value}"
    else:
        # A profile's tolerances bound one model's drift across runtimes and precisions; a student
        # against its teacher is a distillation question: reported, not judged.
        checks, skipped = [], ["every tolerance: the reference is another model"]
    return RecParityResult(
        bundle=str(bundle.path),
        runtime=runtime,
        ran=ran.to_dict(),
        precision=precision.value,
        encoder_precision=ran.precision.value,
        table_precision=spec.table_precision.value,
        tolerance_profile=judge.id,
        same_model=same,
        judged=same and bool(checks),
        note=note,
        metrics=metrics,
        verdict=ParityVerdict(checks=tuple(checks), skipped=tuple(skipped)),
    )


def _runtimes(bundle: Bundle, profile: HardwareProfile | None, asked: Sequence[Runtime] | None) -> list[Runtime]:
    allowed = RUNTIMES_FOR_FORMAT[bundle.manifest.format]
    if profile is not None:
        return [profile.runtime] if profile.runtime in allowed else []
    return [r for r in allowed if not asked or r in asked]


def markdown(results: Sequence[RecParityResult], reference: RecReference) -> str:
    """The report: what the reference is and where it ran, the table, then failed checks and notes."""
    info = reference.info
    lines = [
        "# shelfedge parity (recommendations)",
        "",
        f"Reference: {info.get('model_name', info.get('model'))} ({info.get('model_kind', 'bundle')}) on "
        f"{info['runtime']} {info['device']} ({info.get('note')}); {reference.num_cases:,} cases: "
        f"{reference.dataset.describe()}.",
        "",
        markdown_table([r.row() for r in results]),
        "",
    ]
    for r in results:
        failed = [c.describe() for c in r.verdict.checks if not c.passed]
        lines.append(f"- {Path(r.bundle).name} on {r.runtime.value} ({r.tolerance_profile}, {r.precision}): {r.note}")
        lines.extend(f"  - {text}" for text in failed)
    return "\n".join(lines) + "\n"
