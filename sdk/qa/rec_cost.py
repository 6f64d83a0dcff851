"""How ``recommend()`` cost grows with the catalogue, and what an IVF index buys past the budget.

``shelfedge rec-cost`` pairs one encoder (a real bundle's, or a small seeded one) with synthetic
item tables of 1k .. 1M items, written as ordinary recommendation bundles (int8 per-row table,
as the real ones), and times ``Recommender.recommend()`` per runtime as ``rec-bench`` does: the
contenders of one catalogue size interleaved in blocks whose order rotates
(:func:`~sdk.qa.bench_stats.interleaved_blocks`). The encoder alone (the runtime call on a
prepared batch) runs in the same blocks, so ``recommend() - encoder`` is the numpy side's cost
(scoring, filters, top-k, ids): ``RecTimings.encode_ms`` cannot give it, it includes the scoring.

Past the budget (:func:`measure_search`): the same ``recommend()`` through the SDK on a bundle
that carries an IVF index (``with_items(..., ivf_lists=N)``, as ``package_recommender`` writes
it), once per search (exact, and IVF at each ``n_probe``), in the same interleaved blocks; recall@k
of each against the exact answer to the same call, with a 95 % bootstrap interval over histories.

Synthetic tables: with a real bundle, its rows (and biases) resampled with noise, so norms and
directions look like a trained table's; without one, a mixture of ~sqrt(n) Gaussian clusters.
Cost does not depend on the values; an IVF index's recall does, so recall on synthetic tables is
indicative only. Histories are seeded random draws from the items the encoder knows.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle, write_bundle
from sdk.enums import Precision
from sdk.errors import ConfigError
from sdk.interactions import Catalogue
from sdk.loading import Model, load
from sdk.qa.bench_stats import LatencyStats, interleaved_blocks, latency_stats
from sdk.recommender import Recommender, RecommenderOptions
from sdk.recommender_items import dequantize_table, index_spec, quantize_table, read_item_files, write_item_files

__all__ = [
    "CostRow",
    "SearchRow",
    "encoder_batch",
    "measure_search",
    "open_searches",
    "quantized",
    "random_histories",
    "synthetic_catalogue",
    "synthetic_items",
    "table_fingerprint",
    "time_cost",
    "user_vectors",
    "with_items",
]

_NOISE = 0.5  # resampled rows get this fraction of the table's per-dimension spread as noise


@dataclasses.dataclass(frozen=True, kw_only=True)
class CostRow:
    """recommend() and the encoder alone, one runtime and catalogue size. Immutable."""

    n_items: int
    runtime: str
    runtime_version: str
    latency: LatencyStats
    encode: LatencyStats

    @property
    def rest_p50_ms(self) -> float:
        """recommend() minus the encoder, at the median: scoring, filters, top-k, ids."""
        return max(0.0, self.latency.p50_ms - self.encode.p50_ms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "latency": self.latency.to_dict(),
            "encode": self.encode.to_dict(),
            "rest_p50_ms": round(self.rest_p50_ms, 4),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchRow:
    """recommend() end to end with one search (exact, or IVF at one ``n_probe``). Immutable.

    Recall@k is the mean over histories of the share of the exact top-k found (the exact row's
    is 1), with a 95 % bootstrap interval over histories; ``candidates_mean`` the items scored
    per call; ``widened`` the share of calls whose probe had to be widened.
    """

    n_items: int
    runtime: str
    search: str
    n_probe: int | None
    n_lists: int | None
    candidates_mean: float
    widened: float
    latency: LatencyStats
    score_p50_ms: float
    recall: float
    recall_low: float
    recall_high: float
    users: int

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["latency"] = self.latency.to_dict()
        for key in ("candidates_mean", "widened", "score_p50_ms", "recall", "recall_low", "recall_high"):
            data[key] = round(data[key], 4)
        return data


def synthetic_items(
    n_items: int, dim: int, *, seed: int, like: tuple[np.ndarray, np.ndarray | None] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded float32 ``(table (n_items, dim), bias (n_items,))`` (module doc for how).

    Raises:
        ConfigError: ``n_items`` or ``dim`` is below 1, or ``like`` is not a (n, dim) table.
    """
    if n_items < 1 or dim < 1:
        raise ConfigError(f"synthetic items: n_items {n_items} and dim {dim} must be >= 1")
    rng = np.random.default_rng(seed)
    if like is None:
        centres = rng.normal(0.0, 0.3, size=(max(1, round(n_items**0.5)), dim)).astype(np.float32)
        table = centres[rng.integers(len(centres), size=n_items)]
        table += rng.normal(0.0, 0.15, size=(n_items, dim)).astype(np.float32)
        return table, rng.normal(0.0, 0.5, n_items).astype(np.float32)
    template, template_bias = np.asarray(like[0], np.float32), like[1]
    if template.ndim != 2 or template.shape[1] != dim or len(template) < 1:
        raise ConfigError(f"synthetic items: the template table is {template.shape}, expected (n, {dim})")
    rows = rng.integers(len(template), size=n_items)
    spread = template.std(axis=0, keepdims=True) * _NOISE
    table = template[rows] + rng.normal(size=(n_items, dim)).astype(np.float32) * spread
    if template_bias is None:
        return table, np.zeros(n_items, np.float32)
    bias = np.asarray(template_bias, np.float32)
    return table, bias[rows] + rng.normal(0.0, float(bias.std()) * _NOISE, n_items).astype(np.float32)


