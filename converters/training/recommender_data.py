"""Training examples and validation ranking for the recommendation teacher.

- Sequences: every position of a history predicts the next item (SASRec). A user's training history
  is cut, from its newest end, into windows of ``max_len`` inputs; each window's targets are the
  same items shifted by one, so every interaction but the first is a target exactly once per epoch.
- Baskets: for each training basket of two or more items, one item drawn afresh every epoch is
  hidden and predicted from the rest.
- Validation: a plain numpy full ranking, items already in the history excluded, giving HR@k,
  NDCG@k and MRR.

Pure functions over numpy arrays: safe to call from several threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.models.sasrec import pad_histories
from sdk.interaction_splits import EvalCases, RecSplit

__all__ = [
    "NO_TARGET",
    "K",
    "basket_examples",
    "evaluate_model",
    "predict_scores",
    "rank_metrics",
    "ranks",
    "sequence_windows",
    "split_hash",
]

# Marks a position of a sequence window that has no target (padding).
NO_TARGET = -1
# The cut-off of the validation metrics early stopping reads (HR@10, NDCG@10).
K = 10
_EVAL_BATCH = 256


def sequence_windows(rows: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Every history as next-item windows: (inputs (W, max_len) int32 as the model takes them, targets).

    ``targets[w, p]`` is the item index (0-based) that follows input position ``p``, or
    :data:`NO_TARGET` where the position is padding. Histories of one item give no window.
    """
    inputs: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    for row in rows:
        row = np.asarray(row, np.int32)
        end = len(row) - 1  # the last item is only ever a target
        while end >= 1:
            start = max(0, end - max_len)
            inputs.append(row[start:end])
            targets.append(row[start + 1 : end + 1])
            end = start
    x = pad_histories(inputs, max_len)
    y = np.full(x.shape, NO_TARGET, np.int32)
    for w, target in enumerate(targets):
        y[w, max_len - len(target) :] = target
    return x, y


def basket_examples(
    rows: Sequence[np.ndarray], max_len: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One example per basket of two or more items: (the other items as model input, the hidden item).

    The hidden item is drawn with ``rng``, so each epoch hides a different one.
    """
    histories: list[np.ndarray] = []
    targets: list[int] = []
    for row in rows:
        if len(row) < 2:
            continue
        hidden = int(rng.integers(len(row)))
        histories.append(np.delete(row, hidden))
        targets.append(int(row[hidden]))
    return pad_histories(histories, max_len), np.asarray(targets, np.int32)


def ranks(scores: np.ndarray, histories: Sequence[np.ndarray], targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among the items not in its history (ties count against it).

    The target itself is never excluded, even if it also appears in the history.
    """
    scores = np.array(scores, np.float64, copy=True)
    for i, history in enumerate(histories):
        seen = np.asarray(history, np.int64)
        scores[i, seen[seen != targets[i]]] = -np.inf
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    # A NaN score (a broken model) must not rank first: it counts as beaten by everything.
    target_scores = np.where(np.isnan(target_scores), -np.inf, target_scores)
    beaten_by = (scores > target_scores).sum(axis=1) + ((scores == target_scores).sum(axis=1) - 1)
    return beaten_by.astype(np.int64)


def rank_metrics(rank: np.ndarray, k: int = K) -> dict[str, float]:
    """HR@k, NDCG@k (one relevant item) and MRR from 0-based ranks; empty input gives zeros."""
    if not len(rank):
        return {f"hr@{k}": 0.0, f"ndcg@{k}": 0.0, "mrr": 0.0}
    hit = rank < k
    return {
        f"hr@{k}": float(hit.mean()),
        f"ndcg@{k}": float(np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0).mean()),
        "mrr": float((1.0 / (rank + 1.0)).mean()),
    }


def evaluate_model(model: Any, cases: EvalCases, max_len: int, k: int = K) -> dict[str, float]:
    """HR@k, NDCG@k and MRR of ``model`` on ``cases``: full ranking, history items excluded."""
    scores = predict_scores(model, cases.histories, max_len)
    return rank_metrics(ranks(scores, cases.histories, cases.targets), k)


def predict_scores(model: Any, histories: Any, max_len: int) -> np.ndarray:
    """(N, n_items) float32 scores of ``model`` for item-index histories, in inference mode."""
    import tensorflow as tf

    x = pad_histories(histories, max_len)
    infer = tf.function(lambda batch: model(batch, training=False), reduce_retracing=True)
    parts = [np.asarray(infer(tf.constant(x[i : i + _EVAL_BATCH]))) for i in range(0, len(x), _EVAL_BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def split_hash(split: RecSplit) -> str:
    """sha256 over what training reads: kind, catalogue ids, training rows and validation cases."""
    digest = hashlib.sha256()
    data = split.interactions
    digest.update(f"{data.kind}\0{data.n_items}\0".encode())
    digest.update("\0".join(data.catalogue.ids).encode("utf-8"))
    for row in split.train:
        digest.update(np.int64(len(row)).tobytes() + np.asarray(row, np.int32).tobytes())
    _hash_cases(digest, split.valid)
    return digest.hexdigest()


def _hash_cases(digest: hashlib._Hash, cases: EvalCases) -> None:
    for history in cases.histories:
        digest.update(np.int64(len(history)).tobytes() + np.asarray(history, np.int32).tobytes())
    digest.update(np.asarray(cases.targets, np.int32).tobytes())
