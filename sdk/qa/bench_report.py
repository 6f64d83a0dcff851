"""Benchmark reports: the schema-versioned JSON document, the Markdown report, the plots and
the HTML page that puts them together (``out/bench.json``, ``bench.md``, ``*.png``,
``report.html``)."""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sdk.errors import BackendUnavailableError
from sdk.qa import report_plots
from sdk.qa.bench import BenchConfig
from sdk.qa.bench_bare import Overhead
from sdk.qa.bench_result import SUMMARY_COLUMNS, BenchResult, BudgetCheck, Comparison, EndToEnd, ThroughputPoint
from sdk.qa.tables import markdown_table
from sdk.versions import host_info, tool_versions

SCHEMA_VERSION = 1
OVERHEAD_LIMIT = 1.1  # issue 4: an adapter within 1.1x of a bare loop over the backend's API


def summary_table(
    results: Sequence[BenchResult], comparisons: Sequence[Comparison | None] = (), baseline: BenchResult | None = None
) -> str:
    """The one-line-per-result table printed at the end of ``shelfedge bench``; with a
    baseline, a last column gives each result's inference speed-up over it."""
    rows, columns = [r.summary_row() for r in results], list(SUMMARY_COLUMNS)
    if baseline is not None:
        columns.append("speed-up vs baseline")
        for row, result, comparison in zip(rows, results, [*comparisons, *[None] * len(results)], strict=False):
            text = comparison.describe_speedup() if comparison else None
            row["speed-up vs baseline"] = "baseline" if result is baseline else text
    return markdown_table(rows, columns)


def bench_document(
    results: Sequence[BenchResult],
    *,
    config: BenchConfig,
    images: Mapping[str, Any],
    baseline: BenchResult | None = None,
    comparisons: Sequence[Comparison | None] = (),
) -> dict[str, Any]:
    """The ``bench.json`` document: schema_version, host, versions, config, images, results
    (each with its comparison against the baseline, when there is one)."""
    settings = dataclasses.asdict(config)
    settings["images"] = len(config.images) or "generated"
    settings["labels"] = config.labels is not None
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "shelfedge.bench",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": {**host_info(), "threads_requested": config.threads},
        "versions": tool_versions(),
        "config": settings,
        "images": dict(images),
        "baseline": baseline.label if baseline else None,  # a result in "results" too
        "results": [
            {**r.to_dict(), "comparison": c.to_dict() if c else None}
            for r, c in zip(results, [*comparisons, *[None] * (len(results) - len(comparisons))], strict=False)
        ],
    }


