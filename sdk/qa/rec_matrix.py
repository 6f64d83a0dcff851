"""The release matrix for recommendation bundles: parity + ``recommend()`` bench per bundle x profile.

One row per (bundle, profile). A pair runs when the profile's runtime reads the bundle's format and
opens it here under the profile's device and fallback policy; then :func:`sdk.qa.rec_parity.run_rec_parity`
judges it against the saved reference with the profile's tolerances, and
:func:`sdk.qa.rec_bench.bench_recommenders` times ``recommend()`` end to end on the reference's
histories against ``budgets.p99_recommend_ms`` and ``bundle_size_mb``. A directory that is not a
valid recommendation bundle is a row with its error, not a crash: a release gate must see it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, Task
from sdk.errors import BackendUnavailableError, ShelfedgeError
from sdk.interaction_splits import EvalCases
from sdk.profiles import HardwareProfile
from sdk.progress import Log
from sdk.qa.rec_bench import RecBenchRow, bench_recommenders
from sdk.qa.rec_parity import RecParityResult, run_rec_parity
from sdk.qa.rec_reference import RecReference
from sdk.qa.tables import markdown_table
from sdk.recommender import Recommender

SCHEMA_VERSION = 1
COLUMNS = (
    "bundle", "profile", "runtime", "precision", "parity", "overlap@10", "NDCG@10 vs ref", "% of ref",
    "p50 ms", "p99 ms", "size MB", "budgets", "result",
)  # fmt: skip


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecMatrixRow:
    """One bundle on one profile: what ran and what it gave, or why it did not run."""

    bundle: str
    profile: str | None
    status: str  # ran | skipped | error
    reason: str | None = None
    parity: RecParityResult | None = None
    bench: RecBenchRow | None = None
    size_bytes: int | None = None
    budget_failures: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        if self.status == "error":
            return False
        if self.status == "skipped":
            return True
        return bool(self.parity and self.parity.passed) and not self.budget_failures

    def cells(self) -> dict[str, Any]:
        p, b = self.parity, self.bench
        m = p.metrics if p else {}
        return {
            "bundle": Path(self.bundle).name,
            "profile": self.profile or "-",
            "runtime": p.runtime.value if p else "-",
            "precision": f"{p.encoder_precision} (table {p.table_precision})" if p else "-",
            "parity": p.status if p else "-",
            "overlap@10": f"{m['overlap_at_10']:.3f}" if m else "-",
            "NDCG@10 vs ref": f"{m['ndcg_at_10_vs_reference']:.3f}" if m else "-",
            "% of ref": f"{100 * m['heldout_ndcg_ratio']:.1f}" if m else "-",
            "p50 ms": f"{b.latency.p50_ms:.3f}" if b else "-",
            "p99 ms": f"{b.latency.p99_ms:.3f}" if b else "-",
            "size MB": f"{self.size_bytes / 1e6:.3f}" if self.size_bytes else "-",
            "budgets": ("FAIL " + "; ".join(self.budget_failures)) if self.budget_failures else "pass",
            "result": {"ran": "PASS" if self.passed else "FAIL", "error": "ERROR"}.get(
                self.status, f"skipped: {self.reason}"
            ),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "profile": self.profile,
            "status": self.status,
            "reason": self.reason,
            "passed": self.passed,
            "parity": self.parity.to_dict() if self.parity else None,
            "bench": self.bench.to_dict() if self.bench else None,
            "size_bytes": self.size_bytes,
            "budget_failures": list(self.budget_failures),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecMatrixResult:
    rows: tuple[RecMatrixRow, ...]
    reference: RecReference

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows) and any(row.status == "ran" for row in self.rows)

    def table(self, skipped: bool = True) -> str:
        rows = [r.cells() for r in self.rows if skipped or r.status != "skipped"]
        return markdown_table(rows, list(COLUMNS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "task": "recommendation",
            "passed": self.passed,
            "reference": {"path": str(self.reference.path), **dict(self.reference.info)},
            "dataset": self.reference.dataset.to_dict(),
            "rows": [r.to_dict() for r in self.rows],
        }


def run_rec_matrix(
    bundles: Sequence[Path],
    profiles: Sequence[HardwareProfile],
    reference: RecReference,
    cases: EvalCases,
    histories: Sequence[Sequence[str]],
    *,
    blocks: int = 10,
    calls_per_block: int = 30,
    resamples: int = 200,
    log: Log = print,
) -> RecMatrixResult:
    """Every recommendation bundle x profile that can run here: parity, then ``recommend()`` timed.

    Raises:
        ParityError: the cases or catalogue are not the reference's (a usage error, before any row).
    """
    rows: list[RecMatrixRow] = []
    for path in bundles:
        try:
            bundle = Bundle.open(path)
        except ShelfedgeError as e:
            rows.append(RecMatrixRow(bundle=str(path), profile=None, status="error", reason=str(e)))
            continue
        if bundle.manifest.task is not Task.RECOMMENDATION:
            continue
        for profile in profiles:
            rows.append(
                _run_pair(bundle, profile, reference, cases, histories, blocks, calls_per_block, resamples, log)
            )
    return RecMatrixResult(rows=tuple(rows), reference=reference)


def _run_pair(
    bundle: Bundle,
    profile: HardwareProfile,
    reference: RecReference,
    cases: EvalCases,
    histories: Sequence[Sequence[str]],
    blocks: int,
    calls_per_block: int,
    resamples: int,
    log: Log,
) -> RecMatrixRow:
    name, pid = str(bundle.path), profile.id
    if profile.runtime not in RUNTIMES_FOR_FORMAT[bundle.manifest.format]:
        reason = f"{profile.runtime.value} does not read {bundle.manifest.format.value}"
        return RecMatrixRow(bundle=name, profile=pid, status="skipped", reason=reason)
    log(f"[matrix] {bundle.path.name} x {profile.id}")
    try:
        [parity] = run_rec_parity(
            [bundle.path], reference, cases, profile=profile, runtimes=[profile.runtime], resamples=resamples, log=log
        )
        with Recommender.from_bundle(bundle, profile=profile, threads=1) as rec:
            label = f"{bundle.path.name} @ {profile.id}"
            [bench] = bench_recommenders({label: rec}, histories, blocks=blocks, calls_per_block=calls_per_block)
    except BackendUnavailableError as e:
        return RecMatrixRow(bundle=name, profile=pid, status="skipped", reason=str(e).splitlines()[0])
    except ShelfedgeError as e:
        return RecMatrixRow(bundle=name, profile=pid, status="error", reason=str(e))
    size = bundle.size_bytes()
    failures = []
    budgets = profile.budgets
    if budgets.p99_recommend_ms is not None and bench.latency.p99_ms > budgets.p99_recommend_ms:
        failures.append(f"p99 {bench.latency.p99_ms:.3f} ms > {budgets.p99_recommend_ms:g} ms")
    if budgets.bundle_size_mb is not None and size / 1e6 > budgets.bundle_size_mb:
        failures.append(f"size {size / 1e6:.3f} MB > {budgets.bundle_size_mb:g} MB")
    return RecMatrixRow(
        bundle=name,
        profile=pid,
        status="ran",
        parity=parity,
        bench=bench,
        size_bytes=size,
        budget_failures=tuple(failures),
    )
