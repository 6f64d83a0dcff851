"""What a recommendation conversion starts from: a trained student directory, or an fp32 Keras bundle.

``shelfedge rec-distill`` writes a student as ``student/`` (``encoder.keras``, ``items.npy``,
``bias.npy``, ``student.json``: :class:`converters.models.rec_student.RecStudent`); a recommendation
bundle exported with the ``keras`` format holds the same encoder beside its item files. Either
gives the encoder, the item table and bias, the window and the kind; the dataset gives the
catalogue and the train-only popularity when the source has none.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from converters.models.rec_student import META_FILE, RecStudent, StudentConfig, student_macs
from sdk.bundle import Bundle
from sdk.enums import ModelFormat, Task
from sdk.errors import ConfigError
from sdk.interactions import Catalogue
from sdk.manifest import MANIFEST_NAME
from sdk.rec_datasets import RecDataset
from sdk.recommender_items import read_item_files


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecSource:
    """A trained recommendation model to convert. Immutable (the arrays are never written).

    Attributes:
        name: the bundles' name (``baskets-mean32``).
        encoder: a ``keras.Model`` or a ``.keras`` file: ``history`` (batch, max_len) int32 -> ``user``.
        item_table: (n_items, dim) float32; item_bias: (n_items,) float32 or None.
        max_len: the encoder's window; kind: ``baskets`` or ``sequences``.
        description: where it came from, for reports.
        config: the student's architecture when known (``StudentConfig`` fields), else empty.
        catalogue, popularity: the source's own (a bundle's); None: taken from the dataset.
    """

    name: str
    encoder: Any
    item_table: np.ndarray
    item_bias: np.ndarray | None
    max_len: int
    kind: str
    description: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    catalogue: Catalogue | None = None
    popularity: np.ndarray | None = None

    @property
    def n_items(self) -> int:
        return int(self.item_table.shape[0])

    def macs(self) -> dict[str, int] | None:
        """Multiply-accumulates per request (encoder, scoring, total) from the architecture, when known."""
        try:
            return student_macs(StudentConfig(**dict(self.config)))
        except (TypeError, ConfigError):
            return None

    def check_fits(self, dataset: RecDataset) -> None:
        """Refuse a dataset the model was not trained on, before any export.

        Raises:
            ConfigError: the catalogue size, the kind or (for a bundle source) the item ids differ;
                the message names the model and the dataset.
        """
        split = dataset.split
        where = f"the model {self.description} ({self.n_items} items, {self.kind})"
        there = f"dataset {dataset.name!r} ({dataset.note})"
        if self.n_items != split.n_items:
            raise ConfigError(
                f"{where} scores {self.n_items} items but {there} has {split.n_items}; convert with the dataset "
                "the model was trained on (--dataset as given to shelfedge rec-distill)"
            )
        if self.kind != dataset.interactions.kind:
            raise ConfigError(
                f"{where} was trained on {self.kind} but {there} holds {dataset.interactions.kind}; convert with "
                "the dataset the model was trained on"
            )
        if self.catalogue is not None and tuple(self.catalogue.ids) != tuple(dataset.interactions.catalogue.ids):
            raise ConfigError(
                f"{where} lists other item ids than {there} (same count, another catalogue); convert with the "
                "dataset the bundle was made from"
            )

    @classmethod
    def open(cls, path: str | Path, dataset_name: str) -> RecSource:
        """A student directory (``student.json``) or an fp32 Keras recommendation bundle (``manifest.json``).

        Raises:
            ConfigError: ``path`` is neither, cannot be read, or is a bundle in another format or task.
            BundleError: a bundle whose files fail their hashes.
        """
        path = Path(path)
        if (path / META_FILE).is_file():
            return cls.from_student(path, dataset_name)
        if (path / MANIFEST_NAME).is_file():
            return cls.from_bundle(path)
        raise ConfigError(
            f"--model {path}: neither a recommendation student directory ({META_FILE}, as shelfedge rec-distill "
            f"writes in out/rec-distill/<dataset>/student-kd/student) nor a bundle ({MANIFEST_NAME})"
        )

    @classmethod
    def from_student(cls, directory: str | Path, dataset_name: str) -> RecSource:
        """A student as ``RecStudent.save`` wrote it; bundles named ``<dataset>-<shape><dim>``.

        Raises:
            ConfigError: a file is missing or unreadable, or the table does not fit the encoder.
        """
        student = RecStudent.load(directory)
        config = dict(student.config)
        return cls(
            name=f"{dataset_name}-{config.get('shape', 'student')}{config.get('dim', student.item_table.shape[1])}",
            encoder=student.encoder,
            item_table=student.item_table,
            item_bias=student.item_bias,
            max_len=student.max_len,
            kind=student.kind,
            description=f"student {directory} ({config.get('shape')}, dim {config.get('dim')})",
            config=config,
        )

    @classmethod
    def from_bundle(cls, path: str | Path) -> RecSource:
        """An fp32 recommendation bundle whose model is Keras: its encoder, item table, catalogue, popularity.

        An int8 item table is dequantized: the fp32 bundle made here re-quantizes it to the same values.

        Raises:
            ConfigError: not a recommendation bundle, or not a Keras fp32 one.
            BundleError: a file is missing or fails its hash.
        """
        bundle = Bundle.open(path)
        manifest = bundle.manifest
        spec = manifest.recommendation
        if manifest.task is not Task.RECOMMENDATION or spec is None:
            raise ConfigError(f"--model {bundle.path}: a {manifest.task.value} bundle; give a recommendation model")
        if manifest.format is not ModelFormat.KERAS:
            raise ConfigError(
                f"--model {bundle.path}: a {manifest.format.value} bundle; convert starts from the Keras encoder: "
                "pass the student directory (out/rec-distill/<dataset>/student-kd/student) or a keras bundle"
            )
        items = read_item_files(bundle.path, spec)
        return cls(
            name=manifest.name,
            encoder=bundle.model_path,
            item_table=np.asarray(items.dequantized(), np.float32),
            item_bias=None if items.bias is None else np.asarray(items.bias, np.float32),
            max_len=spec.max_len,
            kind=spec.kind,
            description=f"bundle {bundle.path}",
            catalogue=items.catalogue,
            popularity=np.asarray(items.popularity, np.float64),
        )


def is_recommendation_source(path: str | Path) -> bool:
    """Whether ``path`` is a student directory or a recommendation bundle (what ``convert`` routes here).

    Reads at most the manifest's JSON: no model is loaded.
    """
    path = Path(path)
    if (path / META_FILE).is_file():
        return True
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("task") == Task.RECOMMENDATION.value
