"""The on-device recommendation student: a small history encoder plus an item table.

The student is split in two, because that is what a device runs:
- an **encoder** Keras model: ``history`` (batch, max_len) int32, item index + 1 (0 = padding,
  left-padded, newest last: :func:`~converters.models.sasrec.pad_histories`) -> ``user``
  (batch, dim) float32;
- an **item table** (n_items, dim) float32 and an optional **item bias** (n_items,) float32.

Scores are ``user @ table.T + bias``; the runtime (or numpy) does that product and the top-k, so the
table can be quantized and filtered on its own. Encoder shapes (:data:`SHAPES`):

- ``mean``: masked mean of the history's item embeddings (order-free);
- ``recency``: a masked softmax over learned per-position weights (counted from the newest item):
  a learned recency curve; order-free for baskets, where it falls back to the mean;
- ``attention``: one learned query attends over the items (plus the recency weights for sequences);
- ``last_query``: the newest item, projected, is the query (sequences: "what follows this?");
- ``gru``: a GRU over the embeddings, padding skipped, unrolled (exports as plain ops).

Each shape may add a ``dim x dim`` projection of the pooled vector (``projection``), which lets the
user space differ from the item space when the table is tied to the input embedding (``tied``).
The graph keeps to Gather, Dense/MatMul, comparisons, softmax and (GRU) unrolled cells, so TF
SavedModel, LiteRT, OpenVINO and ONNX can take it. The custom layers are registered for ``.keras``.

:class:`RecStudent` is immutable; its ``score`` runs the Keras encoder in inference mode, which is
safe from several threads at once (the model is never trained through it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
from keras import ops

from converters.models.config_checks import check_fields
from converters.models.sasrec import INPUT_NAME, PaddingMask, TiedItemEmbedding, pad_histories
from sdk.errors import ConfigError

__all__ = [
    "INPUT_NAME",
    "SHAPES",
    "USER_NAME",
    "RecStudent",
    "StudentConfig",
    "build_student",
    "student_macs",
]

USER_NAME = "user"
SHAPES = ("mean", "recency", "attention", "last_query", "gru")
Shape = Literal["mean", "recency", "attention", "last_query", "gru"]
ENCODER_FILE = "encoder.keras"
ITEMS_FILE = "items.npy"
BIAS_FILE = "bias.npy"
META_FILE = "student.json"
_PACKAGE = "shelfedge"
_BATCH = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The student's architecture. Immutable, safe to share across threads.

    Attributes:
        n_items: catalogue size.
        kind: ``"sequences"`` (order and recency matter) or ``"baskets"`` (order-free: no positions).
        shape: the encoder (:data:`SHAPES`).
        dim: embedding / user width.
        max_len: how many of the most recent items the encoder sees.
        projection: a ``dim x dim`` Dense on the pooled vector.
        tied: the item table is the input embedding (half the parameters) or a table of its own.
        item_bias: a learned per-item score offset (popularity).
        seed: weight initialisation.
    """

    n_items: int
    kind: Literal["sequences", "baskets"] = "sequences"
    shape: Shape = "mean"
    dim: int = 32
    max_len: int = 50
    projection: bool = True
    tied: bool = True
    item_bias: bool = True
    seed: int = 0

    def validate(self) -> None:
        """Raises:
        ConfigError: names the first bad field, its value and what is allowed.
        """
        checks = (
            ("n_items", self.n_items >= 1, ">= 1"),
            ("kind", self.kind in ("sequences", "baskets"), "'sequences' or 'baskets'"),
            ("shape", self.shape in SHAPES, f"one of {', '.join(SHAPES)}"),
            ("dim", self.dim >= 1, ">= 1"),
            ("max_len", self.max_len >= 1, ">= 1"),
        )
        check_fields(self, checks)


def student_macs(config: StudentConfig) -> dict[str, int]:
    """Multiply-accumulates of one request (batch 1) from the architecture: encoder, scoring, total.

    Every window position is computed (the graph does not know which are padding), as for the teacher.
    """
    length, d = config.max_len, config.dim
    positional = config.kind == "sequences"
    pool = {
        "mean": length * d,
        "recency": 2 * length * d if positional else length * d,
        "attention": 2 * length * d,
        "last_query": d * d + 2 * length * d,
        "gru": length * (6 * d * d + 3 * d),
    }[config.shape]
    encoder = pool + (d * d if config.projection else 0)
    scoring = config.n_items * d + (config.n_items if config.item_bias else 0)
    return {"encoder": encoder, "scoring": scoring, "total": encoder + scoring}


