"""``shelfedge rec-cost``: recommend() cost vs catalogue size, in-graph top-k, an IVF index past the budget.

One encoder (the MovieLens student's bundles when ``shelfedge rec-distill --dataset movielens``
made them, ``--bundles``, or a small seeded one built here) is paired with seeded synthetic item
tables of each size (``sdk/qa/rec_cost.py``); bundles, tables and indexes go under ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cli import emit, log
from sdk.bundle import Bundle
from sdk.enums import RUNTIMES_FOR_FORMAT, ModelFormat, Precision
from sdk.errors import ConfigError
from sdk.loading import load
from sdk.qa import rec_cost_report as report
from sdk.qa.rec_cost import (
    CostRow,
    IvfRow,
    measure_ivf,
    quantized,
    random_histories,
    synthetic_catalogue,
    synthetic_items,
    table_fingerprint,
    time_cost,
    user_vectors,
    with_items,
)
from sdk.qa.rec_topk import GraphPath, TopkRow, time_topk
from sdk.recommender import Recommender
from sdk.recommender_items import quantize_table, read_item_files
from sdk.versions import host_info

REAL_BUNDLES = "out/rec-distill/movielens/bundles/movielens-*-fp32"
FORMATS = (ModelFormat.TFLITE, ModelFormat.OPENVINO, ModelFormat.ONNX)
# The seeded encoder has the MovieLens student's shape (recency pooling, dim 64, window 50, 9,742 items).
SEEDED_ITEMS, SEEDED_DIM, SEEDED_LEN = 9742, 64, 50
FUSED_MAX_ITEMS = 100_000  # past this the saved runtime call is noise next to the scoring (and exports take minutes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundles", nargs="+", help=f"encoder bundles, one per format (default: {REAL_BUNDLES})")
    parser.add_argument("--encoder", help="the same encoder as a .keras file: also time it fused with the scoring")
    parser.add_argument("--sizes", default="1000,10000,100000,1000000", help="catalogue sizes (default 1k..1M)")
    parser.add_argument("--calls", type=int, default=500, help="timed calls per runtime and size (default 500)")
    parser.add_argument("--calls-per-block", type=int, default=25, help="calls per contender per block (default 25)")
    parser.add_argument("--ivf-sizes", default="100000,1000000", help="sizes to try the IVF index at ('' for none)")
    parser.add_argument("--n-probe", default="1,4,16,64", help="IVF lists opened per request (default 1,4,16,64)")
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
    encoders, keras_encoder, template, description = _encoders(args, out)
    spec = next(iter(encoders.values())).manifest.recommendation
    assert spec is not None  # _encoders checked it
    payload: dict[str, Any] = {"host": host, "encoder": description, "threads": args.threads, "k": args.k}
    with _blas_limit(args.blas_threads):
        payload["blas"] = report.blas_pools()
        cost, ivf, topk, payload["ivf_index"] = _measure(encoders, keras_encoder, template, args, out)
    payload["load_average"] = {"before": [round(x, 2) for x in load_before],
                               "after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    _write(payload, cost, ivf, topk, out, args)
    return 0


def _measure(
    encoders: dict[ModelFormat, Bundle], keras_encoder: Any, template: Any, args: argparse.Namespace, out: Path
) -> tuple[list[CostRow], list[IvfRow], list[TopkRow], list[dict[str, Any]]]:
    """Every catalogue size asked for: its table and bundles, then each measurement that wants it."""
    sizes, ivf_sizes = _sizes(args.sizes, "--sizes"), _sizes(args.ivf_sizes, "--ivf-sizes")
    graph_sizes = _sizes(args.in_graph_sizes, "--in-graph-sizes") if args.in_graph else []
    spec = next(iter(encoders.values())).manifest.recommendation
    assert spec is not None  # _encoders checked it
    cost: list[CostRow] = []
    ivf: list[IvfRow] = []
    topk: list[TopkRow] = []
    facts: list[dict[str, Any]] = []
    with load(next(iter(encoders.values())), threads=args.threads) as users_model:
        for n_items in sorted({*sizes, *ivf_sizes, *graph_sizes}):
            table, bias = synthetic_items(n_items, spec.dim, seed=args.seed + n_items, like=template)
            table = quantized(table)  # what the bundle stores and the recommender scores
            histories = random_histories(min(spec.n_items, n_items), spec.max_len, args.histories, seed=args.seed)
            if n_items in sizes or n_items in graph_sizes:
                recommenders = _open(_bundles(encoders, table, bias, out, n_items), args.threads)
                try:
                    if n_items in sizes:
                        cost += _time_cost(recommenders, histories, args)
                    if n_items in graph_sizes:
                        topk += _time_graph(recommenders, table, bias, keras_encoder, histories, out, args)
                finally:
                    for recommender in recommenders.values():
                        recommender.close()
            if n_items in ivf_sizes:
                rows, built = _ivf(
                    users_model, spec.max_len, table, bias, histories, _sizes(args.n_probe, "--n-probe"), out, args
                )
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


def _encoders(args: argparse.Namespace, out: Path) -> tuple[dict[ModelFormat, Bundle], Any, Any, str]:
    """Encoder bundles by format, a Keras encoder to fuse (or None), the synthetic tables' template, a description."""
    paths = [Path(p) for p in args.bundles] if args.bundles else sorted(Path().glob(REAL_BUNDLES))
    found: dict[ModelFormat, Bundle] = {}
    for path in paths:
        bundle = Bundle.open(path)
        if bundle.manifest.recommendation is None:
            raise ConfigError(f"rec-cost: {path} is not a recommendation bundle; pass encoder bundles with item files")
        if bundle.manifest.format in FORMATS:
            found.setdefault(bundle.manifest.format, bundle)
    if args.bundles and not found:
        raise ConfigError(f"rec-cost: none of {args.bundles} is a LiteRT, OpenVINO or ONNX bundle")
    keras_encoder = _keras(args.encoder) if args.encoder else None
    if found:
        first = next(iter(found.values()))
        spec = first.manifest.recommendation
        assert spec is not None
        items = read_item_files(first.path, spec)
        names = ", ".join(str(b.path) for b in found.values())
        log(f"[rec-cost] encoder: {names} (synthetic tables resample its {spec.n_items:,}-item table)")
        if keras_encoder is None:
            keras_encoder = _student_encoder(first.path, items.table)
        return found, keras_encoder, (items.dequantized(), items.bias), f"{first.manifest.name}: {names}"
    log("[rec-cost] no real encoder bundle found: building a seeded one (MovieLens student's shape)")
    seeded, keras_model = _seeded(out / "encoder", args.seed)
    return seeded, keras_encoder or keras_model, None, f"seeded recency encoder, dim {SEEDED_DIM}, window {SEEDED_LEN}"


