"""Scoring and top-k in numpy (what ``Recommender`` does) vs inside the model graph, timed side by side.

The in-graph candidate is a scoring bundle (``converters/export/rec_scoring.py``): ``(user, mask)
-> (top_scores, top_indices)``, or with the encoder fused in, ``(history, mask) -> ...``. A
:class:`GraphPath` makes one request of it the way ``recommend()`` makes one: history ids to
indices (unknown ids dropped), the window, the mask (the history excluded: -1e9 on its items),
the runtime call(s), the masked entries dropped from the answer, indices back to item ids. The
numpy path is ``Recommender.recommend()`` itself. Both answer the same histories, interleaved in
blocks (:func:`~sdk.qa.bench_stats.interleaved_blocks`); before timing, every graph path's top-k
is checked against numpy's on the same histories (overlap@k, reported).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from sdk.errors import ConfigError
from sdk.loading import Model
from sdk.qa.bench_stats import LatencyStats, interleaved_blocks, latency_stats
from sdk.recommender import Recommender

__all__ = ["MASKED", "GraphPath", "TopkRow", "time_topk"]

# What the mask holds for an item that must not be returned: far below any score, yet finite
# (an inf would turn into NaN in a runtime that rescales or fuses the Add).
MASKED = -1e9
_AGREEMENT_CALLS = 50


class GraphPath:
    """One request through a scoring bundle (module doc). Not thread-safe: it holds sessions.

    Args:
        scoring: the scoring bundle opened on a runtime.
        encoder: the encoder bundle opened on the same runtime, or None when ``scoring`` takes
            the history itself (encoder fused in).
        reference: the numpy-path recommender of the same catalogue and encoder: its catalogue,
            window and kind are used.

    Raises:
        ConfigError: the scoring model's inputs or outputs are not a scoring model's, or its
            mask width is not the catalogue's size.
    """

    def __init__(self, scoring: Model, encoder: Model | None, reference: Recommender) -> None:
        inputs, outputs = scoring.bundle.manifest.inputs, scoring.bundle.manifest.outputs
        n_items = len(reference.catalogue)
        masks = [s for s in inputs if s.dtype == "float32" and s.shape[-1] == n_items]
        heads = [s for s in inputs if s not in masks]
        ints = [s for s in outputs if s.dtype.startswith("int")]
        floats = [s for s in outputs if s.dtype.startswith("float")]
        if len(masks) != 1 or len(heads) != 1 or len(ints) != 1 or len(floats) != 1:
            raise ConfigError(
                f"{scoring.bundle.path}: expected inputs (user or history, mask of {n_items}) and outputs "
                f"(top_scores, top_indices), got {[str(s) for s in inputs]} -> {[str(s) for s in outputs]}"
            )
        self.scoring, self.encoder, self.reference = scoring, encoder, reference
        self._mask_name, self._head_name = masks[0].name, heads[0].name
        self._indices, self._scores = ints[0].name, floats[0].name
        self._index = reference.catalogue.index_of()
        self._ids = reference.catalogue.ids
        self._n_items, self._max_len = n_items, reference.spec.max_len
        self.k = int(ints[0].shape[-1])

    @property
    def fused(self) -> bool:
        return self.encoder is None

    def top(self, history: Sequence[str]) -> list[int]:
        """The graph's top-k item indices for ``history`` (its items excluded), best first."""
        known = [self._index[i] for i in history if i in self._index]
        if self.reference.spec.kind == "baskets":
            known = list(dict.fromkeys(reversed(known)))[::-1]
        window = known[-self._max_len :]
        batch = np.zeros((1, self._max_len), np.int32)
        batch[0, self._max_len - len(window) :] = np.asarray(window, np.int32) + 1
        mask = np.zeros((1, self._n_items), np.float32)
        mask[0, known] = MASKED
        if self.encoder is None:
            head = batch
        else:
            spec = self.encoder.bundle.manifest
            head = self.encoder.run({spec.inputs[0].name: batch})[spec.outputs[0].name]
        out = self.scoring.run({self._head_name: head, self._mask_name: mask})
        indices, scores = out[self._indices][0], out[self._scores][0]
        return [int(i) for i in indices[scores > MASKED / 2]]

    def recommend_ids(self, history: Sequence[str]) -> list[str]:
        """:meth:`top` as item ids: the whole request, as an app would make it."""
        return [self._ids[i] for i in self.top(history)]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TopkRow:
    """One path on one runtime at one catalogue size. Immutable; safe to share across threads.

    ``overlap`` is the mean share of numpy's top-k the path returned on the checked histories
    (1.0 for the numpy path itself).
    """

    n_items: int
    runtime: str
    path: str
    latency: LatencyStats
    overlap: float
    checked: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "runtime": self.runtime,
            "path": self.path,
            "latency": self.latency.to_dict(),
            "overlap": round(self.overlap, 4),
            "checked": self.checked,
        }


