"""The recommendation server model (teacher): self-attention over a history, scores tied to the items.

Two shapes, one contract:
- ``kind="sequences"`` (SASRec, Kang & McAuley 2018): item embedding + learned positional
  embedding, ``blocks`` causal self-attention blocks (pre-layer-norm, multi-head attention,
  point-wise feed-forward, dropout), the last position's hidden state;
- ``kind="baskets"``: the same blocks as order-free set attention (no positions, no causal mask,
  only a padding mask), pooled by a masked mean or a learned query.

Either way the model's input is ``history`` (batch, max_len) int32 of item indices + 1 (0 = padding,
left-padded so the most recent item is last) and its output is ``scores`` (batch, n_items) float32:
the pooled state times the item embedding table (weights tied, padding row left out). The graph
keeps to Embedding, Dense, LayerNormalization, MultiHeadAttention, matmul, softmax and masks made
of comparisons and products, so the LiteRT, OpenVINO and ONNX exporters can take it.

The custom layers are registered for ``.keras`` saving. A built model is a Keras model: calling
it from several threads at once is safe for inference, not for training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import keras
import numpy as np
from keras import ops

from converters.models.config_checks import check_fields
from sdk.errors import ConfigError

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SEQUENCE_OUTPUT",
    "SasRecConfig",
    "build_sasrec",
    "macs_per_request",
    "pad_histories",
]

INPUT_NAME = "history"
OUTPUT_NAME = "scores"
# The layer whose output is every position's hidden state: training of sequences reads it.
SEQUENCE_OUTPUT = "sequence_output"
ITEM_TABLE = "item_embedding"
Pooling = Literal["mean", "query"]
_PACKAGE = "shelfedge"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SasRecConfig:
    """The architecture. Immutable, safe to share across threads.

    Attributes:
        n_items: catalogue size (scores has this many columns).
        kind: ``"sequences"`` (causal, positional) or ``"baskets"`` (order-free set attention).
        max_len: the window: how many of the most recent items the model sees.
        dim: embedding and hidden width.
        blocks: self-attention blocks.
        heads: attention heads (``dim`` must divide by it).
        ffn_mult: feed-forward width as a multiple of ``dim``.
        dropout: on embeddings, attention and feed-forward outputs (training only).
        pooling: baskets only: ``"mean"`` (masked mean) or ``"query"`` (a learned query attends).
        seed: weight initialisation.
    """

    n_items: int
    kind: Literal["sequences", "baskets"] = "sequences"
    max_len: int = 50
    dim: int = 64
    blocks: int = 2
    heads: int = 2
    ffn_mult: int = 1
    dropout: float = 0.2
    pooling: Pooling = "mean"
    seed: int = 0

    def validate(self) -> None:
        """Raises:
        ConfigError: names the first bad field, its value and what is allowed.
        """
        checks = (
            ("n_items", self.n_items >= 1, ">= 1"),
            ("kind", self.kind in ("sequences", "baskets"), "'sequences' or 'baskets'"),
            ("max_len", self.max_len >= 1, ">= 1"),
            ("dim", self.dim >= 1, ">= 1"),
            ("blocks", self.blocks >= 0, ">= 0"),
            ("heads", self.heads >= 1 and self.dim % self.heads == 0, f">= 1 and divide dim ({self.dim})"),
            ("ffn_mult", self.ffn_mult >= 1, ">= 1"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("pooling", self.pooling in ("mean", "query"), "'mean' or 'query'"),
        )
        check_fields(self, checks)


def pad_histories(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
    """Item-index histories -> the model's input: (N, max_len) int32, indices + 1, left-padded with 0.

    A history longer than ``max_len`` keeps its most recent (last) ``max_len`` items.

    Raises:
        ConfigError: ``max_len`` < 1 or a history holds a negative index.
    """
    if max_len < 1:
        raise ConfigError(f"pad_histories: max_len must be >= 1, got {max_len}")
    out = np.zeros((len(histories), max_len), np.int32)
    for i, history in enumerate(histories):
        recent = np.asarray(history, np.int64)[-max_len:]
        if recent.size and recent.min() < 0:
            raise ConfigError(f"pad_histories: history {i} holds a negative item index; indices start at 0")
        if recent.size:
            out[i, max_len - recent.size :] = recent + 1
    return out


def macs_per_request(config: SasRecConfig) -> int:
    """Multiply-accumulates of one request (batch 1), counted from the architecture.

    Every position of the window is computed (the graph does not know which are padding), so this is
    the cost of a full window; the last term, scoring every item, dominates for large catalogues.
    """
    length, d = config.max_len, config.dim
    per_block = 4 * length * d * d + 2 * length * length * d + 2 * length * d * d * config.ffn_mult
    pooling = 0
    if config.kind == "baskets":
        pooling = length * d if config.pooling == "mean" else 2 * d * d + 2 * length * d * d + 2 * length * d
    return config.blocks * per_block + pooling + d * config.n_items


def build_sasrec(config: SasRecConfig) -> keras.Model:
    """The Keras model: ``history`` (batch, max_len) int32 -> ``scores`` (batch, n_items) float32.

    Raises:
        ConfigError: the config is invalid.
    """
    config.validate()
    keras.utils.set_random_seed(config.seed)
    layers = keras.layers
    history = keras.Input((config.max_len,), dtype="int32", name=INPUT_NAME)
    items = TiedItemEmbedding(config.n_items, config.dim, name=ITEM_TABLE)
    causal = config.kind == "sequences"
    keep = PaddingMask(name="padding_mask")(history)
    attention_mask = AttentionMask(causal=causal, name="attention_mask")(history)
    x = items(history)
    if causal:
        x = PositionEmbedding(config.max_len, config.dim, name="position_embedding")(x)
    x = layers.Dropout(config.dropout, name="embedding_dropout")(x)
    x = layers.Multiply(name="embedding_masked")([x, keep])
    for b in range(config.blocks):
        x = _block(x, keep, attention_mask, config, b)
    x = layers.LayerNormalization(epsilon=1e-6, name=SEQUENCE_OUTPUT)(x)
    if causal:
        state = LastPosition(name="last_position")(x)
    elif config.pooling == "mean":
        state = MaskedMean(name="masked_mean")([x, keep])
    else:
        query = LearnedQuery(config.dim, name="pooling_query")(x)
        pool_mask = AttentionMask(causal=False, queries=1, name="pooling_mask")(history)
        pooled = layers.MultiHeadAttention(
            config.heads, config.dim // config.heads, name="pooling_attention", dropout=config.dropout
        )(query, x, attention_mask=pool_mask)
        state = LastPosition(name="pooled")(pooled)
    scores = items(state, reverse=True)
    scores = layers.Activation("linear", dtype="float32", name=OUTPUT_NAME)(scores)
    return keras.Model(history, scores, name=f"sasrec_{config.kind}")


def _block(x: Any, keep: Any, attention_mask: Any, config: SasRecConfig, b: int) -> Any:
    """One pre-layer-norm block: x + attention(LN(x)), then + feed-forward(LN(x)); padding zeroed."""

    layers = keras.layers
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_attention_norm")(x)
    h = layers.MultiHeadAttention(
        config.heads, config.dim // config.heads, dropout=config.dropout, name=f"block{b}_attention"
    )(h, h, attention_mask=attention_mask)
    x = layers.Add(name=f"block{b}_attention_residual")([x, layers.Dropout(config.dropout)(h)])
    h = layers.LayerNormalization(epsilon=1e-6, name=f"block{b}_ffn_norm")(x)
    h = layers.Dense(config.dim * config.ffn_mult, activation="relu", name=f"block{b}_ffn_in")(h)
    h = layers.Dense(config.dim, name=f"block{b}_ffn_out")(layers.Dropout(config.dropout)(h))
    x = layers.Add(name=f"block{b}_ffn_residual")([x, layers.Dropout(config.dropout)(h)])
    # Padding positions must stay zero so that no amount of padding changes a real position's state.
    return layers.Multiply(name=f"block{b}_masked")([x, keep])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class TiedItemEmbedding(keras.layers.Layer):
    """Item table (n_items + 1, dim), row 0 padding: looks items up, or scores a state against them."""

    def __init__(self, n_items: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_items, self.dim = n_items, dim

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            name="table",
            shape=(self.n_items + 1, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=self.dim**-0.5),
        )

    def call(self, inputs: Any, reverse: bool = False) -> Any:
        if reverse:
            return ops.matmul(inputs, ops.transpose(self.table[1:]))
        return ops.take(self.table, ops.cast(inputs, "int32"), axis=0)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"n_items": self.n_items, "dim": self.dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding per position, counted from the end so the newest item is always last."""

    def __init__(self, max_len: int, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_len, self.dim = max_len, dim

    def build(self, input_shape: Any) -> None:
        self.table = self.add_weight(
            name="table", shape=(self.max_len, self.dim), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, inputs: Any) -> Any:
        length = ops.shape(inputs)[1]
        return inputs + self.table[self.max_len - length :]

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"max_len": self.max_len, "dim": self.dim}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PaddingMask(keras.layers.Layer):
    """history -> (batch, length, 1) float: 1 for an item, 0 for padding."""

    def call(self, history: Any) -> Any:
        return ops.expand_dims(ops.cast(ops.greater(history, 0), self.compute_dtype), -1)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (*input_shape, 1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AttentionMask(keras.layers.Layer):
    """history -> (batch, queries, length) bool: which keys each query may attend to.

    Keys are the non-padding positions; with ``causal`` also only those at or before the query.
    ``queries`` None means one query per position.
    """

    def __init__(self, causal: bool, queries: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.causal, self.queries = causal, queries

    def call(self, history: Any) -> Any:
        keys = ops.expand_dims(ops.greater(history, 0), 1)
        length = ops.shape(history)[1]
        if self.causal:
            positions = ops.arange(length)
            allowed = ops.greater_equal(ops.expand_dims(positions, 1), ops.expand_dims(positions, 0))
            return ops.logical_and(keys, ops.expand_dims(allowed, 0))
        rows = self.queries or length
        return ops.logical_and(keys, ops.ones((1, rows, 1), "bool"))

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], self.queries or input_shape[1], input_shape[1])

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"causal": self.causal, "queries": self.queries}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LastPosition(keras.layers.Layer):
    """(batch, length, dim) -> (batch, dim): the last position's state."""

    def call(self, inputs: Any) -> Any:
        return inputs[:, -1, :]

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskedMean(keras.layers.Layer):
    """[(batch, length, dim), (batch, length, 1) mask] -> (batch, dim): mean over the real positions."""

    def call(self, inputs: Any) -> Any:
        x, keep = inputs
        # An empty basket divides 0 by 1: a zero state, whose scores are all equal.
        return ops.sum(x * keep, axis=1) / ops.maximum(ops.sum(keep, axis=1), 1.0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0][0], input_shape[0][2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LearnedQuery(keras.layers.Layer):
    """(batch, length, dim) -> (batch, 1, dim): one learned query vector per example."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim = dim

    def build(self, input_shape: Any) -> None:
        self.query = self.add_weight(
            name="query", shape=(1, 1, self.dim), initializer=keras.initializers.RandomNormal(stddev=0.02)
        )

    def call(self, inputs: Any) -> Any:
        return self.query + ops.zeros_like(inputs[:, :1, :])

    def compute_output_shape(self, input_shape: Any) -> Any:
        return (input_shape[0], 1, self.dim)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"dim": self.dim}