def synthetic_catalogue(n_items: int) -> Catalogue:
    """Ids ``i0000000`` ... and names ``item 0`` ..., one per table row."""
    width = max(7, len(str(n_items - 1)))
    return Catalogue(
        ids=tuple(f"i{i:0{width}d}" for i in range(n_items)), names=tuple(f"item {i}" for i in range(n_items))
    )


def with_items(
    encoder: Bundle,
    table: np.ndarray,
    bias: np.ndarray,
    target: Path,
    *,
    items_dir: Path | None = None,
    ivf_lists: int | None = None,
) -> Bundle:
    """A recommendation bundle at ``target``: ``encoder``'s model files with ``table`` as its items.

    The item files are written once into ``items_dir`` (when given, and reused when already
    there) and hard-linked into the bundle (copied where links fail), so the bundles of one size
    on several formats share them on disk. ``target`` is replaced when it holds a bundle. With
    ``ivf_lists`` the items carry an IVF index, built as ``package_recommender`` builds it (an
    ``items_dir`` then holds the files of one index only: give each index its own).

    Raises:
        ConfigError: ``encoder`` is not a recommendation bundle, ``table`` is not (n, its dim),
            ``ivf_lists`` is not in 1..n, or ``target`` holds something that is not a bundle.
    """
    spec = encoder.manifest.recommendation
    if spec is None:
        raise ConfigError(f"{encoder.path}: not a recommendation bundle; pass an encoder bundle with item files")
    if table.ndim != 2 or table.shape[1] != spec.dim:
        raise ConfigError(f"{encoder.path}: a {table.shape} table does not fit its {spec.dim}-dim encoder")
    index = index_spec(len(table), ivf_lists) if ivf_lists is not None else None
    new_spec = dataclasses.replace(spec, n_items=len(table), table_precision=Precision.INT8, has_bias=True, index=index)
    source = Path(items_dir) if items_dir is not None else target.parent / f".{target.name}.items"
    if not all((source / f).is_file() for f in new_spec.files):
        source.mkdir(parents=True, exist_ok=True)
        popularity = np.floor(1e6 / np.arange(1, len(table) + 1))  # Zipf-like counts, item 0 most popular
        catalogue = synthetic_catalogue(len(table))
        write_item_files(source, new_spec, table=table, bias=bias, catalogue=catalogue, popularity=popularity)
    if target.exists():
        if not (target / "manifest.json").is_file():
            raise ConfigError(f"{target}: exists and is not a bundle; choose another output directory")
        shutil.rmtree(target)
    target.mkdir(parents=True)
    model_files = [f for f in encoder.manifest.files if f not in spec.files]
    for name in model_files:
        shutil.copy2(encoder.path / name, target / name)
    for name in new_spec.files:
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)
    files = dict.fromkeys((*model_files, *new_spec.files), "")
    return write_bundle(target, encoder.manifest.with_changes(recommendation=new_spec, files=files))