def _student_encoder(bundle: Path, stored: np.ndarray) -> Any:
    """The Keras encoder rec-distill saved beside the bundles: the student whose int8 table is the bundle's."""
    for student in sorted(bundle.parent.parent.glob("student-*/student")):
        try:
            table = np.load(student / "items.npy")
        except (OSError, ValueError):
            continue
        if table.shape == stored.shape and np.array_equal(quantize_table(table, Precision.INT8)[0], stored):
            log(f"[rec-cost] its Keras encoder: {student / 'encoder.keras'} (the student with this item table)")
            return _keras(str(student / "encoder.keras"))
    return None


def _keras(path: str) -> Any:
    import keras

    import converters.models.rec_student  # noqa: F401 -- registers the student's layers for loading

    try:
        return keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"rec-cost: --encoder {path}: Keras cannot load it ({e}); pass the student's encoder.keras"
        ) from e


def _seeded(directory: Path, seed: int) -> tuple[dict[ModelFormat, Bundle], Any]:
    """The seeded encoder's bundles (reused when this seed built them before) and its Keras model."""
    from converters.export.rec_bundle import package_recommender
    from converters.models.rec_student import StudentConfig, build_student

    stamp, model_file = directory / "seeded.json", directory / "encoder.keras"
    student = StudentConfig(
        n_items=SEEDED_ITEMS, kind="sequences", shape="recency", dim=SEEDED_DIM, max_len=SEEDED_LEN, seed=seed
    )
    config = {**dataclasses.asdict(student), "schema": 1}
    name = f"seeded-recency{SEEDED_DIM}"
    targets = {f: directory / f"{name}-{f.value}-fp32" for f in FORMATS}
    built = stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == config and model_file.is_file()
    if built and all((t / "manifest.json").is_file() for t in targets.values()):
        return {f: Bundle.open(t) for f, t in targets.items()}, _keras(str(model_file))
    encoder, _ = build_student(student)
    table, bias = synthetic_items(SEEDED_ITEMS, SEEDED_DIM, seed=seed)
    bundles = package_recommender(
        encoder, table, bias, synthetic_catalogue(SEEDED_ITEMS), np.ones(SEEDED_ITEMS),
        out_dir=directory, name=name, kind="sequences", formats=[f.value for f in FORMATS], max_len=SEEDED_LEN,
        progress=lambda line: log(f"[rec-cost] {line}"),
    )  # fmt: skip
    encoder.save(model_file)
    stamp.write_text(json.dumps(config) + "\n", encoding="utf-8")
    return dict(bundles), encoder


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


