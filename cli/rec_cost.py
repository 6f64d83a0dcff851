"""``shelfedge rec-cost``: recommend() cost vs catalogue size, in-graph top-k, an IVF index past the budget.

One encoder (the MovieLens student's bundles when ``shelfedge rec-distill --dataset movielens``
made them, ``--bundles``, or a small seeded one built here) is paired with seeded synthetic item
tables of each size (``sdk/qa/rec_cost.py``); bundles, tables and indexes go under ``--out``.
At ``--ivf-sizes`` the first encoder's bundle gets an IVF index of about sqrt(items) lists and
``recommend()`` runs through the SDK exactly and with ``search="ivf"`` at each ``--n-probe``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cli import emit, log
from cli.rec_cost_encoders import FORMATS, REAL_BUNDLES, find_encoders
from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat
from sdk.errors import ConfigError
from sdk.loading import load
from sdk.qa import rec_cost_report as report
from sdk.qa.rec_cost import (
    CostRow,
    SearchRow,
    measure_search,
    open_searches,
    quantized,
    random_histories,
    synthetic_items,
    table_fingerprint,
    time_cost,
    with_items,
)
from sdk.qa.rec_topk import GraphPath, TopkRow, time_topk
from sdk.recommender import Recommender, RecommenderOptions
from sdk.versions import host_info

FUSED_MAX_ITEMS = 100_000  # past this the saved runtime call is noise next to the scoring (and exports take minutes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundles", nargs="+", help=f"encoder bundles, one per format (default: {REAL_BUNDLES})")
    parser.add_argument("--encoder", help="the same encoder as a .keras file: also time it fused with the scoring")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="catalogue sizes (default 1k..1M)")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per runtime and size (default 500)")
    parser.add_argument("--calls-per-block", type=int, default=25, help="calls per contender per block (default 25)")
    parser.add_argument("--ivf-sizes", default="100000,1000000", help="sizes to try the IVF index at ('' for none)")
    parser.add_argument("--n-probe", default="8,16,32,64", help="IVF lists opened per request (default 8,16,32,64)")
    parser.add_argument("--in-graph", action="store_true", help="also time scoring + top-k inside the model graph")
    parser.add_argument("--in-graph-sizes", default="10000,1000000", help="sizes for --in-graph (default 10k, 1M)")
    parser.add_argument("--histories", type=int, default=200, help="distinct seeded histories (default 200)")
    parser.add_argument("-k", type=int, default=10, help="items per call (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1: one shopper per core)")
    parser.add_argument(
        "--blas-threads", type=int, help="limit numpy's BLAS threads while timing (default: numpy's own setting)"
    )
    parser.add_argument("--seed", type=int, default=0, help="tables, histories, k-means (default 0)")
    parser.add_argument("--out", default="out/rec-cost", help="output directory (default out/rec-cost)")
    parser.epilog = "example: shelfedge rec-cost --sizes 1000,10000,100000 --calls 200 --in-graph"


def run(args: argparse.Namespace) -> int:
    for text, flag in ((args.sizes, "--sizes"), (args.ivf_sizes, "--ivf-sizes"), (args.n_probe, "--n-probe"),
                       (args.in_graph_sizes, "--in-graph-sizes")):  # fmt: skip
        _sizes(text, flag)  # refused before any work
    if min(args.calls, args.calls_per_block, args.histories, args.k) < 1:
        raise ConfigError("rec-cost: --calls, --calls-per-block, --histories and -k must be >= 1")
    out = Path(args.out)
    load_before = os.getloadavg()
    host = {**host_info(), "cpu_detail": report.cpu_detail()}
    host["machine"] = f"{host['cpu']} ({host['cpu_detail']}), {host['logical_cores']} logical cores"
    log(f"[rec-cost] {host['machine']}, load average {load_before[0]:.2f}")
    if load_before[0] > 0.75 * (os.cpu_count() or 1):
        log("[rec-cost] the machine is busy: latency figures will be noisy (re-run when `uptime` is low)")
    encoders, keras_encoder, template, description = find_encoders(args, out)
    spec = next(iter(encoders.values())).manifest.recommendation
    assert spec is not None  # _encoders checked it
    payload: dict[str, Any] = {"host": host, "encoder": description, "threads": args.threads, "k": args.k,
                               "dim": spec.dim}  # fmt: skip
    with _blas_limit(args.blas_threads):
        payload["blas"] = report.blas_pools()
        cost, ivf, topk, payload["ivf_index"] = _measure(encoders, keras_encoder, template, args, out)
    payload["load_average"] = {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    _write(payload, cost, ivf, topk, out, args)
    return 0


def _measure(
    encoders: dict[ModelFormat, Bundle], keras_encoder: Any, template: Any, args: argparse.Namespace, out: Path
) -> tuple[list[CostRow], list[SearchRow], list[TopkRow], list[dict[str, Any]]]:
    """Every catalogue size asked for: its table and bundles, then each measurement that wants it."""
    sizes, ivf_sizes = _sizes(args.sizes, "--sizes"), _sizes(args.ivf_sizes, "--ivf-sizes")
    graph_sizes = _sizes(args.in_graph_sizes, "--in-graph-sizes") if args.in_graph else []
    spec = next(iter(encoders.values())).manifest.recommendation
    assert spec is not None  # _encoders checked it
    cost: list[CostRow] = []
    ivf: list[SearchRow] = []
    topk: list[TopkRow] = []
    facts: list[dict[str, Any]] = []
    for n_items in sorted({*sizes, *ivf_sizes, *graph_sizes}):
        table, bias = synthetic_items(n_items, spec.dim, seed=args.seed + n_items, like=template)
        table = quantized(table)  # what the bundle stores and the recommender scores
        histories = random_histories(min(spec.n_items, n_items), spec.max_len, args.histories, seed=args.seed)
        if n_items in sizes or n_items in graph_sizes:
            recommenders = _open(_bundles(encoders, table, bias, out, n_items), args)
            try:
                if n_items in sizes:
                    cost += _time_cost(recommenders, histories, args)
                if n_items in graph_sizes:
                    topk += _time_graph(recommenders, table, bias, keras_encoder, histories, out, args)
            finally:
                for recommender in recommenders.values():
                    recommender.close()
        if n_items in ivf_sizes:
            rows, built = _search(encoders, table, bias, histories, out, args)
            ivf += rows
            facts.append({"n_items": n_items, **built})
    return cost, ivf, topk, facts


def _sizes(text: str, flag: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise ConfigError(f"rec-cost: {flag} takes comma-separated integers, e.g. 1000,10000; got {text!r}") from e
    if any(v < 1 for v in values):
        raise ConfigError(f"rec-cost: {flag} values must be >= 1, got {text!r}")
    return values


def _bundles(encoders: dict[ModelFormat, Bundle], table: np.ndarray, bias: np.ndarray, out: Path, n: int) -> dict:
    log(f"[rec-cost] {n:,} items: writing the int8 table and {len(encoders)} bundles…")
    items = out / "items" / f"n{n}"
    for stale in items.glob("items.*"):  # a table of another seed or template must not be reused
        stale.unlink()
    return {
        fmt: with_items(
            bundle, table, bias, out / "bundles" / f"{bundle.manifest.name}-n{n}-{fmt.value}", items_dir=items
        )
        for fmt, bundle in encoders.items()
    }


def _open(bundles: dict[ModelFormat, Bundle], args: argparse.Namespace) -> dict[str, Recommender]:
    opened: dict[str, Recommender] = {}
    try:
        for fmt, bundle in bundles.items():
            runtime = RUNTIMES_FOR_FORMAT[fmt][0].value
            options = RecommenderOptions(
                runtime=runtime, threads=args.threads, search="exact", blas_threads=args.blas_threads
            )  # brute force: the cost this table is about
            opened[runtime] = Recommender.create(bundle, options)
    except BaseException:
        for recommender in opened.values():
            recommender.close()
        raise
    return opened


def _time_cost(recommenders: dict[str, Recommender], histories: list[list[int]], args: argparse.Namespace) -> list:
    n = len(next(iter(recommenders.values())).catalogue)
    blocks = max(1, args.calls // args.calls_per_block)
    each = f"{blocks} blocks x {args.calls_per_block}"
    log(f"[rec-cost] {n:,} items: timing recommend() and the encoder alone on {', '.join(recommenders)}, {each}")
    rows = time_cost(recommenders, histories, k=args.k, blocks=blocks, calls_per_block=args.calls_per_block)
    for r in rows:
        log(f"[rec-cost]   {r.runtime}: p50 {r.latency.p50_ms:.3f} ms, p99 {r.latency.p99_ms:.3f} ms")
    return rows


def _time_graph(
    recommenders: dict[str, Recommender],
    table: np.ndarray,
    bias: np.ndarray,
    keras_encoder: Any,
    histories: list[list[int]],
    out: Path,
    args: argparse.Namespace,
) -> list[TopkRow]:
    """Export (or reuse) the scoring bundles for this table and time them against numpy recommend()."""
    n = len(table)
    fingerprint = table_fingerprint(table, bias)
    split = _scoring(table, bias, None, out / "scoring", f"score-n{n}-k{args.k}-{fingerprint}", args.k)
    fused = None
    if keras_encoder is not None and n <= FUSED_MAX_ITEMS:
        fused = _scoring(table, bias, keras_encoder, out / "scoring", f"fused-n{n}-k{args.k}-{fingerprint}", args.k)
    paths: dict[str, tuple[str, GraphPath]] = {}
    opened = []
    try:
        for runtime, recommender in recommenders.items():
            fmt = next(f for f in FORMATS if RUNTIMES_FOR_FORMAT[f][0].value == runtime)
            scoring = load(split[fmt], runtime=runtime, threads=args.threads)
            opened.append(scoring)
            paths[f"{runtime} in-graph"] = (runtime, GraphPath(scoring, recommender.model, recommender))
            if fused is not None:
                whole = load(fused[fmt], runtime=runtime, threads=args.threads)
                opened.append(whole)
                paths[f"{runtime} fused"] = (runtime, GraphPath(whole, None, recommender))
        ids = next(iter(recommenders.values())).catalogue.ids
        as_ids = [[ids[i] for i in h] for h in histories]
        blocks = max(1, args.calls // args.calls_per_block)
        log(f"[rec-cost] {n:,} items: numpy vs in-graph top-k on {', '.join(recommenders)}")
        rows = time_topk(recommenders, paths, as_ids, blocks=blocks, calls_per_block=args.calls_per_block)
    finally:
        for model in opened:
            model.close()
    for line in report.faster_paths(rows):
        log(f"[rec-cost]   {line}")
    return rows


def _scoring(table: np.ndarray, bias: np.ndarray, encoder: Any, directory: Path, name: str, k: int) -> dict:
    targets = {f: directory / f"{name}-{f.value}-fp32" for f in FORMATS}
    if all((t / "manifest.json").is_file() for t in targets.values()):
        return {f: Bundle.open(t) for f, t in targets.items()}
    from converters.export.rec_scoring import export_scoring

    log(f"[rec-cost] exporting {name} (a 1M-item table takes minutes and GBs: tf2onnx)…")
    return export_scoring(
        table, bias, k=k, out_dir=directory, name=name, encoder=encoder, formats=[f.value for f in FORMATS],
        progress=lambda line: log(f"[rec-cost]   {line}"),
    )  # fmt: skip


def _search(
    encoders: dict[ModelFormat, Bundle],
    table: np.ndarray,
    bias: np.ndarray,
    histories: list[list[int]],
    out: Path,
    args: argparse.Namespace,
) -> tuple[list[SearchRow], dict[str, Any]]:
    """recommend() exact and through an IVF index in the bundle (one per n_probe), on the first encoder's runtime."""
    n = len(table)
    n_lists = max(1, round(n**0.5))
    probes = sorted({min(p, n_lists) for p in _sizes(args.n_probe, "--n-probe")})
    fmt, encoder = next(iter(encoders.items()))
    runtime = RUNTIMES_FOR_FORMAT[fmt][0].value
    items_dir = out / "items" / f"n{n}-ivf{n_lists}"
    for stale in items_dir.glob("items.*"):  # a table of another seed or template must not be reused
        stale.unlink()
    log(f"[rec-cost] {n:,} items: a bundle with a {n_lists:,}-list IVF index (k-means seed 0, 10 iterations)…")
    started = time.perf_counter()
    target = out / "bundles" / f"{encoder.manifest.name}-n{n}-{fmt.value}-ivf{n_lists}"
    bundle = with_items(encoder, table, bias, target, items_dir=items_dir, ivf_lists=n_lists)
    written_s = time.perf_counter() - started
    contenders = open_searches(bundle, runtime, probes, threads=args.threads, blas_threads=args.blas_threads)
    try:
        blocks = max(1, args.calls // args.calls_per_block)
        log(f"[rec-cost] {n:,} items: recommend() on {runtime}, exact and IVF n_probe {probes}, {blocks} blocks")
        exact = contenders["exact"]
        index = exact.items.index
        as_ids = [[exact.catalogue.ids[i] for i in h] for h in histories]
        rows = measure_search(
            contenders, as_ids, k=args.k, blocks=blocks, calls_per_block=args.calls_per_block, seed=args.seed
        )
    finally:
        for recommender in contenders.values():
            recommender.close()
    for r in rows:
        log(f"[rec-cost]   {r.search} {r.n_probe or ''}: p99 {r.latency.p99_ms:.3f} ms, recall@10 {r.recall:.3f}")
    assert index is not None  # open_searches checked it
    sizes = index.list_sizes()
    facts = {"bundle": str(bundle.path), "n_lists": n_lists, "written_s": round(written_s, 1),
             "list_size_min": int(sizes.min()), "list_size_max": int(sizes.max())}  # fmt: skip
    return rows, facts


def _blas_limit(threads: int | None) -> contextlib.AbstractContextManager[Any]:
    if threads is None:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError as e:
        raise ConfigError("rec-cost: --blas-threads needs threadpoolctl: pip install threadpoolctl") from e
    return threadpool_limits(limits=threads, user_api="blas")  # the runtimes keep their own pools


def _write(
    payload: dict[str, Any], cost: list[CostRow], ivf: list[SearchRow], topk: list[TopkRow], out: Path, args: Any
) -> None:
    limits = report.budgets()
    host = payload["host"]
    where = f"{host['machine']}, runtime threads {args.threads}"
    verdicts = report.crossings(cost, limits) if cost else []
    payload.update(
        cost=[r.to_dict() for r in cost],
        ivf=[r.to_dict() for r in ivf],
        auto=report.search_verdicts(ivf, payload["dim"], limits),
        in_graph=[r.to_dict() for r in topk],
        crossings=verdicts,
        faster=report.faster_paths(topk),
        budgets={str(k): v for k, v in limits.items()},
    )
    out.mkdir(parents=True, exist_ok=True)
    sections = [
        f"# recommend() cost vs catalogue size\n\nMeasured on {where}; numpy BLAS {payload['blas']}; load average "
        f"{payload['load_average']} (a shared machine: other jobs ran too)."
    ]
    if cost:
        sections += [report.cost_markdown(cost), "Where brute force stops fitting (p99, this machine):",
                     "\n".join(f"- {v}" for v in verdicts)]  # fmt: skip
        title = f"recommend() p99 vs catalogue — {host['cpu']}, numpy BLAS {payload['blas']}"
        plot = report.cost_plot(cost, limits, out / "rec_cost.png", title=title, note=f"{where}; a shared machine")
        payload["plot"] = str(plot)
    if ivf:
        built = "; ".join(f"{f['n_items']:,} items: {f['n_lists']:,} lists of {f['list_size_min']:,}-"
                          f"{f['list_size_max']:,} items, bundle items written in {f['written_s']} s"
                          for f in payload["ivf_index"])  # fmt: skip
        sections += [f"recommend() end to end through the SDK, exact vs the bundle's IVF index ({built}):",
                     report.search_markdown(ivf), "What search='auto' picks (bundle with an index):",
                     "\n".join(f"- {v}" for v in payload["auto"])]  # fmt: skip
    if topk:
        sections += ["numpy vs in-graph scoring + top-k:", report.topk_markdown(topk)]
        sections += ["\n".join(f"- {line}" for line in payload["faster"])]
    text = "\n\n".join(sections)
    (out / "rec_cost.md").write_text(text + "\n", encoding="utf-8")
    (out / "rec_cost.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    emit(args, payload, lambda: text + f"\n\nreports: {out}")
