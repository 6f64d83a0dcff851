"""Training examples of the recommendation student, and the teacher's soft targets for them, cached.

- Sequences: every position of a training history predicts its item from the items before it (at
  most ``window`` of them): one example per interaction but the first.
- Baskets: every item of a training basket of two or more items is hidden once, predicted from the
  rest: one example per item.

The teacher scores every example once; its ``top_k`` best items not already in the history, with
their logits, are kept (``np.savez`` in the output folder, keyed by the teacher's file hash, the
data hash, ``top_k`` and the window), so a second student, or a rerun, never runs the teacher again.
A full MovieLens table (98k examples x 9.7k items) would be 3.8 GB; the top 128 hold nearly all of
the softened mass and take 100 MB.

Pure functions over numpy arrays (the teacher is only read): safe to call from several threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.models.sasrec import pad_histories
from converters.training.recommender_data import split_hash
from sdk.errors import ConfigError
from sdk.interaction_splits import RecSplit
from sdk.progress import Log

__all__ = ["SoftTargets", "student_examples", "teacher_soft_targets"]

_BATCH = 256
# Below every real logit, finite so that softmax over a row with excluded items stays defined.
_EXCLUDED = -1e9

SoftTargets = tuple[np.ndarray, np.ndarray]
"""(indices (N, k) int32, teacher logits (N, k) float32), best first."""


def student_examples(split: RecSplit, window: int) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """(histories, targets) of every training example of ``split`` (see the module docstring).

    Raises:
        ConfigError: ``window`` < 1, or no history/basket of two or more items to learn from.
    """
    if window < 1:
        raise ConfigError(f"student_examples: window must be >= 1, got {window}")
    histories: list[np.ndarray] = []
    targets: list[int] = []
    sequences = split.interactions.kind == "sequences"
    for row in split.train:
        row = np.asarray(row, np.int32)
        if len(row) < 2:
            continue
        for position in range(1 if sequences else 0, len(row)):
            history = row[max(0, position - window) : position] if sequences else np.delete(row, position)
            histories.append(history[-window:])
            targets.append(int(row[position]))
    if not targets:
        raise ConfigError(
            f"{split.interactions.source}: nothing to train the student on; it needs histories or baskets of 2+ items"
        )
    return tuple(histories), np.asarray(targets, np.int32)


def teacher_soft_targets(
    teacher: Any,
    teacher_max_len: int,
    histories: Sequence[np.ndarray],
    *,
    top_k: int,
    cache_dir: Path,
    cache_key: str,
    log: Log,
) -> SoftTargets:
    """The teacher's ``top_k`` items (history excluded) and logits for every history, computed once.

    Args:
        teacher: a Keras model ``history (batch, teacher_max_len) -> scores (batch, n_items)``.
        teacher_max_len: the teacher's window.
        histories: the examples' histories (item indices).
        top_k: how many of the best items to keep per example (capped at the catalogue size).
        cache_dir: where ``teacher_top{k}_<key>.npz`` is kept.
        cache_key: identifies the teacher and the data (see :func:`soft_target_key`).
        log: progress lines.

    Raises:
        ConfigError: ``top_k`` < 1, or the teacher's scores are not finite.
    """
    import tensorflow as tf

    if top_k < 1:
        raise ConfigError(f"teacher_soft_targets: top_k must be >= 1, got {top_k}")
    n_items = int(teacher.output_shape[-1])
    k = min(top_k, n_items)
    path = cache_dir / f"teacher_top{k}_{cache_key[:16]}.npz"
    if path.is_file():
        with np.load(path) as cached:
            if cached["indices"].shape == (len(histories), k):
                log(f"[rec-distill] reusing the teacher's soft targets {path}")
                return cached["indices"], cached["logits"]
    infer = tf.function(lambda batch: teacher(batch, training=False), reduce_retracing=True)
    indices = np.empty((len(histories), k), np.int32)
    logits = np.empty((len(histories), k), np.float32)
    for start in range(0, len(histories), _BATCH):
        batch = histories[start : start + _BATCH]
        scores = np.array(infer(tf.constant(pad_histories(batch, teacher_max_len))), np.float32)
        if not np.isfinite(scores).all():
            raise ConfigError("teacher_soft_targets: the teacher gave non-finite scores; retrain it")
        rows = np.repeat(np.arange(len(batch)), [len(h) for h in batch])
        if rows.size:
            scores[rows, np.concatenate(batch)] = _EXCLUDED  # never a target: items already in the history
        top = (
            np.argpartition(-scores, k - 1, axis=1)[:, :k]
            if k < n_items
            else np.tile(np.arange(n_items), (len(batch), 1))
        )
        values = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-values, axis=1, kind="stable")
        indices[start : start + len(batch)] = np.take_along_axis(top, order, axis=1)
        logits[start : start + len(batch)] = np.take_along_axis(values, order, axis=1)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, indices=indices, logits=logits)
    partial.replace(path)
    log(f"[rec-distill] teacher scored {len(histories):,} training examples; top {k} kept in {path}")
    return indices, logits


def soft_target_key(teacher_path: Path | None, teacher_id: str, split: RecSplit, window: int) -> str:
    """sha256 of the teacher (its file's bytes, else ``teacher_id``), the data and the window."""
    digest = hashlib.sha256()
    if teacher_path is not None and teacher_path.is_file():
        digest.update(teacher_path.read_bytes())
    else:
        digest.update(teacher_id.encode("utf-8"))
    digest.update(f"\0{split_hash(split)}\0{window}".encode())
    return digest.hexdigest()
