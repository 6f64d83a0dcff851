"""``shelfedge bench`` for recommendation bundles: recommend() end to end per bundle and runtime.

The same harness as ``shelfedge rec-bench`` (:mod:`sdk.qa.rec_bench`: every contender answers the
same histories in rotating round-robin blocks), run under a profile's runtime, threads and
``budgets.p99_recommend_ms``: a p99 over budget fails the run (exit 1), as an image bench does.
Histories come from ``--dataset`` (its test cases) or, without one, are drawn from each bundle's
own catalogue by popularity, so a bundle can be benched anywhere without the data it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cli import emit, log
from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, Runtime
from sdk.errors import BackendUnavailableError, ConfigError
from sdk.profiles import HardwareProfile
from sdk.qa.rec_bench import RecBenchRow, bench_recommenders, markdown, sample_histories
from sdk.rec_datasets import NAMED, open_rec_dataset
from sdk.recommender import Recommender
from sdk.versions import host_info

_QUICK = {"blocks": 4, "calls_per_block": 10}
_FULL = {"blocks": 20, "calls_per_block": 50}


def run_recommendation_bench(args: argparse.Namespace, bundles: list[Bundle], profile: HardwareProfile | None) -> int:
    """Bench every recommendation bundle on its runtimes; 1 when a profile budget fails.

    Raises:
        ConfigError: a bundle is not a recommendation bundle, or a runtime cannot open one.
        BackendUnavailableError: nothing could run.
    """
    recommenders: dict[str, Recommender] = {}
    sizes: dict[str, int] = {}
    try:
        for bundle in bundles:
            for runtime in _runtimes(bundle, profile, args.runtime, args.all_runtimes):
                try:
                    rec = Recommender.from_bundle(
                        bundle, profile=profile, runtime=runtime, device=args.device, threads=args.threads or 1
                    )
                except BackendUnavailableError as e:
                    log(f"[bench] skipping {bundle.path.name} on {runtime.value}: {e}")
                    continue
                label = f"{bundle.path.name} @ {rec.info.runtime.value}"
                recommenders[label], sizes[label] = rec, bundle.size_bytes()
        if not recommenders:
            raise BackendUnavailableError("no recommendation bundle could run on any installed runtime")
        histories, source = _histories(args, next(iter(recommenders.values())))
        log(f"[bench] {len(recommenders)} contenders x {len(histories):,} histories ({source}), interleaved")
        counts = _QUICK if args.quick else _FULL
        rows = bench_recommenders(recommenders, histories, k=10, **counts)
    finally:
        for rec in recommenders.values():
            rec.close()
    budget = profile.budgets.p99_recommend_ms if profile else None
    failed = [r for r in rows if budget is not None and r.latency.p99_ms > budget]
    document = _document(rows, sizes, source, profile, budget)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    table = _table(rows, sizes, budget)
    (out / "bench.md").write_text(
        f"# shelfedge bench: recommend()\n\n{_header(document)}\n\n{table}\n", encoding="utf-8"
    )

    def text() -> str:
        lines = [f"\n{_header(document)}", "", table, ""]
        lines += [f"budget FAIL: {r.label}: recommend() p99 {r.latency.p99_ms:.3f} ms > {budget:g} ms" for r in failed]
        lines.append(f"report: {out / 'bench.md'}, {out / 'bench.json'}")
        return "\n".join(lines)

    emit(args, document, text)
    return 1 if failed else 0


def _runtimes(bundle: Bundle, profile: HardwareProfile | None, runtime: str | None, every: bool) -> list[Runtime]:
    allowed = RUNTIMES_FOR_FORMAT[bundle.manifest.format]
    if runtime:
        chosen = Runtime.parse(runtime, "--runtime")
        return [chosen] if chosen in allowed else []
    if profile is not None and not every:
        if profile.runtime not in allowed:
            raise ConfigError(
                f"bundle {bundle.path} is in the {bundle.manifest.format.value} format, but profile {profile.id!r} "
                f"runs {profile.runtime.value}, which cannot open it; pass --all-runtimes or a matching profile"
            )
        return [profile.runtime]
    return list(allowed)


def _histories(args: argparse.Namespace, first: Recommender) -> tuple[list[list[str]], str]:
    if args.dataset:
        dataset = open_rec_dataset(args.dataset, fallback=args.dataset in NAMED)
        ids = dataset.interactions.catalogue.ids
        histories = [[ids[i] for i in h] for h in dataset.split.test.histories]
        return histories, f"{dataset.name} test histories"
    histories = sample_histories(first.items, first.spec.max_len, count=500)
    return histories, "drawn from the first bundle's catalogue by popularity (no --dataset)"


def _document(
    rows: list[RecBenchRow], sizes: dict[str, int], source: str, profile: HardwareProfile | None, budget: float | None
) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "task": "recommendation",
        "call": "recommend(history, k=10): ids in, encoder on the runtime, scores over the catalogue, top-10 out",
        "host": host_info(),
        "histories": source,
        "profile": profile.id if profile else None,
        "budget_p99_recommend_ms": budget,
        "rows": [{**r.to_dict(), "bundle_bytes": sizes[r.label]} for r in rows],
    }


def _header(document: dict[str, Any]) -> str:
    host = document["host"]
    return (
        f"recommend() end to end on {host.get('cpu')}, {host.get('logical_cores')} logical cores; "
        f"histories: {document['histories']}"
        + (
            f"; profile {document['profile']} budget p99 {document['budget_p99_recommend_ms']:g} ms"
            if document["profile"] and document["budget_p99_recommend_ms"]
            else ""
        )
    )


def _table(rows: list[RecBenchRow], sizes: dict[str, int], budget: float | None) -> str:
    lines = markdown(rows).splitlines()
    lines[0] += " size MB | budget |"
    lines[1] += "---|---|"
    for i, row in enumerate(rows, start=2):
        verdict = "-" if budget is None else ("PASS" if row.latency.p99_ms <= budget else "FAIL")
        lines[i] += f" {sizes[row.label] / 1e6:.3f} | {verdict} |"
    return "\n".join(lines)
