"""PNG plots and a self-contained HTML page for reports (``pip install 'shelfedge[report]'``).

matplotlib is imported lazily, inside each plot function, and only its object-oriented API
is used (``Figure`` + the Agg canvas): no pyplot global state, no GUI backend, so plotting
works on headless CI and inside any application. The HTML page is static: inline CSS, HTML
tables, ``<img>`` tags with relative links to the PNGs written next to it, no JavaScript.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sdk.errors import BackendUnavailableError

_DPI = 110
_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
_MARKERS = {"fp32": "o", "fp16": "s", "int8": "^", "dynamic_int8": "v", "int16x8": "D", "mixed": "P"}


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise BackendUnavailableError(
            f"plots need matplotlib ({e}); install it with: pip install 'shelfedge[report]'"
        ) from e
    return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")


def _save(figure: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def latency_distribution(
    samples_ms: Mapping[str, Sequence[float]], path: Path, *, title: str = "Inference latency per runtime"
) -> Path:
    """Box plot (whiskers at p1 / p99) plus the median's value, one box per label.

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    labels = list(samples_ms)
    figure = _figure(8.0, 0.6 * len(labels) + 1.6)
    ax = figure.subplots()
    data = [list(samples_ms[k]) for k in labels]
    try:
        ax.boxplot(data, orientation="horizontal", whis=(1, 99), showfliers=False, widths=0.6)
    except TypeError:  # matplotlib < 3.10 names it vert=False
        ax.boxplot(data, vert=False, whis=(1, 99), showfliers=False, widths=0.6)
    ax.set_yticks(range(1, len(labels) + 1), labels)
    ax.invert_yaxis()
    ax.set_xlabel("ms per call (box: p25-p75, line: p50, whiskers: p1-p99)")
    high = max(max(d) for d in data if d) if data else 1.0
    low = min(min(d) for d in data if d) if data else 1.0
    if low > 0 and high / low > 30:
        ax.set_xscale("log")  # one slow runtime would squash every other box flat
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on a short log axis
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def latency_vs_accuracy(
    points: Sequence[Mapping[str, Any]], path: Path, *, title: str = "Latency vs accuracy"
) -> Path | None:
    """Scatter of ``latency_ms`` against ``accuracy`` (0..1); colour per runtime, marker per
    precision, each point labelled. Points without accuracy are left out; returns None (and
    writes nothing) when none has one.

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    usable = [p for p in points if p.get("accuracy") is not None]
    if not usable:
        return None
    figure = _figure(7.0, 4.8)
    ax = figure.subplots()
    runtimes = sorted({str(p["runtime"]) for p in usable})
    for point in usable:
        colour = _COLOURS[runtimes.index(str(point["runtime"])) % len(_COLOURS)]
        marker = _MARKERS.get(str(point.get("precision")), "o")
        ax.scatter(point["latency_ms"], 100.0 * point["accuracy"], color=colour, marker=marker, s=60)
        ax.annotate(
            str(point.get("label", "")),
            (point["latency_ms"], 100.0 * point["accuracy"]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=7,
        )
    for runtime in runtimes:
        ax.scatter([], [], color=_COLOURS[runtimes.index(runtime) % len(_COLOURS)], label=runtime)
    ax.legend(title="runtime (marker: precision)", fontsize=8)
    # Axes from zero: two runtimes 0.1 ms apart must not look an order of magnitude apart.
    ax.set_xlim(0, 1.25 * max(float(p["latency_ms"]) for p in usable))
    accuracies = [100.0 * float(p["accuracy"]) for p in usable]
    ax.set_ylim(max(0.0, min(accuracies) - 10), min(100.0, max(accuracies) + 5))
    ax.set_xlabel("latency p50, ms")
    ax.set_ylabel("top-1 accuracy, %")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _save(figure, path)


def throughput_vs_batch(
    series: Mapping[str, Sequence[tuple[int, float]]],
    path: Path,
    *,
    extra_points: Mapping[str, tuple[int, float]] | None = None,
    title: str = "Throughput vs batch size",
) -> Path:
    """One line per label of (batch, images/s); ``extra_points`` (e.g. OpenVINO async at its
    batch) are drawn as stars in the colour of the line with the same label.

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    figure = _figure(7.0, 4.5)
    ax = figure.subplots()
    labels = list(series)
    for i, label in enumerate(labels):
        xs, ys = zip(*sorted(series[label]), strict=False) if series[label] else ((), ())
        ax.plot(xs, ys, marker="o", color=_COLOURS[i % len(_COLOURS)], label=label)
    for label, (batch, value) in (extra_points or {}).items():
        colour = _COLOURS[labels.index(label) % len(_COLOURS)] if label in labels else "black"
        ax.scatter([batch], [value], marker="*", s=160, color=colour, zorder=3, label=f"{label} (async)")
    batches = sorted({b for points in series.values() for b, _ in points})
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(figure, path)


