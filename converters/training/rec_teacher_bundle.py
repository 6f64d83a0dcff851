"""The recommendation teacher (and a saved student) as recommendation bundles with an fp32 item table.

The SASRec teacher (:func:`converters.models.sasrec.build_sasrec`) scores a history as
``state @ table[1:].T``: the pooled state times the item embedding table it also reads its input
through (``TiedItemEmbedding``, row 0 the padding item, no bias). Split there, it is exactly the
recommender contract of the students: an encoder ``history -> user`` (the state, renamed
``user``) plus an fp32 item table, so the teacher can be packaged by
:func:`~converters.export.rec_bundle.package_recommender` (a SavedModel by default: the TensorFlow
reference path without the custom layer classes) and served and compared like any student.

The split is checked, not assumed: the packaged encoder times the table must give the teacher's
own scores on real histories of the dataset before any bundle is written.

:func:`package_student` does the same for a saved student (``RecStudent.save``): its encoder and
its fp32 table and bias, the reference of the int8-table bundles ``shelfedge rec-distill`` writes.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from converters.export.rec_bundle import package_recommender
from converters.models.rec_student import ENCODER_FILE, RecStudent
from converters.models.sasrec import ITEM_TABLE, pad_histories
from converters.training.recommender import MODEL_FILE
from sdk.bundle import Bundle, sha256_tree
from sdk.enums import ModelFormat
from sdk.errors import ConfigError, ConversionError
from sdk.manifest import Step
from sdk.rec_datasets import RecDataset
from sdk.versions import tool_versions

__all__ = [
    "STATE_LAYERS",
    "TeacherSplit",
    "package_student",
    "package_teacher",
    "split_teacher",
    "train_popularity",
]

# The layer whose output is the pooled state, by build_sasrec's shapes: sequences
# (LastPosition), baskets with mean pooling (MaskedMean), baskets with a learned query (LastPosition).
STATE_LAYERS = ("last_position", "masked_mean", "pooled")
USER_NAME = "user"
# How close the split's scores must be to the teacher's own (float32 matmul in another order).
_ATOL, _RTOL = 1e-4, 1e-4
_CHECK_CASES = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherSplit:
    """The teacher's encoder (``history -> user``) and item table, checked against its scores.

    Immutable; the encoder is safe to call from several threads for inference.

    Attributes:
        encoder: a ``keras.Model`` sharing the teacher's layers up to the pooled state.
        item_table: (n_items, dim) float32: the tied embedding's rows 1..n_items.
        max_len: the teacher's window.
        state_layer: which layer's output the encoder returns.
        source: where the teacher came from (a path, or the in-memory model's name).
        source_sha256: the teacher file's sha256 (``sdk.bundle.sha256_tree``), or None in memory.
    """

    encoder: Any = dataclasses.field(repr=False)
    item_table: np.ndarray = dataclasses.field(repr=False)
    max_len: int
    state_layer: str
    source: str
    source_sha256: str | None


def split_teacher(teacher: Any, n_items: int, histories: Iterable[np.ndarray] = ()) -> TeacherSplit:
    """Split a SASRec teacher (a ``keras.Model``, a ``.keras`` file or a directory holding ``teacher.keras``).

    Args:
        teacher: the trained teacher, or where it is.
        n_items: the catalogue size the teacher must score.
        histories: item-index histories to check the split on (a few random ones are added).

    Raises:
        ConfigError: the path holds no teacher, or the teacher scores another number of items.
        ConversionError: the model cannot be loaded, has no SASRec state layer or tied item table,
            or the encoder times the table does not give the teacher's scores.
    """
    import keras

    model, source, sha = _load(teacher)
    layer_names = {layer.name for layer in model.layers}
    state_layer = next((name for name in STATE_LAYERS if name in layer_names), None)
    if state_layer is None or ITEM_TABLE not in layer_names:
        raise ConversionError(
            f"teacher {source}: no SASRec state layer ({', '.join(STATE_LAYERS)}) or tied {ITEM_TABLE!r} table; "
            "pass a model built by converters.models.sasrec.build_sasrec"
        )
    weights = np.asarray(keras.ops.convert_to_numpy(model.get_layer(ITEM_TABLE).table), np.float32)
    if weights.shape[0] != n_items + 1:
        raise ConfigError(
            f"teacher {source}: its item table has {weights.shape[0] - 1} items (plus the padding row), the "
            f"dataset's catalogue {n_items}; pass the teacher trained on this dataset"
        )
    user = keras.layers.Activation("linear", dtype="float32", name=USER_NAME)(model.get_layer(state_layer).output)
    encoder = keras.Model(model.input, user, name=f"{model.name}_encoder")
    split = TeacherSplit(
        encoder=encoder,
        item_table=weights[1:],  # row 0 is the padding item, never scored
        max_len=int(model.inputs[0].shape[1]),
        state_layer=state_layer,
        source=source,
        source_sha256=sha,
    )
    _check_split(model, split, list(histories))
    return split


def package_teacher(
    teacher: Any,
    dataset: RecDataset,
    out_dir: str | os.PathLike,
    formats: Iterable[str | ModelFormat] = ("savedmodel",),
    *,
    name: str | None = None,
    overwrite: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Bundle]:
    """The teacher as recommendation bundles (fp32 item table, no bias), one per format.

    Popularity (the cold-start ranking) counts the training rows only, as the students' bundles do.

    Args:
        teacher: a ``keras.Model``, a ``.keras`` file or a directory holding ``teacher.keras``.
        dataset: the dataset the teacher was trained on (catalogue, kind, training rows).
        out_dir: where the bundle directories ``<name>-<format>-fp32`` are written.
        formats: as ``package_recommender``; the SavedModel needs no custom classes to run.
        name: the bundles' name (default ``<dataset>-teacher``).
        overwrite: replace bundles already there.
        progress: called with one line per stage.

    Returns:
        The reopened, hash-checked bundles by format.

    Raises:
        ConfigError: the teacher does not fit the dataset, or a packaging argument is wrong.
        ConversionError: the teacher cannot be loaded or split (see :func:`split_teacher`), or a
            format step failed.
        BackendUnavailableError: a format's runtime is missing.
    """
    split_cases = dataset.split.valid.histories[:_CHECK_CASES]
    split = split_teacher(teacher, dataset.split.n_items, split_cases)
    step = Step(
        name="split_teacher",
        config={
            "teacher": split.source,
            "teacher_sha256": split.source_sha256,
            "state_layer": split.state_layer,
            "item_table": f"{ITEM_TABLE} rows 1..{dataset.split.n_items} (row 0: padding)",
            "bias": None,
            "popularity": "training rows",
        },
        tool_versions=tool_versions(("keras",)),
    )
    return package_recommender(
        split.encoder,
        split.item_table,
        None,
        dataset.interactions.catalogue,
        train_popularity(dataset),
        out_dir=Path(out_dir),
        name=name or f"{dataset.name}-teacher",
        kind=dataset.interactions.kind,
        formats=formats,
        table_precision="fp32",
        max_len=split.max_len,
        steps=(step,),
        overwrite=overwrite,
        progress=progress,
    )


def package_student(
    student_dir: str | os.PathLike,
    dataset: RecDataset,
    out_dir: str | os.PathLike,
    formats: Iterable[str | ModelFormat] = ("savedmodel",),
    *,
    name: str | None = None,
    overwrite: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[ModelFormat, Bundle]:
    """A saved student (``RecStudent.save``) as recommendation bundles with its fp32 item table and bias.

    The fp32 counterpart of the bundles ``shelfedge rec-distill`` packages (int8 table): the reference
    of hardware parity. The lineage root is the student's ``encoder.keras`` itself.

    Raises:
        ConfigError: the student cannot be read or does not fit the dataset's catalogue.
        ConversionError, BackendUnavailableError: as ``package_recommender``.
    """
    path = Path(student_dir)
    student = RecStudent.load(path)
    if student.n_items != dataset.split.n_items or student.kind != dataset.interactions.kind:
        raise ConfigError(
            f"student {path}: {student.n_items:,} {student.kind} items, the dataset {dataset.split.n_items:,} "
            f"{dataset.interactions.kind}; pass the student trained on this dataset"
        )
    label = f"{student.config.get('shape')}{student.config.get('dim')}"
    return package_recommender(
        path / ENCODER_FILE,
        student.item_table,
        student.item_bias,
        dataset.interactions.catalogue,
        train_popularity(dataset),
        out_dir=Path(out_dir),
        name=name or f"{dataset.name}-{label}-student",
        kind=student.kind,
        formats=formats,
        table_precision="fp32",
        max_len=student.max_len,
        steps=(Step(name="load_student", config={"student": str(path), "config": student.config}),),
        overwrite=overwrite,
        progress=progress,
    )


def train_popularity(dataset: RecDataset) -> np.ndarray:
    """How many training rows hold each item: the cold-start ranking, blind to the held-out items."""
    popularity = np.zeros(dataset.split.n_items)
    for row in dataset.split.train:
        np.add.at(popularity, np.unique(row), 1.0)
    return popularity


def _load(teacher: Any) -> tuple[Any, str, str | None]:
    """(model, how to name it, the file's sha256 or None)."""
    import keras

    if isinstance(teacher, keras.Model):
        return teacher, f"keras.Model {teacher.name!r} (in memory)", None
    path = Path(teacher)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise ConfigError(
            f"teacher {teacher}: no such file (a directory must hold {MODEL_FILE}); train one with "
            "'shelfedge teacher --dataset ...' or pass its .keras file"
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a bad file
        raise ConversionError(f"teacher {path}: Keras cannot load it ({type(e).__name__}: {e}); train it again") from e
    return model, str(path), sha256_tree(path)


def _check_split(model: Any, split: TeacherSplit, histories: list[np.ndarray]) -> None:
    """The encoder times the table must be the teacher's scores, on real and random histories."""
    rng = np.random.default_rng(0)
    n_items = split.item_table.shape[0]
    for _ in range(8):
        histories.append(rng.choice(n_items, size=int(rng.integers(1, split.max_len + 1)), replace=True))
    x = pad_histories(histories, split.max_len)
    expected = np.asarray(model(x, training=False), np.float32)
    got = np.asarray(split.encoder(x, training=False), np.float32) @ split.item_table.T
    if not np.allclose(got, expected, atol=_ATOL, rtol=_RTOL):
        worst = float(np.max(np.abs(got - expected)))
        raise ConversionError(
            f"teacher {split.source}: the encoder ({split.state_layer}) times the item table differs from the "
            f"teacher's scores by up to {worst:.3g}; the model is not a tied SASRec without a bias: package it "
            "with package_recommender and its own table"
        )
