"""The student's training loop: labels and (optionally) the teacher's top-k soft targets, best epoch kept.

Why not :func:`~converters.training.loop.train_loop`: it casts inputs to float and distils the whole
output row; here the inputs are item indices and the teacher's distribution is given only over its
top ``k`` items per example (gathered from the student's logits). Its optimizer, progress lines and
timing helpers are reused. Each epoch visits every example once in a new seeded order and is
scored on validation NDCG@10; the best epoch's weights are left in the model.

Not thread-safe: one call trains one model in place.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from converters.models.rec_student import RecStudent, StudentConfig
from converters.models.sasrec import pad_histories
from converters.training.loop import Log, RateLog, format_seconds, make_optimizer
from converters.training.rec_distill_data import SoftTargets
from converters.training.recommender_data import K
from sdk.interaction_splits import RecSplit
from sdk.qa.ranking import rank_cases

__all__ = ["fit_student", "validation_metrics"]


def fit_student(
    encoder: Any,
    model: Any,
    student_config: StudentConfig,
    split: RecSplit,
    histories: tuple[np.ndarray, ...],
    targets: np.ndarray,
    soft: SoftTargets | None,
    config: Any,
    log: Log,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train ``model`` for ``config.epochs``; leave the best validation epoch's weights. (history, best).

    ``config`` is a :class:`~converters.training.rec_distill.DistillRecConfig` (epochs, batch_size,
    lr, weight_decay, alpha, temperature, seed).
    """
    x_all = pad_histories(histories, student_config.max_len)
    n = len(targets)
    batch = min(config.batch_size, n)
    steps = -(-n // batch)
    optimizer = make_optimizer(config.lr, steps * max(config.epochs, 1), steps // 2, config.weight_decay)
    step = _train_step(model, optimizer, config.alpha, config.temperature)
    rng = np.random.default_rng(config.seed)
    label = "rec-distill" if config.alpha else "rec-student"

    def evaluate() -> dict[str, float]:
        return validation_metrics(RecStudent.from_models(encoder, model, student_config), split)

    best: dict[str, float] = {"epoch": 0} | evaluate()
    best_weights = model.get_weights()
    history: list[dict[str, float]] = []
    progress = RateLog(log, label, steps * config.epochs, unit="step")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(n)
        losses = []
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            soft_idx, soft_logits = (soft[0][idx], soft[1][idx]) if soft is not None else (None, None)
            losses.append(float(step(x_all[idx], targets[idx], soft_idx, soft_logits)))
            progress.advance(1)
        record = {"epoch": epoch, "loss": float(np.mean(losses))} | evaluate()
        record["seconds"] = round(time.perf_counter() - started, 1)
        history.append(record)
        improved = record[f"ndcg@{K}"] > best[f"ndcg@{K}"]
        log(
            f"  {label} epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}, val HR@{K} "
            f"{record[f'hr@{K}']:.4f}, NDCG@{K} {record[f'ndcg@{K}']:.4f}{' *' if improved else ''} "
            f"({format_seconds(record['seconds'])})"
        )
        if improved:
            best = {key: record[key] for key in ("epoch", f"hr@{K}", f"ndcg@{K}", "mrr")}
            best_weights = model.get_weights()
    model.set_weights(best_weights)
    return history, best


def validation_metrics(student: RecStudent, split: RecSplit) -> dict[str, float]:
    """HR@10, NDCG@10 and MRR of ``student`` on ``split.valid`` through the shared evaluator."""
    ranked = rank_cases(student.score, split.valid, split.n_items, name="student")
    per_case = ranked.per_case()
    return {name: float(per_case[name].mean()) for name in (f"hr@{K}", f"ndcg@{K}", "mrr")}


def _train_step(model: Any, optimizer: Any, alpha: float, temperature: float) -> Any:
    """One step of ``alpha T^2 KL(teacher_topk || student_topk) + (1 - alpha) CE(label)``."""
    import tensorflow as tf

    variables = model.trainable_variables

    def loss_of(x: Any, y: Any, soft_idx: Any, soft_logits: Any) -> Any:
        logits = model(x, training=True)
        hard = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        if soft_idx is None:
            return hard
        # The teacher's distribution over its top-k items; the student's logits of the same items.
        s = tf.gather(logits, soft_idx, batch_dims=1) / temperature
        t = soft_logits / temperature
        kl = tf.reduce_sum(tf.nn.softmax(t) * (tf.nn.log_softmax(t) - tf.nn.log_softmax(s)), axis=-1)
        return alpha * temperature**2 * tf.reduce_mean(kl) + (1.0 - alpha) * hard

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, soft_idx: Any = None, soft_logits: Any = None) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_of(x, y, soft_idx, soft_logits)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    def run(x: np.ndarray, y: np.ndarray, soft_idx: np.ndarray | None, soft_logits: np.ndarray | None) -> Any:
        if soft_idx is None:
            return step(tf.constant(x), tf.constant(y))
        return step(tf.constant(x), tf.constant(y), tf.constant(soft_idx), tf.constant(soft_logits))

    return run
