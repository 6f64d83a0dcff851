"""The matrix reports: ``matrix.json`` (schema-versioned), ``matrix.md``, a latency-vs-accuracy
PNG and ``matrix.html`` for a :class:`sdk.qa.matrix.MatrixResult`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdk.errors import BackendUnavailableError
from sdk.qa import report_plots
from sdk.qa.matrix import Log, MatrixResult


def matrix_markdown(result: MatrixResult, document: dict[str, Any], plots: Sequence[Path] = ()) -> str:
    """The Markdown report: summary table, then each failure, skip and exclusion in full."""
    host, ref = document["host"], result.reference
    parts = [
        "# shelfedge matrix",
        f"Host: {host['cpu']}, {host['logical_cores']} logical cores, {host['os']}. Bundles: `{result.root}`. "
        f"Profiles: {', '.join(result.profiles)}. {document['created_utc']}.",
        f"Reference: {ref.get('runtime')} on {ref.get('device')} ({ref.get('note')}), {result.images} images. "
        f"Rows: {document['counts']['ran']} ran, {document['counts']['skipped']} skipped, "
        f"{document['counts']['error']} errors. Verdict: {'PASS' if result.passed else 'FAIL'}.",
        result.table(),
        "\n".join(
            [
                "- `parity`: the tiered checks with the profile's tolerances for the bundle's precision "
                "(`shelfedge parity --profile`); `acc % of ref`: top-1 accuracy as % of the reference's.",
                "- `infer p50/p95`: `Model.run` on one preprocessed image; `e2e p50`: decode + preprocess + inference "
                "+ postprocess (`shelfedge bench --profile`); `budgets`: the profile's p95 latency, peak memory and "
                "bundle size.",
                "- `skipped`: the profile's runtime does not read the format, or the runtime/device is not available "
                "on this host under the profile's fallback policy.",
            ]
        ),
    ]
    failing = [row for row in result.rows if row.failures]
    if failing:
        parts += [
            "## Failures",
            "\n".join(f"- {row.name} x {row.profile or '-'}: {failure}" for row in failing for failure in row.failures),
        ]
    skipped = [row for row in result.rows if row.status == "skipped"]
    if skipped:
        parts += ["## Skipped", "\n".join(f"- {row.name} x {row.profile}: {row.reason}" for row in skipped)]
    if result.excluded:
        parts += ["## Not in the matrix", "\n".join(f"- `{b}`: {why}" for b, why in result.excluded)]
    notes = [f"- {row.name} x {row.profile}: {note}" for row in result.ran if row.bench for note in row.bench.notes]
    if notes:
        parts += ["## Bench notes", "\n".join(notes)]
    if plots:
        parts += ["## Plots", *[f"![{p.stem}]({p.name})" for p in plots]]
    versions = ", ".join(f"{k} {v}" for k, v in document["versions"].items())
    parts.append(f"Tool versions: {versions}. Schema version {document['schema_version']}.")
    return "\n\n".join(parts) + "\n"


def write_matrix_report(
    out_dir: str | Path, result: MatrixResult, *, plots: bool = True, log: Log | None = None
) -> dict[str, Path]:
    """Write matrix.json, matrix.md, a latency-vs-accuracy PNG (with matplotlib) and matrix.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    document = result.to_dict()
    written = {"json": out / "matrix.json"}
    written["json"].write_text(json.dumps(document, indent=2, default=str), encoding="utf-8")
    pngs: list[Path] = []
    if plots:
        points = [
            {
                "label": f"{Path(row.name).name} / {row.profile}",
                "runtime": row.runtime,
                "precision": row.precision,
                "latency_ms": row.bench.inference.p50_ms,
                "accuracy": row.parity.metrics.get("accuracy_candidate"),
            }
            for row in result.ran
            if row.bench and row.parity
        ]
        try:
            png = report_plots.latency_vs_accuracy(
                points, out / "matrix_accuracy.png", title="Latency vs top-1 per bundle x profile"
            )
            pngs = [png] if png else []
        except BackendUnavailableError as e:
            if log:
                log(f"[matrix] no plot: {e}")
    markdown = matrix_markdown(result, document, pngs)
    written["markdown"] = out / "matrix.md"
    written["markdown"].write_text(markdown, encoding="utf-8")
    written["html"] = report_plots.html_page("shelfedge matrix", markdown, out / "matrix.html")
    page = written["html"].read_text(encoding="utf-8")
    links = " · ".join(f'<a href="{p.name}">{p.name}</a>' for p in (written["json"], written["markdown"], *pngs))
    written["html"].write_text(page.replace("<body>\n", f"<body>\n<p>Files: {links}</p>\n", 1), encoding="utf-8")
    written.update({p.stem: p for p in pngs})
    return written