def time_topk(
    numpy_paths: Mapping[str, Recommender],
    graph_paths: Mapping[str, tuple[str, GraphPath]],
    histories: Sequence[Sequence[str]],
    *,
    blocks: int = 20,
    calls_per_block: int = 20,
    warmup: int = 10,
) -> list[TopkRow]:
    """Time numpy ``recommend()`` per runtime against each graph path, interleaved.

    Args:
        numpy_paths: runtime name -> the numpy-path recommender on it.
        graph_paths: label -> (runtime name, its graph path); the runtime must be in ``numpy_paths``.
        histories: item-id histories every path answers.

    Raises:
        ConfigError: nothing to time, a graph path's runtime has no numpy path, or the
            graph paths do not all return the same k.
    """
    if not numpy_paths or not histories:
        raise ConfigError("rec-cost in-graph: give at least one numpy path and one history")
    if any(runtime not in numpy_paths for runtime, _ in graph_paths.values()):
        raise ConfigError(
            f"rec-cost in-graph: every graph path needs a numpy path on its runtime ({list(numpy_paths)})"
        )
    ks = {path.k for _, path in graph_paths.values()}
    if len(ks) > 1:
        raise ConfigError(f"rec-cost in-graph: the scoring models return different k: {sorted(ks)}")
    k = ks.pop() if ks else 10
    loops: dict[str, Callable[[], object]] = {}
    for runtime, recommender in numpy_paths.items():
        loops[f"{runtime} numpy"] = _cycle(functools.partial(recommender.recommend, k=k), histories)
    for label, (_, path) in graph_paths.items():
        loops[label] = _cycle(path.recommend_ids, histories)
    overlaps = {
        label: _overlap(numpy_paths[runtime], path, histories, k) for label, (runtime, path) in graph_paths.items()
    }
    timed = interleaved_blocks(loops, blocks=blocks, calls_per_block=calls_per_block, warmup=warmup)
    n_items = len(next(iter(numpy_paths.values())).catalogue)
    checked = min(len(histories), _AGREEMENT_CALLS)
    rows = [
        TopkRow(
            n_items=n_items,
            runtime=runtime,
            path="numpy",
            latency=latency_stats(np.concatenate(timed[f"{runtime} numpy"])),
            overlap=1.0,
            checked=checked,
        )
        for runtime in numpy_paths
    ]
    for label, (runtime, path) in graph_paths.items():
        rows.append(
            TopkRow(
                n_items=n_items,
                runtime=runtime,
                path="in-graph fused" if path.fused else "in-graph",
                latency=latency_stats(np.concatenate(timed[label])),
                overlap=overlaps[label],
                checked=checked,
            )
        )
    return rows


def _overlap(recommender: Recommender, path: GraphPath, histories: Sequence[Sequence[str]], k: int) -> float:
    shares = []
    for history in itertools.islice(histories, _AGREEMENT_CALLS):
        want = {item.index for item in recommender.recommend(history, k).items}
        got = set(path.top(history))
        shares.append(len(want & got) / max(1, len(want)))
    return float(np.mean(shares))


def _cycle(call: Callable[[Any], object], arguments: Sequence[Any]) -> Callable[[], object]:
    items = itertools.cycle(arguments)
    return lambda: call(next(items))
