"""How ``recommend()`` cost grows with the catalogue, and what an IVF index buys past the budget.

``shelfedge rec-cost`` pairs one encoder (a real bundle's, or a small seeded one) with synthetic
item tables of 1k .. 1M items, written as ordinary recommendation bundles (int8 per-row table,
as the real ones), and times ``Recommender.recommend()`` per runtime as ``rec-bench`` does: the
contenders of one catalogue size interleaved in blocks whose order rotates
(:func:`~sdk.qa.bench_stats.interleaved_blocks`). The encoder alone (the runtime call on a
prepared batch) runs in the same blocks, so ``recommend() - encoder`` is the numpy side's cost
(scoring, filters, top-k, ids): ``RecTimings.encode_ms`` cannot give it, it includes the scoring.

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
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle, write_bundle
from sdk.enums import Precision
from sdk.errors import ConfigError
from sdk.interactions import Catalogue
from sdk.loading import Model
from sdk.qa.bench_stats import LatencyStats, interleaved_blocks, latency_stats
from sdk.recommender import Recommender
from sdk.recommender_index import build_ivf
from sdk.recommender_items import dequantize_table, quantize_table, write_item_files

__all__ = [
    "CostRow",
    "IvfRow",
    "encoder_batch",
    "measure_ivf",
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
class IvfRow:
    """The scoring stage (user vector in, top-k out) exact or through an IVF index. Immutable.

    ``n_probe`` is None for exact brute force. Recall@k is the mean over users of the share of
    the exact top-k found, with a 95 % bootstrap interval over users.
    """

    n_items: int
    n_lists: int
    n_probe: int | None
    candidates_mean: float
    latency: LatencyStats
    recall: float
    recall_low: float
    recall_high: float
    users: int

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["latency"] = self.latency.to_dict()
        for key in ("candidates_mean", "recall", "recall_low", "recall_high"):
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
    encoder: Bundle, table: np.ndarray, bias: np.ndarray, target: Path, *, items_dir: Path | None = None
) -> Bundle:
    """A recommendation bundle at ``target``: ``encoder``'s model files with ``table`` as its items.

    The item files are written once into ``items_dir`` (when given, and reused when already
    there) and hard-linked into the bundle (copied where links fail), so the bundles of one size
    on several formats share them on disk. ``target`` is replaced when it holds a bundle.

    Raises:
        ConfigError: ``encoder`` is not a recommendation bundle, ``table`` is not (n, its dim),
            or ``target`` holds something that is not a bundle.
    """
    spec = encoder.manifest.recommendation
    if spec is None:
        raise ConfigError(f"{encoder.path}: not a recommendation bundle; pass an encoder bundle with item files")
    if table.ndim != 2 or table.shape[1] != spec.dim:
        raise ConfigError(f"{encoder.path}: a {table.shape} table does not fit its {spec.dim}-dim encoder")
    new_spec = dataclasses.replace(spec, n_items=len(table), table_precision=Precision.INT8, has_bias=True)
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


def measure_ivf(
    table: np.ndarray,
    bias: np.ndarray,
    users: np.ndarray,
    histories: Sequence[Sequence[int]],
    *,
    n_lists: int,
    n_probes: Sequence[int],
    k: int = 10,
    seed: int = 0,
    index_path: Path | None = None,
    blocks: int = 10,
    calls_per_block: int = 20,
    resamples: int = 1000,
) -> tuple[list[IvfRow], dict[str, Any]]:
    """Exact top-k vs IVF top-k (history excluded) on the same users: latency and recall@k.

    Builds the index (``build_ivf``, 10 iterations, 64 training items per list), saves and
    reloads it when ``index_path`` is given, then times the scoring stage of every variant in
    interleaved blocks. The IVF path scores a copy of the table kept in list order
    (``IvfIndex.grouped``/``spans``): ``table[candidates]`` gathers cost 6-9x the product itself
    on this project's x86 host. Returns the rows (exact first) and the build facts.

    Raises:
        ConfigError: users and histories differ in number, or an ``n_probe`` is not in 1..n_lists.
    """
    if len(users) != len(histories) or not len(users):
        raise ConfigError(f"rec-cost ivf: {len(users)} users for {len(histories)} histories; give one per history")
    if any(not 1 <= p <= n_lists for p in n_probes):
        raise ConfigError(f"rec-cost ivf: n_probe values {list(n_probes)} must lie in 1..n_lists ({n_lists})")
    started = time.perf_counter()
    index = build_ivf(table, n_lists, seed, 10, bias=bias, sample=min(len(table), 64 * n_lists))
    built_s = time.perf_counter() - started
    if index_path is not None:
        index = type(index).load(index.save(index_path), n_items=len(table), dim=table.shape[1])
    excluded = [np.asarray(h, np.int64) for h in histories]

    def exact(pair: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        u, h = pair
        scores = table @ u + bias
        scores[h] = -np.inf
        return _best(scores, k)

    grouped_table, grouped_bias = index.grouped(table), index.grouped(bias)

    def approximate(pair: tuple[np.ndarray, np.ndarray], n_probe: int) -> tuple[np.ndarray, int]:
        # The table in list order: each opened list is a contiguous block (no gather of candidate rows).
        u, h = pair
        spans = index.spans(u, n_probe)
        scores = np.concatenate([grouped_table[a:b] @ u + grouped_bias[a:b] for a, b in spans])
        candidates = np.concatenate([index.order[a:b] for a, b in spans])
        scores[np.isin(candidates, h)] = -np.inf
        return candidates[_best(scores, k)], len(candidates)

    pairs = list(zip(users, excluded, strict=True))
    truth = [exact(pair) for pair in pairs]
    loops: dict[str, Callable[[], object]] = {"exact": _cycle(exact, pairs)}
    stats: dict[int, tuple[np.ndarray, float]] = {}
    for n_probe in n_probes:
        found = [approximate(pair, n_probe) for pair in pairs]
        hits = np.array([len(np.intersect1d(top, want)) / k for (top, _), want in zip(found, truth, strict=True)])
        stats[n_probe] = (hits, float(np.mean([n for _, n in found])))
        loops[f"n_probe={n_probe}"] = _cycle(functools.partial(approximate, n_probe=n_probe), pairs)
    timed = interleaved_blocks(loops, blocks=blocks, calls_per_block=calls_per_block, warmup=5)
    rng = np.random.default_rng(seed)
    rows = [_ivf_row(len(table), n_lists, None, float(len(table)), timed["exact"], np.ones(len(users)), rng, resamples)]
    for n_probe in n_probes:
        hits, mean_candidates = stats[n_probe]
        rows.append(
            _ivf_row(len(table), n_lists, n_probe, mean_candidates, timed[f"n_probe={n_probe}"], hits, rng, resamples)
        )
    sizes = index.list_sizes()
    facts = {"build_s": round(built_s, 2), "n_lists": n_lists, "list_size_min": int(sizes.min()),
             "list_size_max": int(sizes.max()), "index_file": str(index_path) if index_path else None}  # fmt: skip
    return rows, facts


def _ivf_row(
    n_items: int,
    n_lists: int,
    n_probe: int | None,
    candidates: float,
    samples: list[np.ndarray],
    hits: np.ndarray,
    rng: np.random.Generator,
    resamples: int,
) -> IvfRow:
    means = hits[rng.integers(len(hits), size=(resamples, len(hits)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return IvfRow(
        n_items=n_items,
        n_lists=n_lists,
        n_probe=n_probe,
        candidates_mean=candidates,
        latency=latency_stats(np.concatenate(samples)),
        recall=float(hits.mean()),
        recall_low=float(low),
        recall_high=float(high),
        users=len(hits),
    )


def _best(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest finite scores, best first."""
    k = min(k, int(np.isfinite(scores).sum()))
    if k == 0:
        return np.zeros(0, np.int64)
    top = np.argpartition(scores, len(scores) - k)[len(scores) - k :]
    return top[np.argsort(-scores[top], kind="stable")]


def _cycle(call: Callable[[Any], object], arguments: Sequence[Any]) -> Callable[[], object]:
    items = itertools.cycle(arguments)
    return lambda: call(next(items))


def table_fingerprint(table: np.ndarray, bias: np.ndarray) -> str:
    """A short sha256 of a float table and its bias: names the scoring bundles built from them."""
    digest = hashlib.sha256(np.ascontiguousarray(table).tobytes())
    digest.update(np.ascontiguousarray(bias, np.float32).tobytes())
    return digest.hexdigest()[:10]