def _open(bundles: dict[ModelFormat, Bundle], threads: int) -> dict[str, Recommender]:
    opened: dict[str, Recommender] = {}
    try:
        for fmt, bundle in bundles.items():
            runtime = RUNTIMES_FOR_FORMAT[fmt][0].value
            opened[runtime] = Recommender.from_bundle(bundle, runtime=runtime, threads=threads)
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


def _ivf(
    model: Any,
    max_len: int,
    table: np.ndarray,
    bias: np.ndarray,
    histories: list[list[int]],
    n_probes: Sequence[int],
    out: Path,
    args: argparse.Namespace,
) -> tuple[list[IvfRow], dict[str, Any]]:
    n = len(table)
    n_lists = max(1, round(n**0.5))
    probes = [p for p in n_probes if p <= n_lists]
    log(f"[rec-cost] {n:,} items: IVF with {n_lists:,} lists (k-means, seed {args.seed}), n_probe {probes}…")
    users = user_vectors(model, histories, max_len)
    rows, facts = measure_ivf(
        table, bias, users, histories, n_lists=n_lists, n_probes=probes, k=args.k, seed=args.seed,
        index_path=out / "ivf" / f"n{n}-lists{n_lists}.npz", blocks=max(1, args.calls // (2 * args.calls_per_block)),
        calls_per_block=args.calls_per_block,
    )  # fmt: skip
    log(f"[rec-cost]   index built in {facts['build_s']} s; {report.ivf_markdown(rows).count(chr(10)) - 1} rows")
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
    payload: dict[str, Any], cost: list[CostRow], ivf: list[IvfRow], topk: list[TopkRow], out: Path, args: Any
) -> None:
    limits = report.budgets()
    host = payload["host"]
    where = f"{host['machine']}, runtime threads {args.threads}"
    verdicts = report.crossings(cost, limits) if cost else []
    payload.update(
        cost=[r.to_dict() for r in cost],
        ivf=[r.to_dict() for r in ivf],
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
        sections += ["IVF index (scoring stage only: user vector in, top-k out):", report.ivf_markdown(ivf)]
    if topk:
        sections += ["numpy vs in-graph scoring + top-k:", report.topk_markdown(topk)]
        sections += ["\n".join(f"- {line}" for line in payload["faster"])]
    text = "\n\n".join(sections)
    (out / "rec_cost.md").write_text(text + "\n", encoding="utf-8")
    (out / "rec_cost.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    emit(args, payload, lambda: text + f"\n\nreports: {out}")