def write_plots(results: Sequence[BenchResult], out_dir: Path) -> list[Path]:
    """latency.png, e2e_stages.png, throughput.png and accuracy.png (when accuracy is known).

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    labels = {id(r): f"{r.name} / {r.runtime}" for r in results}
    written = [
        report_plots.latency_distribution(
            {labels[id(r)]: r.inference_samples_ms for r in results},
            out_dir / "latency.png",
            title="Inference-only latency (batch 1)",
        )
    ]
    with_e2e = [(r, r.end_to_end) for r in results if r.end_to_end]
    if with_e2e:
        written.append(
            report_plots.stage_split(
                {
                    labels[id(r)]: {
                        "decode": e2e.decode_ms,
                        "preprocess": e2e.preprocess_ms,
                        "inference": e2e.inference_ms,
                        "postprocess": e2e.postprocess_ms,
                    }
                    for r, e2e in with_e2e
                },
                out_dir / "e2e_stages.png",
            )
        )
    sync = {labels[id(r)]: [(p.batch, p.images_per_s) for p in r.throughput if p.mode == "sync"] for r in results}
    extra = {labels[id(r)]: (p.batch, p.images_per_s) for r in results for p in r.throughput if p.mode == "async"}
    written.append(report_plots.throughput_vs_batch(sync, out_dir / "throughput.png", extra_points=extra))
    points = [
        {
            "label": labels[id(r)],
            "runtime": r.runtime,
            "precision": r.session.get("precision"),
            "latency_ms": r.inference.p50_ms,
            "accuracy": r.end_to_end.accuracy if r.end_to_end else None,
        }
        for r in results
    ]
    accuracy = report_plots.latency_vs_accuracy(
        points, out_dir / "accuracy.png", title="Latency vs top-1 on the bench images"
    )
    return written + ([accuracy] if accuracy else [])


def bench_markdown(
    document: Mapping[str, Any],
    results: Sequence[BenchResult],
    comparisons: Sequence[Comparison | None],
    plots: Sequence[Path],
    baseline: BenchResult | None = None,
) -> str:
    """The Markdown report: summary, end-to-end split, throughput, overhead, cold start and
    memory, budgets, baseline comparison, plots."""
    host, images = document["host"], document["images"]
    parts = [
        "# shelfedge bench",
        f"Host: {host['cpu']}, {host['logical_cores']} logical cores, {host['os']}. "
        f"Threads: {host['threads_requested'] or 'each runtime default'}. "
        f"Images: {images.get('count')} {images.get('origin')} ({images.get('source')}). {document['created_utc']}.",
        summary_table(results, comparisons, baseline),
        _LEGEND,
        "## Sessions (what actually ran)",
        markdown_table([_session_row(r) for r in results]),
    ]
    sections: list[tuple[str, list[dict[str, Any]]]] = [
        (
            "## End to end vs inference only (medians per stage)",
            [_e2e_row(r, r.end_to_end) for r in results if r.end_to_end],
        ),
        ("## Throughput", [_throughput_row(r, p) for r in results for p in r.throughput]),
        (
            "## Adapter overhead (interleaved with a bare loop)",
            [_overhead_row(r, r.overhead) for r in results if r.overhead],
        ),
        (
            "## Cold start and peak memory (fresh process per run)",
            [_fresh_row(r) for r in results if r.cold_start or r.memory],
        ),
        ("## Budgets", [_budget_row(r, c) for r in results for c in r.budgets]),
    ]
    for title, rows in sections:
        # Throughput always gets its section: an empty table says nothing was measured.
        if rows or title == "## Throughput":
            parts += [title, markdown_table(rows)]
    compared = [_comparison_row(r, c) for r, c in zip(results, comparisons, strict=False) if c]
    if compared:
        parts += ["## Against the baseline (same host, same run)", markdown_table(compared), _SPEEDUP_NOTE]
    notes = [f"- {r.name} on {r.runtime}: {n}" for r in results for n in r.notes]
    if notes:
        parts += ["## Notes", "\n".join(notes)]
    if plots:
        parts += ["## Plots", *[f"![{p.stem}]({p.name})" for p in plots]]
    versions = ", ".join(f"{k} {v}" for k, v in document["versions"].items())
    parts.append(f"Tool versions: {versions}. Schema version {document['schema_version']}.")
    return "\n\n".join(parts) + "\n"


_LEGEND = "\n".join(
    [
        "- `infer`: `Model.run` on a preprocessed batch-1 tensor after warm-up; `p50 ±%`: half the 95 % CI "
        "of the median (how stable it is).",
        "- `e2e`: `ImageClassifier.classify` on JPEG bytes in memory (decode, preprocess, inference, "
        "softmax + top-k). In the stage split, decode is timed on its own and preprocess is the "
        "classifier's decode + preprocess stage minus it, so the two are approximate; the other stages are "
        "the classifier's.",
        "- `img/s`: the best of the batch sizes (and async requests where the runtime has them); "
        "`cold start`: `sdk.load` + first "
        "inference in a fresh process, median of runs; `peak MB`: peak RSS over the same process's baseline "
        "before the runtime was imported.",
        "- `adapter/bare`: the adapter against a bare loop over the runtime's own API on the same model, timed "
        f"in alternating blocks (median of block ratios); the promise is <= {OVERHEAD_LIMIT}.",
    ]
)


def _e2e_row(r: BenchResult, e2e: EndToEnd) -> dict[str, Any]:
    return {
        **_who(r),
        "decode ms": e2e.decode_ms,
        "preprocess ms": e2e.preprocess_ms,
        "inference ms": e2e.inference_ms,
        "postprocess ms": e2e.postprocess_ms,
        "e2e p50 ms": e2e.latency.p50_ms,
        "e2e p95 ms": e2e.latency.p95_ms,
        "infer-only p50 ms": r.inference.p50_ms,
        "top-1 on bench images": e2e.accuracy,
    }


def _throughput_row(r: BenchResult, p: ThroughputPoint) -> dict[str, Any]:
    return {**_who(r), "mode": p.mode, "batch": p.batch, "requests": p.requests, "img/s": round(p.images_per_s, 1)}


def _overhead_row(r: BenchResult, o: Overhead) -> dict[str, Any]:
    return {
        **_who(r),
        "bare loop": o.bare_api,
        "adapter p50 ms": o.adapter_p50_ms,
        "bare p50 ms": o.bare_p50_ms,
        "ratio": round(o.ratio, 3),
        "pooled ratio": round(o.pooled_ratio, 3),
        "block ratios p25-p75": f"{o.block_ratio_p25:.3f}-{o.block_ratio_p75:.3f}",
        "same outputs (max abs diff)": o.max_abs_diff,
        f"<= {OVERHEAD_LIMIT}x": o.ratio <= OVERHEAD_LIMIT,
    }


def _fresh_row(r: BenchResult) -> dict[str, Any]:
    cold, memory = r.cold_start, r.memory
    return {
        **_who(r),
        "import ms": cold.import_ms if cold else None,
        "load ms": cold.load_ms if cold else None,
        "first inference ms": cold.first_inference_ms if cold else None,
        "cold start ms": cold.cold_start_ms if cold else None,
        "runs": len(cold.runs) if cold else None,
        "baseline RSS MB": memory.baseline_rss_mb if memory else None,
        "peak RSS MB": memory.peak_rss_mb if memory else None,
        "peak - baseline MB": memory.delta_mb if memory else None,
        "method": memory.method if memory else None,
    }


def _budget_row(r: BenchResult, c: BudgetCheck) -> dict[str, Any]:
    return {
        **_who(r),
        "profile": r.profile_id,
        "budget": c.budget,
        "observed": c.observed,
        "allowed": c.allowed,
        "verdict": {True: "pass", False: "FAIL", None: "not measured"}[c.passed],
        "note": c.note,
    }


_SPEEDUP_NOTE = (
    "- `infer speed-up`: median over round-robin blocks (every model `calls_per_block` times per block, the "
    "order rotated per block) of baseline block median / this block median; IQR and the 95 % CI of that median "
    "show its spread. The other ratios compare the separate runs above."
)


def _comparison_row(result: BenchResult, comparison: Comparison) -> dict[str, Any]:
    data = comparison.to_dict()
    spread = comparison.infer_speedup
    row = {
        **_who(result),
        "infer speed-up": round(comparison.infer_p50_speedup, 3),
        "IQR": f"{spread.p25:.3f}-{spread.p75:.3f}" if spread else None,
        "95% CI": f"{spread.ci95_low:.3f}-{spread.ci95_high:.3f}" if spread else None,
        "blocks": spread.blocks if spread else None,
        "method": comparison.speedup_method,
    }
    skip = {"infer_p50_speedup", "infer_speedup", "speedup_method"}
    return {**row, **{k: v for k, v in data.items() if k not in skip}}


def _session_row(result: BenchResult) -> dict[str, Any]:
    session = result.session
    return {
        **_who(result),
        "version": session.get("runtime_version"),
        "backend": session.get("backend"),
        "requested": session.get("requested_device"),
        "actual device": session.get("actual_device"),
        "accelerator": session.get("actual_accelerator"),
        "precision": session.get("precision"),
        "threads": session.get("threads") or "default",
        "fell back": session.get("fell_back"),
        "profile": result.profile_id,
    }


def _who(result: BenchResult) -> dict[str, Any]:
    return {"bundle": result.name, "runtime": result.runtime}


def write_report(
    out_dir: Path,
    document: Mapping[str, Any],
    results: Sequence[BenchResult],
    comparisons: Sequence[Comparison | None],
    *,
    baseline: BenchResult | None = None,
    plots: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Write bench.json, the PNGs (when matplotlib is installed), bench.md and report.html.

    ``results`` may include ``baseline`` (it is then marked in the tables) and ``comparisons``
    line up with ``results``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {"json": out_dir / "bench.json"}
    written["json"].write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    pngs: list[Path] = []
    if plots:
        try:
            pngs = write_plots(results, out_dir)
        except BackendUnavailableError as e:
            if log:
                log(f"[report] no plots: {e}")
    markdown = bench_markdown(document, results, comparisons, pngs, baseline)
    written["markdown"] = out_dir / "bench.md"
    written["markdown"].write_text(markdown, encoding="utf-8")
    written["html"] = report_plots.html_page("shelfedge bench", markdown, out_dir / "report.html")
    written.update({p.stem: p for p in pngs})
    return written
