"""Approximate top-k for catalogues too large to score whole in the budget: an IVF index in numpy.

Brute force scores every item (``table @ user + bias``): its cost grows with the catalogue (see
``shelfedge rec-cost``). An inverted-file index splits the items into ``n_lists`` clusters once;
a request scores the ``n_lists`` centroids, opens the ``n_probe`` best lists and returns their
items as candidates, which the caller scores exactly and ranks (filters and top-k as before).
``n_probe = n_lists`` opens every list: the candidates are the whole catalogue, the answer exact.

Maximum inner product, not nearest neighbour: recommendation scores are ``u . x_i + b_i``, and
k-means clusters by distance. The usual MIPS reduction (Bachrach et al., 2014) turns one into the
other: each item becomes ``x~_i = [x_i, b_i, sqrt(M^2 - |x_i|^2 - b_i^2)]`` with ``M`` the largest
item norm, and a user ``u~ = [u, 1, 0]``; then ``|u~ - x~_i|^2 = |u|^2 + 1 + M^2 - 2 (u . x_i + b_i)``,
so the nearest item is the best-scored one and Euclidean k-means on ``x~`` groups items a user
scores alike. Lists are probed by the distance of ``u~`` to their centroids. The bias rides in the
vectors, so a popular item is found like a close one.

k-means is Lloyd's algorithm, seeded (the same table, seed and iterations give the same index),
trained on a sample of the items (``sample``, default 256 per list) and then used to assign all.

:class:`IvfIndex` is immutable (its arrays are read-only) and safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from sdk.errors import BundleError, ConfigError, InputError

__all__ = ["IvfIndex", "build_ivf"]

INDEX_VERSION = 1
_KEYS = frozenset({"version", "centroids", "order", "offsets", "max_norm", "seed", "iters"})
_CHUNK = 16384  # rows per distance block: bounds memory at 16k x n_lists floats
_SAMPLE_PER_LIST = 256


@dataclasses.dataclass(frozen=True, kw_only=True)
class IvfIndex:
    """Items grouped by cluster: list ``l`` holds ``order[offsets[l]:offsets[l + 1]]``.

    Attributes:
        centroids: (n_lists, dim + 2) float32, in the augmented space (module doc).
        order: (n_items,) int32 item indices, grouped by list, ascending within a list.
        offsets: (n_lists + 1,) int64 list boundaries in ``order``.
        max_norm: ``M`` of the augmentation (the largest |[x_i, b_i]|).
        seed, iters: how k-means ran (provenance).
    """

    centroids: np.ndarray
    order: np.ndarray
    offsets: np.ndarray
    max_norm: float
    seed: int
    iters: int
    # What search() needs per call, derived once: |u~ - c|^2 ranks lists like -(u . c_x + c_b - |c|^2 / 2).
    _probe: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    _probe_offset: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        dim = self.centroids.shape[1] - 2
        half_norms = 0.5 * np.einsum("ij,ij->i", self.centroids, self.centroids)
        object.__setattr__(self, "_probe", np.ascontiguousarray(self.centroids[:, :dim]))
        object.__setattr__(self, "_probe_offset", (self.centroids[:, dim] - half_norms).astype(np.float32))

    @property
    def n_lists(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.order.shape[0])

    @property
    def dim(self) -> int:
        """The item / user vector width (the augmented centroids are two wider)."""
        return int(self.centroids.shape[1]) - 2

    def list_sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def search(self, user: np.ndarray, n_probe: int) -> np.ndarray:
        """Candidate item indices for ``user``: the items of the ``n_probe`` closest lists.

        Args:
            user: float (dim,) user vector (the encoder's output for one history).
            n_probe: lists to open, 1..n_lists; ``n_lists`` returns every item.

        Returns:
            int32 item indices, grouped by list (closest list first), no repeats.

        Raises:
            InputError: ``user`` is not a finite (dim,) vector, or ``n_probe`` is not in 1..n_lists.
        """
        if n_probe == self.n_lists and not isinstance(n_probe, bool):
            self.lists(user, n_probe)  # the same checks
            return self.order
        return np.concatenate([self.order[a:b] for a, b in self.spans(user, n_probe)])

    def lists(self, user: np.ndarray, n_probe: int) -> np.ndarray:
        """The ``n_probe`` lists closest to ``user`` (closest first).

        Raises:
            InputError: as :meth:`search`.
        """
        u = np.asarray(user, dtype=np.float32).reshape(-1)
        if u.shape != (self.dim,) or not np.all(np.isfinite(u)):
            raise InputError(
                f"IvfIndex.search: user must be a finite ({self.dim},) vector, got {np.shape(user)}; pass the "
                "encoder's output for one history"
            )
        if isinstance(n_probe, bool) or not isinstance(n_probe, (int, np.integer)) or not 1 <= n_probe <= self.n_lists:
            raise InputError(f"IvfIndex.search: n_probe must be an integer in 1..{self.n_lists}, got {n_probe!r}")
        # |u~ - c|^2 = |u~|^2 - 2 u~.c + |c|^2: the closest lists have the largest u~.c - |c|^2 / 2.
        closeness = self._probe @ u + self._probe_offset
        lists = np.argpartition(closeness, self.n_lists - n_probe)[self.n_lists - n_probe :]
        return lists[np.argsort(-closeness[lists], kind="stable")]

    def spans(self, user: np.ndarray, n_probe: int) -> list[tuple[int, int]]:
        """``(start, stop)`` in :attr:`order` of each list :meth:`lists` opens, closest first.

        With a table stored in list order (:meth:`grouped`), each span is a contiguous block of
        rows: scoring it needs no gather, several times cheaper than ``table[candidates]``.

        Raises:
            InputError: as :meth:`search`.
        """
        return [(int(self.offsets[i]), int(self.offsets[i + 1])) for i in self.lists(user, n_probe)]

    def grouped(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (one per item: a table, a bias) in list order, so :meth:`spans` index it.

        Raises:
            ConfigError: ``rows`` does not hold one entry per item.
        """
        array = np.asarray(rows)
        if len(array) != self.n_items:
            raise ConfigError(f"IvfIndex.grouped: {len(array)} rows for an index of {self.n_items} items")
        return np.ascontiguousarray(array[self.order])

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (an ``.npz``, no pickle); returns the path.

        Raises:
            ConfigError: the file cannot be written.
        """
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                np.savez(
                    f,
                    version=np.int64(INDEX_VERSION),
                    centroids=self.centroids,
                    order=self.order,
                    offsets=self.offsets,
                    max_norm=np.float64(self.max_norm),
                    seed=np.int64(self.seed),
                    iters=np.int64(self.iters),
                )
        except OSError as e:
            raise ConfigError(f"IvfIndex.save: cannot write {target} ({e}); pass a writable path") from e
        return target

    @classmethod
    def load(cls, path: str | Path, *, n_items: int | None = None, dim: int | None = None) -> IvfIndex:
        """Read an index :meth:`save` wrote; ``n_items`` / ``dim``, when given, must match it.

        Raises:
            BundleError: the file cannot be read, holds other arrays, is of another version, its
                arrays are inconsistent, or it does not fit ``n_items`` / ``dim`` (naming the file).
        """
        source = Path(path)
        try:
            with np.load(source, allow_pickle=False) as data:
                if set(data.files) != _KEYS:
                    raise BundleError(
                        f"{source}: holds {sorted(data.files)}, not an IVF index; rebuild it with build_ivf"
                    )
                arrays = {key: data[key] for key in _KEYS}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise BundleError(f"{source}: cannot read the IVF index ({e}); rebuild it with build_ivf") from e
        if int(arrays["version"]) != INDEX_VERSION:
            raise BundleError(f"{source}: IVF index version {int(arrays['version'])}, this SDK reads {INDEX_VERSION}")
        problem = _inconsistency(arrays, n_items, dim)
        if problem:
            raise BundleError(f"{source}: {problem}; rebuild the index for this item table with build_ivf")
        index = _index(arrays, float(arrays["max_norm"]), int(arrays["seed"]), int(arrays["iters"]))
        return index


def build_ivf(
    table: np.ndarray,
    n_lists: int,
    seed: int = 0,
    iters: int = 10,
    *,
    bias: np.ndarray | None = None,
    sample: int | None = None,
) -> IvfIndex:
    """Cluster the items of ``table`` (+ ``bias``) into ``n_lists`` lists for maximum inner product search.

    Args:
        table: float (n_items, dim), the item table the scores use (dequantized).
        n_lists: clusters, 1..n_items; about sqrt(n_items) is the usual start.
        seed: k-means initialisation and training sample.
        iters: Lloyd iterations (>= 1).
        bias: float (n_items,) score bias (rides in the vectors: module doc), or None.
        sample: items k-means trains on (default ``256 * n_lists``, at most all of them).

    Raises:
        ConfigError: the table or bias is not finite or not the right shape, or ``n_lists``,
            ``iters`` or ``sample`` is out of range.
    """
    items = np.asarray(table)
    if items.ndim != 2 or items.shape[0] < 1 or items.dtype.kind != "f" or not np.all(np.isfinite(items)):
        raise ConfigError(
            f"build_ivf: table must be a finite float (n_items, dim) array, got {items.dtype} {items.shape}"
        )
    n = items.shape[0]
    if bias is not None and (np.shape(bias) != (n,) or not np.all(np.isfinite(bias))):
        raise ConfigError(f"build_ivf: bias must be {n} finite numbers, one per item, got shape {np.shape(bias)}")
    for name, value, low, high in (("n_lists", n_lists, 1, n), ("iters", iters, 1, None), ("seed", seed, 0, None)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"build_ivf: {name} must be an integer {bound}, got {value!r}")
    take = min(n, sample if sample is not None else _SAMPLE_PER_LIST * n_lists)
    if isinstance(take, bool) or not isinstance(take, int) or take < n_lists:
        raise ConfigError(f"build_ivf: sample must be an integer >= n_lists ({n_lists}), got {sample!r}")
    augmented, max_norm = _augment(items, bias)
    rng = np.random.default_rng(seed)
    train = augmented if take == n else augmented[np.sort(rng.choice(n, take, replace=False))]
    centroids = _kmeans(train, n_lists, iters, rng)
    labels = _assign(augmented, centroids)
    order = np.argsort(labels, kind="stable").astype(np.int32)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=n_lists))]).astype(np.int64)
    return _index({"centroids": centroids, "order": order, "offsets": offsets}, max_norm, seed, iters)


def _augment(items: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, float]:
    """``[x, b, sqrt(M^2 - |x|^2 - b^2)]`` per item, and ``M``."""
    n = items.shape[0]
    column = np.zeros((n, 1), np.float32) if bias is None else np.asarray(bias, np.float32).reshape(n, 1)
    extended = np.hstack([items.astype(np.float32), column])
    norms2 = np.einsum("ij,ij->i", extended, extended, dtype=np.float64)
    max2 = float(norms2.max())
    slack = np.sqrt(np.maximum(max2 - norms2, 0.0)).astype(np.float32).reshape(n, 1)
    return np.hstack([extended, slack]), float(np.sqrt(max2))


def _kmeans(points: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's algorithm from ``k`` distinct sample points; an emptied cluster restarts at a random point."""
    centroids = points[rng.choice(len(points), k, replace=False)].copy()
    for _ in range(iters):
        labels = _assign(points, centroids)
        counts = np.bincount(labels, minlength=k)
        filled = counts > 0
        # Sorted by cluster, each cluster's rows are one run: reduceat sums them (np.add.at is ~50x slower).
        grouped = points[np.argsort(labels, kind="stable")].astype(np.float64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[filled]
        centroids[filled] = (np.add.reduceat(grouped, starts, axis=0) / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if len(empty):
            centroids[empty] = points[rng.choice(len(points), len(empty), replace=False)]
    return centroids


def _assign(points: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The closest centroid of every point (blocks of rows: memory stays at _CHUNK x k)."""
    half_norms = 0.5 * np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(len(points), np.int64)
    for start in range(0, len(points), _CHUNK):
        block = points[start : start + _CHUNK]
        labels[start : start + len(block)] = np.argmax(block @ centroids.T - half_norms, axis=1)
    return labels


def _index(arrays: dict[str, np.ndarray], max_norm: float, seed: int, iters: int) -> IvfIndex:
    frozen = {}
    for key, dtype in (("centroids", np.float32), ("order", np.int32), ("offsets", np.int64)):
        array = np.ascontiguousarray(arrays[key], dtype=dtype)
        array.flags.writeable = False
        frozen[key] = array
    return IvfIndex(max_norm=max_norm, seed=seed, iters=iters, **frozen)


def _inconsistency(arrays: dict[str, np.ndarray], n_items: int | None, dim: int | None) -> str | None:
    """What is wrong with a loaded index's arrays, or None."""
    c, order, offsets = arrays["centroids"], arrays["order"], arrays["offsets"]
    kinds = (c.dtype.kind, order.dtype.kind, offsets.dtype.kind)
    if kinds != ("f", "i", "i") or c.ndim != 2 or c.shape[1] < 3 or order.ndim != 1:
        return f"centroids {c.dtype} {c.shape} and order {order.dtype} {order.shape} are not an IVF index's"
    if (
        offsets.shape != (c.shape[0] + 1,)
        or offsets[0] != 0
        or offsets[-1] != len(order)
        or np.any(np.diff(offsets) < 0)
    ):
        return f"the list offsets {offsets.shape} do not cover the {len(order)} items of {c.shape[0]} lists in order"
    if not np.array_equal(np.sort(order), np.arange(len(order))):
        return "the lists do not hold every item exactly once"
    if not np.all(np.isfinite(c)):
        return "the centroids hold NaN or inf"
    if n_items is not None and len(order) != n_items:
        return f"the index holds {len(order)} items, the item table {n_items}"
    if dim is not None and c.shape[1] - 2 != dim:
        return f"the index is for {c.shape[1] - 2}-dim vectors, the item table is {dim}-dim"
    return None