def build_student(config: StudentConfig) -> tuple[keras.Model, keras.Model]:
    """(encoder ``history -> user``, training model ``history -> scores``) sharing their weights.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    keras.utils.set_random_seed(config.seed)
    history = keras.Input((config.max_len,), dtype="int32", name=INPUT_NAME)
    embedding = TiedItemEmbedding(config.n_items, config.dim, name="item_embedding")
    keep = PaddingMask(name="padding_mask")(history)
    x = keras.layers.Multiply(name="embedding_masked")([embedding(history), keep])
    positional = config.kind == "sequences"
    if config.shape == "gru":
        pooled = MaskedGRU(config.dim, name="gru")([x, keep])
    else:
        content = config.shape in ("attention", "last_query")
        recency = positional and config.shape != "mean"
        pooled = AttentionPool(
            config.dim,
            config.max_len,
            content=content,
            last_query=config.shape == "last_query",
            recency=recency,
            name="pool",
        )([x, keep])
    if config.projection:
        pooled = keras.layers.Dense(config.dim, name="projection")(pooled)
    user = keras.layers.Activation("linear", dtype="float32", name=USER_NAME)(pooled)
    encoder = keras.Model(history, user, name=f"student_{config.shape}_encoder")
    scorer = ItemScores(config.n_items, config.dim, tied=config.tied, item_bias=config.item_bias, name="item_scores")
    if config.tied:
        scorer.embedding = embedding
    scores = keras.layers.Activation("linear", dtype="float32", name="scores")(scorer(user))
    return encoder, keras.Model(history, scores, name=f"student_{config.shape}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecStudent:
    """A trained student: encoder + item table (+ bias). Immutable; ``score`` is safe across threads.

    Attributes:
        encoder: ``history`` (batch, max_len) int32 -> ``user`` (batch, dim) float32.
        item_table: (n_items, dim) float32.
        item_bias: (n_items,) float32, or None.
        max_len: the encoder's window.
        kind: ``"sequences"`` or ``"baskets"``.
        config: the architecture (``StudentConfig`` as a dict), for reports and the bundle.
    """

    encoder: Any
    item_table: np.ndarray
    item_bias: np.ndarray | None
    max_len: int
    kind: str
    config: dict[str, Any]

    @property
    def n_items(self) -> int:
        return int(self.item_table.shape[0])

    @property
    def params(self) -> int:
        """Parameters a device holds: the encoder's plus the table's when untied, plus the bias."""
        encoder = int(self.encoder.count_params())
        table = 0 if self.config.get("tied", True) else self.item_table.size
        return encoder + table + (0 if self.item_bias is None else self.item_bias.size)

    @classmethod
    def from_models(cls, encoder: Any, model: Any, config: StudentConfig) -> RecStudent:
        """The deployable parts of a trained :func:`build_student` pair."""
        scorer = model.get_layer("item_scores")
        table, bias = scorer.table_and_bias()
        return cls(
            encoder=encoder,
            item_table=np.asarray(table, np.float32),
            item_bias=None if bias is None else np.asarray(bias, np.float32),
            max_len=config.max_len,
            kind=config.kind,
            config=dataclasses.asdict(config),
        )

    def users(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(N, dim) float32 user vectors of item-index histories (the encoder, inference mode)."""
        x = pad_histories(histories, self.max_len)
        if not len(x):
            return np.zeros((0, self.item_table.shape[1]), np.float32)
        parts = [np.asarray(self.encoder.predict_on_batch(x[i : i + _BATCH])) for i in range(0, len(x), _BATCH)]
        return np.concatenate(parts).astype(np.float32)

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(N, n_items) float32 scores: ``user @ item_table.T + item_bias``."""
        scores = self.users(histories) @ self.item_table.T
        return scores + self.item_bias if self.item_bias is not None else scores

    def save(self, directory: str | Path) -> Path:
        """Write ``encoder.keras``, ``items.npy``, ``bias.npy`` (zeros when there is no bias) and ``student.json``.

        Raises:
            ConfigError: the directory cannot be written.
        """
        out = Path(directory)
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.encoder.save(out / ENCODER_FILE)
            np.save(out / ITEMS_FILE, self.item_table)
            bias = self.item_bias if self.item_bias is not None else np.zeros(self.n_items, np.float32)
            np.save(out / BIAS_FILE, bias)
            meta = {
                "schema_version": 1,
                "encoder": ENCODER_FILE,
                "item_table": ITEMS_FILE,
                "item_bias": BIAS_FILE,
                "has_item_bias": self.item_bias is not None,
                "input": {"name": INPUT_NAME, "dtype": "int32", "shape": [None, self.max_len]},
                "output": {"name": USER_NAME, "dtype": "float32", "shape": [None, int(self.item_table.shape[1])]},
                "n_items": self.n_items,
                "max_len": self.max_len,
                "kind": self.kind,
                "config": self.config,
            }
            (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"RecStudent.save: cannot write {out} ({e}); pass a writable directory") from e
        return out

    @classmethod
    def load(cls, directory: str | Path) -> RecStudent:
        """Read what :meth:`save` wrote.

        Raises:
            ConfigError: a file is missing or unreadable, or the table does not match the encoder.
        """
        src = Path(directory)
        try:
            meta = json.loads((src / META_FILE).read_text(encoding="utf-8"))
            encoder = keras.saving.load_model(src / meta["encoder"])
            table = np.load(src / meta["item_table"]).astype(np.float32)
            bias = np.load(src / meta["item_bias"]).astype(np.float32)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"RecStudent.load: cannot read a student from {src} ({e}); save it again") from e
        dim = int(encoder.output_shape[-1])
        if table.ndim != 2 or table.shape[1] != dim or bias.shape != (table.shape[0],):
            raise ConfigError(
                f"RecStudent.load: {src}: item table {table.shape} / bias {bias.shape} do not fit the encoder's "
                f"user width {dim}; save the student again"
            )
        return cls(
            encoder=encoder,
            item_table=table,
            item_bias=bias if meta.get("has_item_bias", True) else None,
            max_len=int(meta["max_len"]),
            kind=str(meta["kind"]),
            config=dict(meta["config"]),
        )


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionPool(keras.layers.Layer):
    """[(batch, length, dim) items (padding zeroed), (batch, length, 1) keep] -> (batch, dim).

    A masked softmax over the positions of ``content`` logits (items · query, the query learned or,
    with ``last_query``, a projection of the newest item) plus ``recency`` logits (one learned
    weight per position from the end). With neither it is the masked mean.
    """

    def __init__(
        self, dim: int, max_len: int, *, content: bool, last_query: bool, recency: bool, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.dim, self.max_len = dim, max_len
        self.content, self.last_query, self.recency = content, last_query, recency

    def build(self, input_shape: Any) -> None:
        if self.content and not self.last_query:
            self.query = self.add_weight(name="query", shape=(self.dim, 1), initializer="zeros")
        if self.last_query:
            self.query_kernel = self.add_weight(name="query_kernel", shape=(self.dim, self.dim), initializer="zeros")
        if self.recency:
            self.position_logits = self.add_weight(name="position_logits", shape=(self.max_len,), initializer="zeros")

    def call(self, inputs: Any) -> Any:
        x, keep = inputs
        logits = ops.zeros_like(keep)
        if self.content:
            query = ops.matmul(x[:, -1, :], self.query_kernel) if self.last_query else None
            if query is None:
                logits = logits + ops.matmul(x, self.query)
            else:
                logits = logits + ops.expand_dims(ops.sum(x * ops.expand_dims(query, 1), axis=-1), -1)
            logits = logits * (self.dim**-0.5)
        if self.recency:
            logits = logits + ops.reshape(self.position_logits[self.max_len - ops.shape(x)[1] :], (1, -1, 1))
        # A masked softmax without a large negative constant (which would set the int8 scale of
        # the logits to ~4e6 and swamp the recency weights): exp, zero the padding, renormalise.
        # The logits are small learned values (no overflow); an empty history gives a zero user.
        exps = ops.exp(logits) * keep
        weights = exps / ops.maximum(ops.sum(exps, axis=1, keepdims=True), 1e-12)
        return ops.sum(weights * x, axis=1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0][0], self.dim)

    def get_config(self) -> dict[str, Any]:
        flags = {"content": self.content, "last_query": self.last_query, "recency": self.recency}
        return super().get_config() | {"dim": self.dim, "max_len": self.max_len} | flags


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedGRU(keras.layers.Layer):
    """[(batch, length, dim), (batch, length, 1) keep] -> (batch, dim): a GRU that skips padding.

    Unrolled over the window with the state held where ``keep`` is 0, so left padding of any length
    leaves the state at zero and the graph has no loop for an exporter to handle.
    """

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim
        self.cell = keras.layers.GRUCell(dim, reset_after=True, name="cell")

    def build(self, input_shape: Any) -> None:
        self.cell.build(input_shape[0][:1] + input_shape[0][2:])

    def call(self, inputs: Any) -> Any:
        x, keep = inputs
        state = ops.zeros_like(x[:, 0, :])
        for t in range(x.shape[1]):
            new, _ = self.cell(x[:, t, :], [state])
            state = keep[:, t, :] * new + (1.0 - keep[:, t, :]) * state
        return state

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0][0], self.dim)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"dim": self.dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ItemScores(keras.layers.Layer):
    """(batch, dim) user -> (batch, n_items) scores against the item table (tied or its own) + bias.

    A tied scorer reads the encoder's input embedding (attached after construction as
    ``embedding``); it is only used inside the training model, never saved on its own.
    """

    def __init__(self, n_items: int, dim: int, *, tied: bool, item_bias: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_items, self.dim, self.tied, self.use_bias = n_items, dim, tied, item_bias
        self.embedding: Any = None

    def build(self, input_shape: Any) -> None:
        if not self.tied:
            self.table = self.add_weight(
                name="table", shape=(self.n_items, self.dim), initializer=keras.initializers.RandomNormal(stddev=0.05)
            )
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.n_items,), initializer="zeros")

    def _table(self) -> Any:
        return self.embedding.table[1:] if self.tied else self.table

    def call(self, user: Any) -> Any:
        scores = ops.matmul(user, ops.transpose(self._table()))
        return scores + self.bias if self.use_bias else scores

    def table_and_bias(self) -> tuple[np.ndarray, np.ndarray | None]:
        table = np.asarray(ops.convert_to_numpy(self._table()))
        return table, (np.asarray(ops.convert_to_numpy(self.bias)) if self.use_bias else None)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.n_items)

    def get_config(self) -> dict[str, Any]:
        shape = {"n_items": self.n_items, "dim": self.dim}
        return super().get_config() | shape | {"tied": self.tied, "item_bias": self.use_bias}