def stage_split(
    stages_ms: Mapping[str, Mapping[str, float]], path: Path, *, title: str = "End-to-end time per stage (medians)"
) -> Path:
    """Stacked horizontal bars: one bar per label, one segment per stage (in mapping order).

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    labels = list(stages_ms)
    figure = _figure(8.0, 0.6 * len(labels) + 1.6)
    ax = figure.subplots()
    stages = list(next(iter(stages_ms.values()), {}))
    left = [0.0] * len(labels)
    for j, stage in enumerate(stages):
        widths = [float(stages_ms[label].get(stage, 0.0)) for label in labels]
        ax.barh(labels, widths, left=left, color=_COLOURS[j % len(_COLOURS)], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.invert_yaxis()
    ax.set_xlabel("ms per image")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)


# --------------------------------------------------------------------------- HTML

_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f0f0f0}tr:nth-child(even){background:#fafafa}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
code{background:#f4f4f4;padding:0 3px}h1,h2{border-bottom:1px solid #ddd}"""


def markdown_to_html(markdown: str) -> str:
    """The Markdown subset shelfedge reports use, as HTML: ``#`` headings, pipe tables
    (as :func:`sdk.qa.tables.markdown_table` writes them), ``![alt](src)`` images, ``-`` lists,
    `` `code` `` and paragraphs. Text is escaped; nothing else is interpreted."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        heading = re.match(r"(#{1,4}) (.*)", line)
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", line.strip())
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            out.append(f'<p><img src="{html.escape(image.group(2))}" alt="{html.escape(image.group(1))}"></p>')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


def html_page(title: str, markdown: str, path: Path) -> Path:
    """Write ``markdown`` (tables, image links relative to ``path``) as one static HTML page."""
    body = markdown_to_html(markdown)
    text = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _table(block: list[str]) -> str:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in block]
    header, body = rows[0], [r for r in rows[1:] if not all(set(c) <= {"-", ":"} for c in r)]
    head = "".join(f"<th>{_inline(c)}</th>" for c in header)
    cells = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{cells}</tbody></table>"


def _inline(text: str) -> str:
    parts = text.split("`")
    # Odd parts were between backticks.
    return "".join(f"<code>{html.escape(p)}</code>" if i % 2 else html.escape(p) for i, p in enumerate(parts))


def metric_intervals(rows: Sequence[tuple[str, float, float, float]], path: Path, *, metric: str, title: str) -> Path:
    """One horizontal bar per model: the point estimate and its confidence interval as an error bar.

    Args:
        rows: ``(label, value, low, high)`` per model, in display order.

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    figure = _figure(8.0, 0.45 * len(rows) + 1.4)
    ax = figure.subplots()
    labels = [label for label, *_ in rows]
    values = [value for _, value, _, _ in rows]
    errors = [[value - low for _, value, low, _ in rows], [high - value for _, value, _, high in rows]]
    ax.barh(range(len(rows)), values, xerr=errors, color=_COLOURS[0], alpha=0.8, capsize=3)
    for position, value in enumerate(values):
        ax.text(value, position, f" {value:.3f}", va="center", ha="left", fontsize=8)
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} (bars: 95% bootstrap interval)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(figure, path)
