"""The release matrix: parity + bench for every bundle x hardware profile that can run here.

One row per (bundle, profile). A pair runs when the profile's runtime reads the bundle's
format and the runtime opens it on this host under the profile's own device and fallback
policy (a strict profile whose accelerator is absent is skipped, with the adapter's reason);
then :func:`sdk.qa.parity_run.run_parity` judges it with the profile's tolerances and
:func:`sdk.qa.bench.bench_bundle` measures it against the profile's budgets. A directory that is
not a valid bundle (tampered, broken manifest) is a row with its error, not a crash: a release
gate must see it. Reports (:mod:`sdk.qa.matrix_report`): ``matrix.json`` (schema-versioned), ``matrix.md`` and
``matrix.html``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sdk.bundle import Bundle
from sdk.data import ImageDataset
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat
from sdk.errors import BackendUnavailableError, ConfigError, ShelfedgeError
from sdk.loading import load
from sdk.manifest import MANIFEST_NAME
from sdk.profiles import HardwareProfile
from sdk.progress import Log
from sdk.qa.bench import BenchConfig, bench_bundle
from sdk.qa.bench_result import BenchResult
from sdk.qa.parity_run import ParityResult, run_parity, select
from sdk.qa.reference import Reference
from sdk.qa.tables import markdown_table
from sdk.versions import host_info, tool_versions

SCHEMA_VERSION = 1
Status = Literal["ran", "skipped", "error"]
# Server-model formats: in a convert/export directory they are the reference, not a candidate.
REFERENCE_FORMATS = (ModelFormat.KERAS, ModelFormat.SAVEDMODEL)
SUMMARY_COLUMNS = (
    "bundle",
    "profile",
    "runtime",
    "device",
    "precision",
    "parity",
    "top-1 agree",
    "acc % of ref",
    "max abs diff",
    "infer p50 ms",
    "infer p95 ms",
    "e2e p50 ms",
    "size MB",
    "budgets",
    "result",
)
_MB = 1e6  # as the bench reports count megabytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatrixRow:
    """One bundle on one profile: what ran and what it gave, or why it did not run."""

    bundle: str  # the bundle directory
    name: str  # its path relative to the matrix root, for tables
    profile: str | None  # None: the directory is not a valid bundle
    runtime: str | None
    format: str | None
    precision: str | None
    status: Status
    reason: str | None = None  # why skipped, or the error
    parity: ParityResult | None = None
    bench: BenchResult | None = None

    @property
    def parity_passed(self) -> bool | None:
        return self.parity.verdict.passed if self.parity else None

    @property
    def failures(self) -> tuple[str, ...]:
        """Every failed parity check and budget, and the error of an error row."""
        found = [f"error: {self.reason}"] if self.status == "error" else []
        if self.parity:
            found += [f"parity {c.describe()}" for c in self.parity.verdict.checks if not c.passed]
        if self.bench:
            found += [f"budget {c.describe()}" for c in self.bench.budgets if c.passed is False]
        return tuple(found)

    @property
    def passed(self) -> bool:
        """No error, no failed check or budget (a skipped row passes: it gates nothing)."""
        return not self.failures

    def summary_row(self) -> dict[str, Any]:
        m = self.parity.metrics if self.parity else {}
        inf = self.bench.inference if self.bench else None
        e2e = self.bench.end_to_end if self.bench else None
        budgets = self.bench.budgets_passed if self.bench else None
        failed_budgets = [c.budget for c in self.bench.budgets if c.passed is False] if self.bench else []
        if self.status == "ran":
            result = "PASS" if self.passed else "FAIL"
        else:
            result = f"{self.status}: {_short(self.reason or '')}"
        return {
            "bundle": self.name,
            "profile": self.profile or "-",
            "runtime": self.runtime,
            "device": self._device(),
            "precision": self.precision,
            "parity": None
            if not self.parity
            else ("pass" if self.parity.verdict.passed else "FAIL: " + ", ".join(self.parity.verdict.failed)),
            "top-1 agree": m.get("top1_agreement"),
            "acc % of ref": None if m.get("accuracy_ratio") is None else 100 * m["accuracy_ratio"],
            "max abs diff": m.get("max_abs_diff"),
            "infer p50 ms": round(inf.p50_ms, 3) if inf else None,
            "infer p95 ms": round(inf.p95_ms, 3) if inf else None,
            "e2e p50 ms": round(e2e.latency.p50_ms, 3) if e2e else None,
            "size MB": round(self.bench.bundle_size_bytes / _MB, 3) if self.bench else None,
            "budgets": None if budgets is None else ("pass" if budgets else "FAIL: " + ", ".join(failed_budgets)),
            "result": result,
        }

    def to_dict(self) -> dict[str, Any]:
        m = self.parity.metrics if self.parity else {}
        bench = None
        if self.bench:
            full = {k: v for k, v in self.bench.to_dict().items() if k != "inference_samples_ms"}
            e2e = self.bench.end_to_end
            bench = {
                "infer_p50_ms": self.bench.inference.p50_ms,
                "infer_p95_ms": self.bench.inference.p95_ms,
                "e2e_p50_ms": e2e.latency.p50_ms if e2e else None,
                "size_mb": self.bench.bundle_size_bytes / _MB,
                "budgets_passed": self.bench.budgets_passed,
                "failed_budgets": [c.describe() for c in self.bench.budgets if c.passed is False],
                "result": full,
            }
        parity = None
        if self.parity:
            verdict = self.parity.verdict
            parity = {
                "passed": verdict.passed,
                "failed": list(verdict.failed),
                "failed_checks": [c.describe() for c in verdict.checks if not c.passed],
                "top1_agreement": m.get("top1_agreement"),
                "accuracy_ratio": m.get("accuracy_ratio"),
                "max_abs_diff": m.get("max_abs_diff"),
                "result": self.parity.to_dict(),
            }
        return {
            "bundle": self.bundle,
            "name": self.name,
            "profile": self.profile,
            "runtime": self.runtime,
            "format": self.format,
            "precision": self.precision,
            "device": self._device(),
            "status": self.status,
            "reason": self.reason,
            "passed": self.passed,
            "failures": list(self.failures),
            "parity": parity,
            "bench": bench,
        }

    def _device(self) -> str | None:
        ran = dict(self.bench.session) if self.bench else (self.parity.ran if self.parity else None)
        if not ran:
            return None
        return str(ran.get("actual_device")) + (" (fell back)" if ran.get("fell_back") else "")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MatrixResult:
    """Every row of one matrix run, plus what was left out of it and why."""

    root: str
    profiles: tuple[str, ...]
    rows: tuple[MatrixRow, ...]
    excluded: tuple[tuple[str, str], ...]  # (bundle directory, why it is not a candidate)
    reference: dict[str, Any]
    images: int

    @property
    def passed(self) -> bool:
        return all(row.passed for row in self.rows)

    @property
    def ran(self) -> tuple[MatrixRow, ...]:
        return tuple(row for row in self.rows if row.status == "ran")

    def table(self, *, skipped: bool = True) -> str:
        """The summary table; ``skipped=False`` leaves the skipped pairs out (they are listed apart)."""
        rows = [row for row in self.rows if skipped or row.status != "skipped"]
        return markdown_table([_cells(row.summary_row()) for row in rows], SUMMARY_COLUMNS)

    def skipped_reasons(self) -> dict[str, int]:
        """How many pairs were skipped, per reason (the reason's first clause)."""
        reasons: dict[str, int] = {}
        for row in self.rows:
            if row.status == "skipped":
                key = (row.reason or "").split(";")[0].split(" (")[0]
                reasons[key] = reasons.get(key, 0) + 1
        return reasons

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "shelfedge.matrix",
            "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "host": host_info(),
            "versions": tool_versions(),
            "root": self.root,
            "profiles": list(self.profiles),
            "reference": self.reference,
            "images": self.images,
            "passed": self.passed,
            "counts": {s: sum(r.status == s for r in self.rows) for s in ("ran", "skipped", "error")},
            "excluded": [{"bundle": b, "reason": why} for b, why in self.excluded],
            "rows": [row.to_dict() for row in self.rows],
        }


