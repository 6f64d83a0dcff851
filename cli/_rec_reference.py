"""What ``shelfedge reference`` and ``shelfedge parity`` share for recommenders.

The model a recommendation reference is made from is a recommendation bundle TensorFlow runs
(SavedModel, or Keras with the project's layers) or the SASRec teacher itself (a ``.keras`` file or
the directory holding ``teacher.keras``), which is packaged for the run as a SavedModel bundle
(``converters.training.rec_teacher_bundle``). The converters (TensorFlow) are imported only then.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from cli import log
from sdk.bundle import Bundle, sha256_tree
from sdk.enums import ModelFormat, Task
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases
from sdk.manifest import MANIFEST_NAME, Manifest
from sdk.qa.rec_reference import RecReference
from sdk.qa.rec_reference_spec import RecDatasetSpec, select_cases
from sdk.rec_datasets import NAMED, RecDataset, open_rec_dataset

TEACHER_FILE = "teacher.keras"  # converters.training.recommender.MODEL_FILE


def is_recommendation_model(model: str | Path) -> bool:
    """A recommendation bundle, a teacher ``.keras`` file or a directory holding ``teacher.keras``."""
    path = Path(model)
    if (path / MANIFEST_NAME).is_file():
        return Manifest.load(path / MANIFEST_NAME).task is Task.RECOMMENDATION
    return (path.is_file() and path.suffix == ".keras") or (path / TEACHER_FILE).is_file()


def is_recommendation_bundle(path: str | Path) -> bool:
    """Whether a bundle directory's manifest says ``task: recommendation`` (hashes not checked here)."""
    manifest = Path(path) / MANIFEST_NAME
    return manifest.is_file() and Manifest.load(manifest).task is Task.RECOMMENDATION


def open_dataset(spec: str, seed: int) -> RecDataset:
    """``open_rec_dataset`` as the recommendation commands call it (a named dataset falls back to generated data)."""
    dataset = open_rec_dataset(spec, seed=seed, fallback=spec in NAMED)
    log(f"[reference] dataset {spec}: {dataset.note}")
    return dataset


def register_layers(bundles: Sequence[str | Path]) -> None:
    """Import the project's Keras layers when a bundle is a ``.keras`` model (a SavedModel needs none)."""
    if any(Bundle.open(b, verify=False).manifest.format is ModelFormat.KERAS for b in bundles):
        import converters.models.rec_student  # noqa: F401  registers the student's and the teacher's layers


def make_reference(model: str | Path, dataset: RecDataset, spec: RecDatasetSpec, out: Path) -> RecReference:
    """Run a recommendation bundle or the teacher on the TensorFlow reference path and save the reference.

    Raises:
        ConfigError: the model is neither a recommendation bundle nor a teacher.
        ConversionError: the teacher cannot be split into encoder and item table.
        BundleError, ManifestError, BackendUnavailableError, InferenceError: see ``Recommender.create``.
    """
    from sdk.qa.rec_reference_make import make_rec_reference

    path = Path(model)
    if (path / MANIFEST_NAME).is_file():
        if not is_recommendation_bundle(path):
            raise ConfigError(f"--model {path}: not a recommendation bundle; pass one, or a teacher .keras")
        register_layers([path])
        return make_rec_reference(path, dataset, spec, out, log=log)
    teacher = path / TEACHER_FILE if path.is_dir() else path
    if not teacher.is_file():
        raise ConfigError(
            f"--model {path}: neither a bundle nor a teacher (.keras file or a directory holding {TEACHER_FILE})"
        )
    from converters.training.rec_teacher_bundle import package_teacher

    sha = sha256_tree(teacher)
    identity = {
        "model": str(teacher),
        "model_kind": "teacher",
        "model_name": f"{dataset.name} teacher",
        "model_sha256": sha,
        "model_source": str(teacher),
        "model_parent": None,
        "model_file_sha256": sha,
        "format": "keras (run as a SavedModel)",
    }
    with tempfile.TemporaryDirectory(prefix="shelfedge-teacher-") as tmp:
        log(f"[reference] packaging the teacher {teacher} as a SavedModel bundle")
        bundle = package_teacher(teacher, dataset, tmp, progress=lambda line: log(f"[reference] {line}"))
        return make_rec_reference(bundle[ModelFormat.SAVEDMODEL], dataset, spec, out, model=identity, log=log)


def reference_cases(reference: RecReference, dataset: str | None) -> EvalCases:
    """The reference's cases, from the dataset it recorded or the one given (same seed, split and limit)."""
    if dataset is None:
        log(f"[parity] opening the reference's dataset again: {reference.dataset.describe()}")
        return reference.dataset.open()[1]
    opened = open_rec_dataset(dataset, seed=reference.dataset.seed, fallback=dataset in NAMED)
    return select_cases(opened, reference.dataset.split, reference.dataset.limit)
