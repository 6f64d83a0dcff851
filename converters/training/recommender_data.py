"""Training examples and validation ranking for the recommendation teacher.

- Sequences: every position of a history predicts the next item (SASRec). A user's training history
  is cut, from its newest end, into windows of ``max_len`` inputs; each window's targets are the
  same items shifted by one, so every interaction but the first is a target exactly once per epoch.
- Baskets: for each training basket of two or more items, one item drawn afresh every epoch is
  hidden and predicted from the rest.
- Validation: the shared evaluator (``sdk.qa.ranking``): full ranking, items already in the
  history excluded, HR@10, NDCG@10 and MRR.

Pure functions over numpy arrays: safe to call from several threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from converters.models.sasrec import pad_histories
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases, RecSplit
from sdk.qa.ranking import HIT_K, rank_cases

__all__ = [
    "NO_TARGET",
    "K",
    "basket_examples",
    "evaluate_model",
    "predict_scores",
    "sequence_windows",
    "split_hash",
]

# Marks a position of a sequence window that has no target (padding).
NO_TARGET = -1
# The cut-off of the validation metrics early stopping reads (HR@10, NDCG@10).
K = HIT_K  # the cut-off of HR@K and NDCG@K (the shared evaluator's)
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


def evaluate_model(model: Any, cases: EvalCases, max_len: int, k: int = K) -> dict[str, float]:
    """HR@10, NDCG@10 and MRR of ``model`` on ``cases`` through the shared evaluator.

    Full ranking with the history's items excluded and ties counted against the target
    (:func:`sdk.qa.ranking.rank_cases`), so training picks epochs on the numbers reports show.

    Raises:
        ConfigError: ``k`` is not 10 (the evaluator's cut-off), or the scores are not finite.
    """
    if k != K:
        raise ConfigError(f"evaluate_model: k={k}; the shared evaluator reports HR and NDCG at {K}")
    n_items = int(model.output_shape[-1])
    ranked = rank_cases(lambda histories: predict_scores(model, histories, max_len), cases, n_items, name=model.name)
    per_case = ranked.per_case()
    return {name: float(per_case[name].mean()) for name in (f"hr@{K}", f"ndcg@{K}", "mrr")}


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