def find_bundles(root: str | Path) -> list[Path]:
    """Every directory at or below ``root`` holding a bundle manifest, sorted.

    Raises:
        ConfigError: ``root`` is not a directory, or no manifest is below it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"--bundles {root}: no such directory; pass a 'shelfedge convert --out' or export directory")
    found = sorted({p.parent for p in root.rglob(MANIFEST_NAME)})
    if not found:
        raise ConfigError(f"--bundles {root}: no {MANIFEST_NAME} below it; export or convert bundles there first")
    return found


def run_matrix(
    root: str | Path,
    profiles: Sequence[HardwareProfile],
    reference: Reference,
    dataset: ImageDataset,
    *,
    bench: BenchConfig | None = None,
    bench_images: int = 32,
    exclude: Sequence[str | Path] = (),
    log: Log = print,
) -> MatrixResult:
    """Parity and bench for every bundle below ``root`` on every profile that can run it here.

    Args:
        root: a directory of bundles (flat, or a convert output with profile/variants folders).
        profiles: the target profiles; each pair uses the profile's runtime, device, fallback,
            tolerances and budgets.
        reference: the server model's outputs (:func:`sdk.qa.parity_run.open_reference`).
        dataset: the images the reference was made from.
        bench: how much to measure (its images and labels are replaced by ``bench_images``
            images of the reference's); None: the BenchConfig defaults.
        exclude: bundle directories to leave out (the reference's own Keras bundle).

    Raises:
        ConfigError: ``root`` holds no bundle, or no profile is given.
        ParityError: the dataset lacks images the reference was made from.
    """
    if not profiles:
        raise ConfigError("no hardware profile given; pass --profiles x86-kiosk-cpu,onnxruntime-cpu (ids or YAMLs)")
    root = Path(root)
    images = select(dataset, reference)
    bench_set = _spread(images, bench_images)
    config = dataclasses.replace(bench or BenchConfig(), images=bench_set.paths)
    skip = {Path(p).resolve() for p in exclude}
    readable = {fmt for p in profiles for fmt, runtimes in RUNTIMES_FOR_FORMAT.items() if p.runtime in runtimes}
    rows: list[MatrixRow] = []
    excluded: list[tuple[str, str]] = []
    for path in find_bundles(root):
        name = str(path.relative_to(root)) if path != root else path.name
        if path.resolve() in skip:
            excluded.append((str(path), "the reference model itself"))
            continue
        try:
            bundle = Bundle.open(path)
        except ShelfedgeError as e:
            log(f"[matrix] {name}: not a valid bundle: {e}")
            rows.append(_invalid_row(path, name, e))
            continue
        fmt = bundle.manifest.format
        if fmt in REFERENCE_FORMATS and fmt not in readable:
            excluded.append(
                (
                    str(path),
                    f"a {fmt.value} (server/reference) bundle and no profile's runtime reads "
                    f"{fmt.value}; add server-gpu-reference to --profiles to include it",
                )
            )
            continue
        own_labels = bench_set.labels if bundle.labels == images.class_names else None
        for profile in profiles:
            rows.append(
                _run_pair(bundle, name, profile, reference, images, dataclasses.replace(config, labels=own_labels), log)
            )
    return MatrixResult(
        root=str(root),
        profiles=tuple(p.id for p in profiles),
        rows=tuple(rows),
        excluded=tuple(excluded),
        reference={"path": str(reference.path), **dict(reference.info)},
        images=len(images),
    )


def _invalid_row(path: Path, name: str, error: ShelfedgeError) -> MatrixRow:
    # A release gate must see a tampered or broken bundle: an error row, not a crash.
    return MatrixRow(
        bundle=str(path),
        name=name,
        profile=None,
        runtime=None,
        format=None,
        precision=None,
        status="error",
        reason=f"{type(error).__name__}: {error}",
    )


def _run_pair(
    bundle: Bundle,
    name: str,
    profile: HardwareProfile,
    reference: Reference,
    images: ImageDataset,
    config: BenchConfig,
    log: Log,
) -> MatrixRow:
    manifest = bundle.manifest
    row = MatrixRow(
        bundle=str(bundle.path),
        name=name,
        profile=profile.id,
        runtime=profile.runtime.value,
        format=manifest.format.value,
        precision=manifest.precision.value,
        status="skipped",
    )
    if profile.runtime not in RUNTIMES_FOR_FORMAT[manifest.format]:
        readers = ", ".join(r.value for r in RUNTIMES_FOR_FORMAT[manifest.format])
        reason = f"{profile.runtime.value} does not read {manifest.format.value} bundles (read by: {readers})"
        log(f"[matrix] {name} x {profile.id}: skipped: {reason}")
        return dataclasses.replace(row, reason=reason)
    # Opening the session under the profile's own device and fallback policy is the only honest
    # "can it run here": a strict profile without its accelerator, or a missing backend, stops here.
    try:
        with load(bundle, profile, runtime=profile.runtime):
            pass
    except BackendUnavailableError as e:
        log(f"[matrix] {name} x {profile.id}: skipped: {e}")
        return dataclasses.replace(row, reason=str(e))
    except ShelfedgeError as e:
        log(f"[matrix] {name} x {profile.id}: error: {e}")
        return dataclasses.replace(row, status="error", reason=f"{type(e).__name__}: {e}")
    log(f"[matrix] {name} x {profile.id}: parity on {len(images)} images")
    try:
        parity = run_parity([bundle.path], reference, images, profile=profile, log=lambda m: log(f"[matrix]   {m}"))
    except ShelfedgeError as e:
        log(f"[matrix] {name} x {profile.id}: parity error: {e}")
        return dataclasses.replace(row, status="error", reason=f"parity: {type(e).__name__}: {e}")
    row = dataclasses.replace(row, status="ran", parity=parity[0] if parity else None)
    log(f"[matrix] {name} x {profile.id}: bench")
    try:
        result = bench_bundle(
            bundle, profile.runtime, profile=profile, config=config, progress=lambda m: log(f"[matrix]   {m}")
        )
    except ShelfedgeError as e:
        log(f"[matrix] {name} x {profile.id}: bench error: {e}")
        return dataclasses.replace(row, status="error", reason=f"bench: {type(e).__name__}: {e}")
    row = dataclasses.replace(row, bench=result)
    log(f"[matrix] {name} x {profile.id}: {'PASS' if row.passed else 'FAIL'}")
    return row


def _spread(dataset: ImageDataset, count: int) -> ImageDataset:
    if count < 1:
        raise ConfigError(f"bench_images must be at least 1, got {count}")
    if len(dataset) <= count:
        return dataset
    return dataset.subset([int(i) for i in np.linspace(0, len(dataset) - 1, count).round()])


def _short(reason: str, limit: int = 90) -> str:
    first = reason.split("; ")[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    # A "|" inside a cell would split it in Markdown and in the HTML table.
    return {k: v.replace("|", "/") if isinstance(v, str) else v for k, v in row.items()}
