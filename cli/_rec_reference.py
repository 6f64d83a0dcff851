"""What ``shelfedge reference`` and ``shelfedge parity`` share for recommenders.

The model a recommendation reference is made from is a recommendation bundle TensorFlow runs
(SavedModel, or Keras with the project's layers), a saved student (``RecStudent.save``: a directory
holding ``student.json``) or the SASRec teacher itself (a ``.keras`` file or the directory holding
``teacher.keras``); a student or teacher is packaged for the run as a SavedModel bundle with an fp32
item table (``converters.training.rec_teacher_bundle``). The converters (TensorFlow) are imported
only then.
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
STUDENT_FILE, ENCODER_FILE = "student.json", "encoder.keras"  # converters.models.rec_student


def is_recommendation_model(model: str | Path) -> bool:
    """A recommendation bundle, a student directory, a teacher ``.keras`` file or a directory holding one."""
    path = Path(model)
    if (path / MANIFEST_NAME).is_file():
        return Manifest.load(path / MANIFEST_NAME).task is Task.RECOMMENDATION
    return (
        (path.is_file() and path.suffix == ".keras")
        or (path / TEACHER_FILE).is_file()
        or (path / STUDENT_FILE).is_file()
    )


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


def make_reference(
    model: str | Path, dataset: RecDataset, spec: RecDatasetSpec, out: Path, *, bundle_out: Path | None = None
) -> RecReference:
    """Run a recommendation bundle, a saved student or the teacher on the TensorFlow path; save the reference.

    A student or teacher is packaged first as a SavedModel bundle (fp32 table) in ``bundle_out``, or in a
    temporary directory.

    Raises:
        ConfigError: the model is none of these, or does not fit the dataset.
        ConversionError: the teacher cannot be split into encoder and item table.
        BundleError, ManifestError, BackendUnavailableError, InferenceError: see ``Recommender.create``.
    """
    from sdk.qa.rec_reference_make import make_rec_reference

    path = Path(model)
    if (path / MANIFEST_NAME).is_file():
        if not is_recommendation_bundle(path):
            raise ConfigError(f"--model {path}: not a recommendation bundle; pass one, a student or a teacher")
        register_layers([path])
        return make_rec_reference(path, dataset, spec, out, log=log)
    with tempfile.TemporaryDirectory(prefix="shelfedge-rec-model-") as tmp:
        bundle, identity = _package_model(path, dataset, bundle_out or Path(tmp))
        return make_rec_reference(bundle, dataset, spec, out, model=identity, log=log)


def _package_model(path: Path, dataset: RecDataset, out: Path) -> tuple[Bundle, dict[str, object]]:
    """A student directory or the teacher as a SavedModel bundle in ``out``, and the info naming the model."""
    from converters.training.rec_teacher_bundle import package_student, package_teacher

    def say(line: str) -> None:
        log(f"[reference] {line}")

    if (path / STUDENT_FILE).is_file():
        file, kind = path / ENCODER_FILE, "student"
        log(f"[reference] packaging the student {path} as a SavedModel bundle (fp32 item table)")
        bundle = package_student(path, dataset, out, progress=say)[ModelFormat.SAVEDMODEL]
    else:
        file, kind = (path / TEACHER_FILE if path.is_dir() else path), "teacher"
        if not file.is_file():
            raise ConfigError(
                f"--model {path}: not a bundle, a student directory ({STUDENT_FILE}) or a teacher (.keras file or "
                f"a directory holding {TEACHER_FILE})"
            )
        log(f"[reference] packaging the teacher {file} as a SavedModel bundle")
        bundle = package_teacher(file, dataset, out, progress=say)[ModelFormat.SAVEDMODEL]
    sha = sha256_tree(file)
    identity: dict[str, object] = {
        "model": str(path),
        "model_kind": kind,
        "model_name": f"{dataset.name} {kind}",
        "model_sha256": sha,
        "model_source": str(file),
        "model_parent": None,
        "model_file_sha256": sha,
        "format": f"keras (run as the SavedModel bundle {bundle.path.name})",
    }
    return bundle, identity


def reference_cases(reference: RecReference, dataset: str | None) -> EvalCases:
    """The reference's cases, from the dataset it recorded or the one given (same seed, split and limit)."""
    if dataset is None:
        log(f"[parity] opening the reference's dataset again: {reference.dataset.describe()}")
        return reference.dataset.open()[1]
    opened = open_rec_dataset(dataset, seed=reference.dataset.seed, fallback=dataset in NAMED)
    return select_cases(opened, reference.dataset.split, reference.dataset.limit)
