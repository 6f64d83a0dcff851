"""The recommendation teacher ("server model"): SASRec-style self-attention, trained on the CPU in minutes.

Sequences (MovieLens) learn the next-item objective at every position of each window; baskets
learn to name one hidden item from the rest. Both use full softmax cross-entropy over the whole
catalogue (9.7k items is cheap enough on a CPU that sampled softmax would only add noise), AdamW
with the converters' warm-up + cosine schedule (:func:`~converters.training.loop.make_optimizer`),
and early stopping on validation NDCG@10 from a plain numpy full ranking that excludes the history;
the best epoch's weights are the ones saved.

Why not :func:`~converters.training.loop.train_loop`: it casts inputs to float, scores one label per
input (the sequence objective has one per position, padding masked out) and has no early stop.
Its optimizer, progress lines and stage timer are reused.

A finished run is reused when ``teacher.json`` records the same config hash and data hash and
``teacher.keras`` exists.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converters.models.config_checks import check_fields, config_hash
from converters.models.sasrec import SEQUENCE_OUTPUT, SasRecConfig, build_sasrec, macs_per_request
from converters.training.loop import Log, RateLog, StageTimer, format_seconds, make_optimizer
from converters.training.recommender_data import K, basket_examples, evaluate_model, sequence_windows, split_hash
from sdk.errors import ConfigError
from sdk.interaction_splits import RecSplit
from sdk.versions import host_info, tool_versions

__all__ = ["TeacherRecConfig", "TeacherRecResult", "train_recommender_teacher"]

MODEL_FILE = "teacher.keras"
REPORT_FILE = "teacher.json"
SCHEMA_VERSION = 1
_K = K


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherRecConfig:
    """Everything that decides the trained recommendation teacher (and so its config hash). Immutable.

    Attributes:
        max_len, dim, blocks, heads, ffn_mult, dropout, pooling: the architecture
            (:class:`~converters.models.sasrec.SasRecConfig`; ``pooling`` is for baskets only).
        epochs: the most epochs; training stops earlier after ``patience`` epochs without a better
            validation NDCG@10.
        batch_size: windows (sequences) or baskets per step.
        lr: peak learning rate (warm-up over half an epoch, cosine decay over ``epochs``).
        weight_decay: AdamW decoupled weight decay (not on layer-norm scales/offsets or biases).
        patience: epochs without improvement before stopping (0: never stop early).
        seed: weights, batch order and hidden basket items.
    """

    max_len: int = 50
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    ffn_mult: int = 1
    dropout: float = 0.2
    pooling: Literal["mean", "query"] = "mean"
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    patience: int = 5
    seed: int = 0

    def model_config(self, n_items: int, kind: Literal["sequences", "baskets"]) -> SasRecConfig:
        return SasRecConfig(
            n_items=n_items,
            kind=kind,
            max_len=self.max_len,
            dim=self.dim,
            blocks=self.blocks,
            heads=self.heads,
            ffn_mult=self.ffn_mult,
            dropout=self.dropout,
            pooling=self.pooling,
            seed=self.seed,
        )

    def validate(self) -> None:
        """Raises:
        ConfigError: names the first bad field, its value and what is allowed.
        """
        self.model_config(1, "sequences").validate()
        checks = (
            ("epochs", self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("patience", self.patience >= 0, ">= 0"),
        )
        check_fields(self, checks)

    def hash(self) -> str:
        return config_hash(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherRecResult:
    """What :func:`train_recommender_teacher` produced (or found already produced). Immutable."""

    model_path: Path
    report_path: Path
    kind: str
    params: int
    macs_per_request: int
    best_epoch: int
    val_hr10: float
    val_ndcg10: float
    train_seconds: float
    cached: bool
    config_hash: str
    data_hash: str


def train_recommender_teacher(
    split: RecSplit,
    config: TeacherRecConfig,
    out_dir: str | os.PathLike,
    log: Log = print,
    *,
    force: bool = False,
) -> TeacherRecResult:
    """Train (or reuse) the self-attention teacher on ``split``; write ``teacher.keras`` and ``teacher.json``.

    ``teacher.json`` is written last, so its presence means a complete run. It holds the config,
    the per-epoch loss and validation metrics, the best epoch, train seconds, parameters and MACs
    per request.

    Args:
        split: the training rows and validation cases (the test cases are not read).
        config: the recipe.
        out_dir: output directory (created).
        log: receives progress lines.
        force: train again even when a matching finished run is in ``out_dir``.

    Raises:
        ConfigError: the config is invalid, or the split has nothing to train on (no history of two
            items, no basket of two items) or no validation case.
    """
    config.validate()
    out = Path(out_dir)
    data_sha, config_sha = split_hash(split), config.hash()
    cached = None if force else _finished_run(out, config_sha, data_sha)
    if cached is not None:
        log(f"[rec-teacher] reusing {out / MODEL_FILE}: same config ({config_sha[:12]}) and data ({data_sha[:12]})")
        return _result(out, cached, cached=True)
    if not len(split.valid):
        raise ConfigError(f"{split.interactions.source}: no validation cases; the teacher's early stop needs them")
    timed = StageTimer(log, "[rec-teacher]")
    model_config = config.model_config(split.n_items, split.interactions.kind)
    model = timed("build", lambda: build_sasrec(model_config))
    log(
        f"[rec-teacher] {split.interactions.kind} model: dim {config.dim}, {config.blocks} block(s), "
        f"window {config.max_len}, {model.count_params():,} parameters; {split.describe()}"
    )
    history, best = timed("train", lambda: _fit(model, split, config, log))
    out.mkdir(parents=True, exist_ok=True)
    partial = out / f".{MODEL_FILE}.partial.keras"
    model.save(partial)
    partial.replace(out / MODEL_FILE)
    report = {
        "schema_version": SCHEMA_VERSION,
        "model": MODEL_FILE,
        "kind": split.interactions.kind,
        "config": dataclasses.asdict(config),
        "config_hash": config_sha,
        "data_hash": data_sha,
        "data": {"source": split.interactions.source, "split": split.describe(), "n_items": split.n_items},
        "params": int(model.count_params()),
        "macs_per_request": macs_per_request(model_config),
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "val": {key: value for key, value in best.items() if key != "epoch"} | {"cases": len(split.valid)},
        "history": history,
        "train_seconds": round(timed.seconds, 1),
        "timings_s": timed.timings,
        "host": host_info(),
        "tool_versions": tool_versions(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(
        f"[rec-teacher] best epoch {best['epoch']}: val HR@{_K} {best[f'hr@{_K}']:.4f}, "
        f"NDCG@{_K} {best[f'ndcg@{_K}']:.4f} ({len(split.valid):,} cases); "
        f"trained in {format_seconds(report['train_seconds'])}; wrote {out / REPORT_FILE}"
    )
    return _result(out, report, cached=False)


def _fit(
    model: Any, split: RecSplit, config: TeacherRecConfig, log: Log
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Train with early stopping; leave the best epoch's weights in ``model``. (history, best record)."""
    rng = np.random.default_rng(config.seed)
    sequences = split.interactions.kind == "sequences"
    windows = sequence_windows(split.train, config.max_len) if sequences else None
    n = len(windows[0]) if windows is not None else sum(len(r) >= 2 for r in split.train)
    if n == 0:
        raise ConfigError(
            f"{split.interactions.source}: nothing to train on; the teacher needs histories or baskets of 2+ items"
        )
    batch = min(config.batch_size, n)
    steps = -(-n // batch)
    optimizer = make_optimizer(config.lr, steps * config.epochs, steps // 2, config.weight_decay)
    step = _sequence_step(model, optimizer) if sequences else _basket_step(model, optimizer)
    history: list[dict[str, float]] = []
    best: dict[str, float] = {"epoch": 0} | evaluate_model(model, split.valid, config.max_len)
    best_weights = model.get_weights()
    progress = RateLog(log, "rec-teacher", steps * config.epochs, unit="step")
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        x, y = windows if windows is not None else basket_examples(split.train, config.max_len, rng)
        order = rng.permutation(len(x))
        losses = []
        for s in range(steps):
            idx = order[s * batch : (s + 1) * batch]
            losses.append(float(step(x[idx], y[idx])))
            progress.advance(1)
        record = {"epoch": epoch, "loss": float(np.mean(losses))} | evaluate_model(model, split.valid, config.max_len)
        record["seconds"] = round(time.perf_counter() - started, 1)
        history.append(record)
        improved = record[f"ndcg@{_K}"] > best[f"ndcg@{_K}"]
        log(
            f"  rec-teacher epoch {epoch}/{config.epochs}: loss {record['loss']:.3f}, val HR@{_K} "
            f"{record[f'hr@{_K}']:.4f}, NDCG@{_K} {record[f'ndcg@{_K}']:.4f}{' *' if improved else ''} "
            f"({format_seconds(record['seconds'])})"
        )
        if improved:
            best = {key: record[key] for key in ("epoch", f"hr@{_K}", f"ndcg@{_K}", "mrr")}
            best_weights = model.get_weights()
        elif config.patience and epoch - best["epoch"] >= config.patience:
            log(f"  rec-teacher: no better validation NDCG@{_K} for {config.patience} epochs; stopping")
            break
    model.set_weights(best_weights)
    return history, best


def _sequence_step(model: Any, optimizer: Any) -> Any:
    """One gradient step of the all-positions next-item objective, padding positions left out."""
    import keras
    import tensorflow as tf

    hidden_model = keras.Model(model.input, model.get_layer(SEQUENCE_OUTPUT).output)
    items = model.get_layer("item_embedding")
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            hidden = hidden_model(x, training=True)
            real = tf.greater_equal(y, 0)
            # Scoring only the real positions saves the padding's share of the (positions x items) logits.
            logits = items(tf.boolean_mask(hidden, real), reverse=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.boolean_mask(y, real), logits=logits)
            )
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return lambda x, y: step(tf.constant(x), tf.constant(y))


def _basket_step(model: Any, optimizer: Any) -> Any:
    """One gradient step of hidden-item prediction for baskets."""
    import tensorflow as tf

    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any) -> Any:
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    return lambda x, y: step(tf.constant(x), tf.constant(y))


def _finished_run(out: Path, config_sha: str, data_sha: str) -> dict[str, Any] | None:
    try:
        report = json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    same = report.get("config_hash") == config_sha and report.get("data_hash") == data_sha
    return report if same and (out / MODEL_FILE).is_file() else None


def _result(out: Path, report: dict[str, Any], *, cached: bool) -> TeacherRecResult:
    val = report["val"]
    return TeacherRecResult(
        model_path=out / MODEL_FILE,
        report_path=out / REPORT_FILE,
        kind=report["kind"],
        params=int(report["params"]),
        macs_per_request=int(report["macs_per_request"]),
        best_epoch=int(report["best_epoch"]),
        val_hr10=float(val[f"hr@{_K}"]),
        val_ndcg10=float(val[f"ndcg@{_K}"]),
        train_seconds=float(report["train_seconds"]),
        cached=cached,
        config_hash=report["config_hash"],
        data_hash=report["data_hash"],
    )