def quantized(table: np.ndarray) -> np.ndarray:
    """``table`` as the bundle stores and the Recommender scores it: int8 per row, dequantized."""
    stored, scales = quantize_table(table, Precision.INT8)
    return dequantize_table(stored, scales)


def random_histories(vocab: int, max_len: int, count: int, *, seed: int) -> list[list[int]]:
    """``count`` seeded histories of 1..max_len distinct item indices below ``vocab``."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, min(max_len, vocab) + 1, size=count)
    # choice without replacement returns the draws in random order: a history's order is random too.
    return [rng.choice(vocab, int(n), replace=False).tolist() for n in lengths]


def encoder_batch(window: Sequence[int], max_len: int) -> np.ndarray:
    """(1, max_len) int32: index + 1, left-padded, newest last (the encoder contract, sdk/rec_manifest.py)."""
    batch = np.zeros((1, max_len), np.int32)
    recent = list(window)[-max_len:]
    batch[0, max_len - len(recent) :] = np.asarray(recent, np.int32) + 1
    return batch


def user_vectors(model: Model, histories: Sequence[Sequence[int]], max_len: int) -> np.ndarray:
    """(len(histories), dim) float32: the encoder's user vector of each history, one call each."""
    name, output = model.bundle.manifest.inputs[0].name, model.bundle.manifest.outputs[0]
    users = []
    for history in histories:
        raw = model.run({name: encoder_batch(history, max_len)})[output.name]
        if output.quantization is not None:
            raw = output.quantization.dequantize(raw)
        users.append(np.asarray(raw, np.float32).reshape(-1))
    return np.stack(users)


def time_cost(
    recommenders: Mapping[str, Recommender],
    histories: Sequence[Sequence[int]],
    *,
    k: int = 10,
    blocks: int = 20,
    calls_per_block: int = 25,
    warmup: int = 10,
) -> list[CostRow]:
    """Time ``recommend(history, k)`` and the encoder alone per contender, all in the same blocks.

    Raises:
        ConfigError: no contenders or histories, non-positive counts, or contenders whose
            catalogues differ in size.
    """
    if not recommenders or not histories:
        raise ConfigError("rec-cost: give at least one recommender and one history to time")
    if min(blocks, calls_per_block, k) < 1 or warmup < 0:
        raise ConfigError(f"rec-cost: blocks {blocks}, calls_per_block {calls_per_block} and k {k} must be >= 1")
    sizes = {len(r.catalogue) for r in recommenders.values()}
    if len(sizes) != 1:
        raise ConfigError(f"rec-cost: contenders of one run must share a catalogue size, got {sorted(sizes)}")
    [n_items] = sizes
    loops: dict[str, Callable[[], object]] = {}
    for label, recommender in recommenders.items():
        ids = recommender.catalogue.ids
        as_ids = [[ids[i] for i in history] for history in histories]
        loops[label] = _cycle(functools.partial(recommender.recommend, k=k), as_ids)
        max_len = recommender.spec.max_len
        feeds = [{recommender.model.input_spec.name: encoder_batch(h, max_len)} for h in histories]
        loops[f"{label} encoder"] = _cycle(recommender.model.run, feeds)
    timed = interleaved_blocks(loops, blocks=blocks, calls_per_block=calls_per_block, warmup=warmup)
    rows = []
    for label, recommender in recommenders.items():
        info = recommender.info
        rows.append(
            CostRow(
                n_items=n_items,
                runtime=info.runtime.value,
                runtime_version=info.runtime_version,
                latency=latency_stats(np.concatenate(timed[label])),
                encode=latency_stats(np.concatenate(timed[f"{label} encoder"])),
            )
        )
    return rows


