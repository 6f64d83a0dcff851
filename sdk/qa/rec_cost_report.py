"""What ``shelfedge rec-cost`` says: tables, where brute force stops fitting each budget, the plot.

The budgets are the hardware profiles' ``budgets.p99_recommend_ms`` (grouped by value: one line
per distinct budget, naming its profiles). The crossing of a budget is read between the two
measured catalogue sizes around it, interpolated on log-log axes (cost grows about linearly
in the catalogue once the table leaves the caches, so a straight line there is a fair guess);
it is an estimate for this machine, said so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from sdk.profiles import HardwareProfile, list_profiles
from sdk.qa.rec_cost import CostRow, SearchRow
from sdk.qa.rec_topk import TopkRow

# The house style of the report plots: the same figure setup, palette and saving (report_plots.py).
from sdk.qa.report_plots import _COLOURS, _figure, _save
from sdk.recommender_search import brute_force_ms

__all__ = [
    "blas_pools",
    "budgets",
    "cost_markdown",
    "cost_plot",
    "cpu_detail",
    "crossings",
    "faster_paths",
    "search_markdown",
    "search_verdicts",
    "topk_markdown",
]


def budgets(profiles: Sequence[HardwareProfile] | None = None) -> dict[float, list[str]]:
    """Distinct ``p99_recommend_ms`` budgets -> the profile ids that set them, smallest first.

    Raises:
        ProfileError: a profile file is malformed (when ``profiles`` is None and they are read).
    """
    found: dict[float, list[str]] = {}
    for profile in profiles if profiles is not None else list_profiles():
        value = profile.budgets.p99_recommend_ms
        if value is not None:
            found.setdefault(float(value), []).append(profile.id)
    return dict(sorted(found.items()))


def cost_markdown(rows: Sequence[CostRow]) -> str:
    """One row per catalogue size x runtime: recommend() p50/p90/p99, the encoder alone, the rest."""
    lines = [
        "| items | runtime | calls | p50 ms | p90 ms | p99 ms | p50 ±% | encoder p50 | encoder p99 | rest p50 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.n_items, r.runtime)):
        s = r.latency
        lines.append(
            f"| {r.n_items:,} | {r.runtime} {r.runtime_version} | {s.count:,} | {s.p50_ms:.3f} | {s.p90_ms:.3f} | "
            f"{s.p99_ms:.3f} | {s.p50_ci_half_width_pct:.1f} | {r.encode.p50_ms:.3f} | {r.encode.p99_ms:.3f} | "
            f"{r.rest_p50_ms:.3f} |"
        )
    return "\n".join(lines)


def crossings(rows: Sequence[CostRow], limits: Mapping[float, Sequence[str]]) -> list[str]:
    """Per budget and runtime, one sentence: up to which measured size brute force fits the p99 budget."""
    sentences = []
    for limit, profiles in limits.items():
        for runtime in sorted({r.runtime for r in rows}):
            points = sorted((r.n_items, r.latency.p99_ms) for r in rows if r.runtime == runtime)
            sentences.append(f"{limit:g} ms ({', '.join(profiles)}), {runtime}: {_crossing(points, limit)}")
    return sentences


def _crossing(points: Sequence[tuple[int, float]], limit: float) -> str:
    fits = [(n, p99) for n, p99 in points if p99 <= limit]
    over = [(n, p99) for n, p99 in points if p99 > limit]
    if not over:
        n, p99 = points[-1]
        return f"fits at every measured size (p99 {p99:.2f} ms at {n:,} items)"
    first_over = over[0]
    below = [p for p in fits if p[0] < first_over[0]]
    if not below:
        return f"over the budget from the smallest measured size ({first_over[0]:,} items, p99 {first_over[1]:.2f} ms)"
    last_fit = below[-1]
    (n0, t0), (n1, t1) = last_fit, first_over
    estimate = n0 * math.exp(math.log(n1 / n0) * math.log(limit / t0) / math.log(t1 / t0)) if t1 > t0 > 0 else n1
    return (
        f"fits up to {n0:,} items (p99 {t0:.2f} ms), over at {n1:,} (p99 {t1:.2f} ms); "
        f"crossing ≈ {_round(estimate):,} items (log-log interpolation)"
    )


def _round(n: float) -> int:
    digits = max(0, int(math.log10(max(n, 1))) - 1)
    return int(round(n, -digits))


def search_markdown(rows: Sequence[SearchRow]) -> str:
    """recommend() end to end, exact vs IVF: items scored, p50/p99, scoring stage, recall@10 with its 95 % interval."""
    lines = [
        "| items | runtime | search | lists | items scored | p50 ms | p99 ms | score p50 ms | recall@10 | 95% CI | "
        "widened | histories |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        how = "exact" if r.search == "exact" else f"IVF n_probe={r.n_probe}"
        lists = f"{r.n_lists:,}" if r.n_lists else "-"
        lines.append(
            f"| {r.n_items:,} | {r.runtime} | {how} | {lists} | {r.candidates_mean:,.0f} | {r.latency.p50_ms:.3f} | "
            f"{r.latency.p99_ms:.3f} | {r.score_p50_ms:.3f} | {r.recall:.3f} | "
            f"{r.recall_low:.3f}-{r.recall_high:.3f} | {r.widened:.0%} | {r.users} |"
        )
    return "\n".join(lines)


def search_verdicts(rows: Sequence[SearchRow], dim: int, limits: Mapping[float, Sequence[str]]) -> list[str]:
    """Per catalogue size: the measured exact p99 next to ``auto``'s estimate, and what ``auto`` picks per budget.

    ``auto`` takes IVF when the bundle has an index and ``brute_force_ms`` exceeds the budget
    (``sdk/recommender_search.py``); for each budget, the fastest IVF row that fits it is named.
    """
    sentences = []
    for n_items in sorted({r.n_items for r in rows}):
        group = [r for r in rows if r.n_items == n_items]
        exact = next((r for r in group if r.search == "exact"), None)
        estimate = brute_force_ms(n_items, dim)
        measured = f"exact p99 {exact.latency.p99_ms:.2f} ms measured" if exact else "exact not measured"
        for limit, profiles in limits.items():
            choice = "ivf" if estimate > limit else "exact"
            fits = sorted(
                (r for r in group if r.search == "ivf" and r.latency.p99_ms <= limit), key=lambda r: -r.recall
            )
            best = (
                f"best IVF within it: n_probe={fits[0].n_probe} (p99 {fits[0].latency.p99_ms:.2f} ms, recall@10 "
                f"{fits[0].recall:.3f})"
                if fits
                else "no IVF row fits it"
            )
            sentences.append(
                f"{n_items:,} items, {limit:g} ms ({', '.join(profiles)}): {measured}, auto's estimate "
                f"{estimate:.2f} ms -> auto picks {choice}; {best}"
            )
    return sentences


def topk_markdown(rows: Sequence[TopkRow]) -> str:
    """numpy vs in-graph per size and runtime, with each path's ratio to numpy on the same runtime."""
    numpy_p50 = {(r.n_items, r.runtime): r.latency.p50_ms for r in rows if r.path == "numpy"}
    lines = [
        "| items | runtime | path | p50 ms | p99 ms | vs numpy p50 | overlap@k vs numpy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.n_items, r.runtime, r.path)):
        base = numpy_p50.get((r.n_items, r.runtime))
        ratio = f"{r.latency.p50_ms / base:.2f}x" if base else "-"
        lines.append(
            f"| {r.n_items:,} | {r.runtime} | {r.path} | {r.latency.p50_ms:.3f} | {r.latency.p99_ms:.3f} | {ratio} | "
            f"{r.overlap:.3f} ({r.checked}) |"
        )
    return "\n".join(lines)


def faster_paths(rows: Sequence[TopkRow]) -> list[str]:
    """Per size and runtime, which path had the lower p50 (and by how much)."""
    sentences = []
    for n_items, runtime in sorted({(r.n_items, r.runtime) for r in rows}):
        group = sorted(
            (r for r in rows if (r.n_items, r.runtime) == (n_items, runtime)), key=lambda r: r.latency.p50_ms
        )
        if len(group) > 1:
            best, runner = group[0], group[1]
            sentences.append(
                f"{n_items:,} items, {runtime}: {best.path} fastest (p50 {best.latency.p50_ms:.3f} ms, "
                f"{runner.latency.p50_ms / best.latency.p50_ms:.2f}x ahead of {runner.path})"
            )
    return sentences


def cost_plot(
    rows: Sequence[CostRow], limits: Mapping[float, Sequence[str]], path: Path, *, title: str, note: str = ""
) -> Path:
    """Catalogue size (log) vs recommend() p99 (log) per runtime, a horizontal line per budget.

    Raises:
        BackendUnavailableError: matplotlib is not installed.
    """
    figure = _figure(7.5, 4.8)
    ax = figure.subplots()
    for i, runtime in enumerate(sorted({r.runtime for r in rows})):
        points = sorted((r.n_items, r.latency.p99_ms, r.latency.p50_ms) for r in rows if r.runtime == runtime)
        colour = _COLOURS[i % len(_COLOURS)]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=f"{runtime} p99")
        ax.plot([p[0] for p in points], [p[2] for p in points], ls=":", color=colour, alpha=0.6, label=f"{runtime} p50")
    for j, (limit, profiles) in enumerate(limits.items()):
        ax.axhline(limit, color="#444444", ls=("--", "-.", ":")[j % 3], lw=1)
        ax.annotate(
            f"{limit:g} ms: {', '.join(profiles)}",
            (0.01, limit),
            xycoords=("axes fraction", "data"),
            textcoords="offset points",
            xytext=(0, 3),
            fontsize=7,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalogue size, items (log)")
    ax.set_ylabel("recommend() latency, ms (log)")
    ax.set_title(title, fontsize=10)
    if note:
        figure.text(0.01, 0.005, note, fontsize=6, color="#555555")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    return _save(figure, path)


def cpu_detail() -> str:
    """Family/model and the vector extensions that decide GEMV speed, from /proc/cpuinfo (Linux)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "details unknown"
    flags = set(fields.get("flags", "").split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    where = ", virtual machine" if "hypervisor" in flags else ""
    family, model = fields.get("cpu family", "?"), fields.get("model", "?")
    return f"family {family} model {model}, {' '.join(isa) or 'no AVX2'}{where}"


def blas_pools() -> str:
    """The thread pools numpy's matrix products may use (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    pools = sorted({f"{i.get('internal_api')} {i.get('num_threads')} threads" for i in threadpool_info()})
    return ", ".join(pools) or "none loaded"
