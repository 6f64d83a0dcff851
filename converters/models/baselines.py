"""Recommendation baselines a recsys engineer compares with: popularity, item-kNN and EASE.

One interface for every baseline (ALS lives in :mod:`converters.models.baselines_als`)::

    model = fit_ease(split.train, split.n_items, lam=300.0)
    scores = model.score(histories)  # (len(histories), n_items) float32, higher = better

``train_rows`` and histories are int item-index arrays (:class:`sdk.interactions.Interactions` rows,
:class:`sdk.interaction_splits.EvalCases` histories). Every model reads them as sets: order and
repeats do not count. Scores do NOT exclude the items already in a history; the evaluator does.
An empty history scores every item 0 for item-kNN and EASE (and ALS); popularity scores every
history alike. Cold start is the caller's choice (the Recommender serves popular items).

Fitted models are frozen and their arrays read-only: safe to share across threads; ``score``
allocates its own output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from sdk.errors import ConfigError

# Rows of the item-item matrix densified at a time while pruning to the top-k neighbours:
# bounds memory at _CHUNK x n_items floats for a catalogue of any size.
_CHUNK = 512


class RecModel(Protocol):
    """What every fitted baseline offers (a structural type: no base class to inherit)."""

    @property
    def name(self) -> str: ...

    @property
    def n_items(self) -> int: ...

    @property
    def params(self) -> Mapping[str, Any]: ...

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray: ...


def interaction_matrix(rows: Sequence[np.ndarray], n_items: int, *, what: str = "train_rows") -> sp.csr_matrix:
    """Binary rows x items matrix (float32 CSR): 1 where the row holds the item, repeats counted once.

    Raises:
        ConfigError: ``n_items`` < 1, or a row holds an index outside ``0..n_items-1`` or is not 1-D.
    """
    if n_items < 1:
        raise ConfigError(f"{what}: n_items {n_items} must be at least 1; pass the catalogue size")
    arrays = []
    for number, row in enumerate(rows):
        array = np.asarray(row)
        if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
            raise ConfigError(f"{what}: row {number} is not a 1-D array of item indices (shape {array.shape})")
        outside = array[(array < 0) | (array >= n_items)] if array.size else array
        if outside.size:
            raise ConfigError(
                f"{what}: row {number} holds item index {int(outside[0])} outside 0..{n_items - 1}; "
                "map items through the catalogue the model was fitted on"
            )
        arrays.append(array.astype(np.int32, copy=False))
    lengths = np.fromiter((a.size for a in arrays), np.int64, count=len(arrays))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
    matrix = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(arrays), n_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0  # a repeated item is still one interaction
    return matrix


def check_train(train_rows: Sequence[np.ndarray], n_items: int, model: str) -> sp.csr_matrix:
    """The training matrix, refusing an empty training set.

    Raises:
        ConfigError: no rows, no interactions, or a bad row (see :func:`interaction_matrix`).
    """
    matrix = interaction_matrix(train_rows, n_items, what=f"{model} train_rows")
    if matrix.nnz == 0:
        raise ConfigError(f"{model}: train_rows hold no interactions; fit on at least one non-empty row")
    return matrix


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # fitted state is shared across threads: nobody may write it
    return array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Popularity:
    """Scores every item by how many training rows hold it, whatever the history.

    Attributes:
        counts: rows holding each item (float32, length ``n_items``).
    """

    counts: np.ndarray
    name: str = "popularity"

    @property
    def n_items(self) -> int:
        return int(self.counts.size)

    @property
    def params(self) -> Mapping[str, Any]:
        return {}

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """The counts, one row per history.

        Raises:
            ConfigError: a history holds an index outside the catalogue.
        """
        interaction_matrix(histories, self.n_items, what="popularity histories")
        return np.tile(self.counts, (len(histories), 1))


def fit_popularity(train_rows: Sequence[np.ndarray], n_items: int) -> Popularity:
    """Count the rows holding each item.

    Raises:
        ConfigError: ``n_items`` < 1, no interactions, or a row holds an index outside the catalogue.
    """
    matrix = check_train(train_rows, n_items, "popularity")
    return Popularity(counts=_frozen(np.asarray(matrix.sum(axis=0), np.float32).ravel()))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ItemKnn:
    """Item-kNN: score = sum over the history's items of their cosine similarity to each item.

    Attributes:
        similarity: item x item CSR (float32), zero diagonal; row ``h`` holds item ``h``'s neighbours.
        neighbours: neighbours kept per item (None: all).
        shrink: added to the cosine's denominator, damping pairs seen in few rows.
    """

    similarity: sp.csr_matrix
    neighbours: int | None
    shrink: float
    name: str = "item-knn"

    @property
    def n_items(self) -> int:
        return int(self.similarity.shape[0])

    @property
    def params(self) -> Mapping[str, Any]:
        return {"neighbours": self.neighbours, "shrink": self.shrink}

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """Sum of the similarities from each history item.

        Raises:
            ConfigError: a history holds an index outside the catalogue.
        """
        history = interaction_matrix(histories, self.n_items, what="item-knn histories")
        return np.asarray((history @ self.similarity).toarray(), np.float32)


def fit_item_knn(
    train_rows: Sequence[np.ndarray], n_items: int, *, neighbours: int | None = None, shrink: float = 0.0
) -> ItemKnn:
    """Cosine similarity of item co-occurrence over binary rows, optionally pruned to the top-k.

    ``sim(i, j) = c_ij / (sqrt(c_ii * c_jj) + shrink)`` with ``c`` the co-occurrence counts. With
    ``neighbours=k`` each item keeps its k most similar items, so each history item votes for its
    k nearest neighbours only.

    Raises:
        ConfigError: ``neighbours`` < 1, ``shrink`` < 0, or bad training rows.
    """
    if neighbours is not None and neighbours < 1:
        raise ConfigError(f"item-knn: neighbours {neighbours} must be at least 1, or None to keep all")
    if not shrink >= 0:
        raise ConfigError(f"item-knn: shrink {shrink} must be >= 0 (0 is the plain cosine)")
    matrix = check_train(train_rows, n_items, "item-knn")
    cooc = (matrix.T @ matrix).tocoo()
    norms = np.sqrt(cooc.diagonal().astype(np.float64))
    off = cooc.row != cooc.col
    rows, cols = cooc.row[off], cooc.col[off]
    values = cooc.data[off] / (norms[rows] * norms[cols] + shrink)
    similarity = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n_items, n_items))
    if neighbours is not None and neighbours < n_items - 1:
        similarity = _top_k_rows(similarity, neighbours)
    similarity.sort_indices()
    for array in (similarity.data, similarity.indices, similarity.indptr):
        _frozen(array)
    return ItemKnn(similarity=similarity, neighbours=neighbours, shrink=float(shrink))


def _top_k_rows(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of each row (ties broken by item index)."""
    kept_rows, kept_cols, kept_values = [], [], []
    for start in range(0, matrix.shape[0], _CHUNK):
        block = matrix[start : start + _CHUNK].toarray()
        # stable sort of -values: among equal similarities the lower item index wins, on any machine
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        values = np.take_along_axis(block, order, axis=1)
        keep = values > 0
        kept_rows.append(np.nonzero(keep)[0] + start)
        kept_cols.append(order[keep])
        kept_values.append(values[keep])
    return sp.csr_matrix(
        (np.concatenate(kept_values), (np.concatenate(kept_rows), np.concatenate(kept_cols))), shape=matrix.shape
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ease:
    """EASE (Steck 2019): a linear item-item model with a zero diagonal, fitted in closed form.

    Attributes:
        weights: B over the items seen in training (float32, ``len(active)`` squared).
        active: the item indices B covers; an item never seen in training scores 0.
        items: the catalogue size (``n_items``), seen in training or not.
        lam: the L2 penalty B was fitted with.
    """

    weights: np.ndarray
    active: np.ndarray
    items: int
    lam: float
    name: str = "ease"

    @property
    def n_items(self) -> int:
        return self.items

    @property
    def params(self) -> Mapping[str, Any]:
        return {"lam": self.lam}

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """``x_history @ B``, 0 for items never seen in training.

        Raises:
            ConfigError: a history holds an index outside the catalogue.
        """
        history = interaction_matrix(histories, self.n_items, what="ease histories")
        scores = np.zeros((len(histories), self.n_items), np.float32)
        scores[:, self.active] = history[:, self.active] @ self.weights
        return scores


def fit_ease(train_rows: Sequence[np.ndarray], n_items: int, *, lam: float = 300.0) -> Ease:
    """``B = I - P diag(1/diag(P))`` with ``P = (X^T X + lam I)^-1``, so ``diag(B) = 0``.

    Only the items seen in training enter the inverse (the others would get a zero row and column
    anyway), and it is taken in float64: ``X^T X`` of a popular item is in the thousands.

    Raises:
        ConfigError: ``lam`` <= 0, or bad training rows.
    """
    if not lam > 0:
        raise ConfigError(f"ease: lam {lam} must be > 0 (it keeps X^T X + lam I invertible); try 200-500")
    matrix = check_train(train_rows, n_items, "ease")
    active = np.flatnonzero(np.asarray(matrix.sum(axis=0)).ravel() > 0)
    x = matrix[:, active]
    gram = np.asarray((x.T @ x).toarray(), np.float64)
    gram[np.diag_indices_from(gram)] += lam
    weights = np.linalg.inv(gram)
    del gram  # a MovieLens-sized Gram matrix is ~0.8 GB: free it before B is built
    # in place, column j divided by -P_jj (the diagonal copied first: it is overwritten as we go)
    weights /= -np.diag(weights).copy()
    weights[np.diag_indices_from(weights)] = 0.0
    return Ease(weights=_frozen(weights.astype(np.float32)), active=_frozen(active), items=n_items, lam=float(lam))