def open_searches(
    bundle: Bundle,
    runtime: str,
    n_probes: Sequence[int],
    *,
    threads: int | None = None,
    blas_threads: int | None = 1,
) -> dict[str, Recommender]:
    """Recommenders on ``bundle`` (which must carry an IVF index): ``"exact"``, then ``"ivf <n_probe>"`` each.

    The item files are read once and shared; each recommender holds its own session and float table.

    Raises:
        ConfigError: the bundle has no IVF index (naming it), or as :meth:`Recommender.create`.
        BundleError, BackendUnavailableError, InferenceError: as :meth:`Recommender.create`.
    """
    spec = bundle.manifest.recommendation
    if spec is None or spec.index is None:
        raise ConfigError(f"{bundle.path}: no IVF index; write the bundle with with_items(..., ivf_lists=N)")
    items = read_item_files(bundle.path, spec)
    opened: dict[str, Recommender] = {}
    try:
        for search, probe in [("exact", 1), *(("ivf", p) for p in n_probes)]:
            options = RecommenderOptions(
                runtime=runtime, threads=threads, search=search, n_probe=probe, blas_threads=blas_threads
            )
            model = load(bundle, runtime=runtime, threads=threads)
            opened["exact" if search == "exact" else f"ivf {probe}"] = Recommender(model, items, options)
    except BaseException:
        for recommender in opened.values():
            recommender.close()
        raise
    return opened


def measure_search(
    recommenders: Mapping[str, Recommender],
    histories: Sequence[Sequence[str]],
    *,
    k: int = 10,
    blocks: int = 10,
    calls_per_block: int = 20,
    warmup: int = 5,
    resamples: int = 1000,
    seed: int = 0,
) -> list[SearchRow]:
    """recommend() per contender (one search each, one of them exact) on the same histories: latency, recall@k.

    Every contender answers every history once untimed (the answers, items scored, widening,
    the scoring stage's own time), then all are timed in interleaved blocks.

    Raises:
        ConfigError: no contenders or histories, none of them searches exactly, or their
            catalogues differ in size.
    """
    if not recommenders or not histories:
        raise ConfigError("rec-cost search: give at least one recommender and one history")
    exact = [label for label, r in recommenders.items() if r.search.search == "exact"]
    if not exact:
        raise ConfigError("rec-cost search: one contender must search exactly (the recall reference)")
    if len({len(r.catalogue) for r in recommenders.values()}) != 1:
        raise ConfigError("rec-cost search: the contenders must share one catalogue")
    answers = {label: [r.recommend(h, k) for h in histories] for label, r in recommenders.items()}
    truth = [set(result.ids) for result in answers[exact[0]]]
    loops = {label: _cycle(functools.partial(r.recommend, k=k), histories) for label, r in recommenders.items()}
    timed = interleaved_blocks(loops, blocks=blocks, calls_per_block=calls_per_block, warmup=warmup)
    rng = np.random.default_rng(seed)
    rows = []
    for label, recommender in recommenders.items():
        results = answers[label]
        hits = np.array([len(want & set(r.ids)) / max(1, len(want)) for r, want in zip(results, truth, strict=True)])
        means = hits[rng.integers(len(hits), size=(resamples, len(hits)))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        plan = recommender.search
        rows.append(
            SearchRow(
                n_items=len(recommender.catalogue), runtime=recommender.info.runtime.value, search=plan.search,
                n_probe=plan.n_probe, n_lists=plan.n_lists,
                candidates_mean=float(np.mean([r.candidates for r in results])),
                widened=float(np.mean([r.widened for r in results])),
                latency=latency_stats(np.concatenate(timed[label])),
                score_p50_ms=float(np.median([r.timings.score_ms for r in results])), recall=float(hits.mean()),
                recall_low=float(low), recall_high=float(high), users=len(hits),
            )
        )  # fmt: skip
    return rows


def _cycle(call: Callable[[Any], object], arguments: Sequence[Any]) -> Callable[[], object]:
    items = itertools.cycle(arguments)
    return lambda: call(next(items))


def table_fingerprint(table: np.ndarray, bias: np.ndarray) -> str:
    """A short sha256 of a float table and its bias: names the scoring bundles built from them."""
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes())
    digest.update(np.ascontiguousarray(bias, np.float32).tobytes())
    return digest.hexdigest()[:10]
