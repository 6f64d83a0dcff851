"""Making a recommendation reference: a bundle's scores on every case, on the TensorFlow reference path.

The model runs through :class:`sdk.recommender.Recommender` (``scores(history)``: the window rules
an app gets), opened with the ``server-gpu-reference`` profile: the GPU when TensorFlow sees one,
else the CPU in fp32, and the saved info says which (``Recommender.info``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle
from sdk.enums import Runtime
from sdk.errors import ConfigError
from sdk.interaction_splits import EvalCases
from sdk.progress import Log
from sdk.qa.rec_reference import RecReference, load_rec_reference, save_rec_reference
from sdk.qa.rec_reference_spec import RecDatasetSpec, select_cases
from sdk.rec_datasets import RecDataset
from sdk.recommender import Recommender, RecommenderOptions
from sdk.recommender_items import read_item_files

__all__ = ["REFERENCE_PROFILE", "make_rec_reference", "model_identity", "score_cases"]

REFERENCE_PROFILE = "server-gpu-reference"
_PROGRESS_SECONDS = 10.0


def score_cases(recommender: Recommender, cases: EvalCases, *, log: Log, label: str) -> np.ndarray:
    """Every item's score for every case's history: (cases, n_items) float32, in case order.

    Raises:
        InferenceError: the runtime failed.
    """
    ids = recommender.catalogue.ids
    scores = np.empty((len(cases), len(ids)), np.float32)
    started = last = time.perf_counter()
    for i, history in enumerate(cases.histories):
        scores[i] = recommender.scores([ids[j] for j in history])
        now = time.perf_counter()
        if now - last >= _PROGRESS_SECONDS:
            log(f"{label} {i + 1:,}/{len(cases):,} cases ({(now - started) / (i + 1) * 1e3:.2f} ms each)")
            last = now
    return scores


def model_identity(bundle: Bundle) -> dict[str, Any]:
    """What names the model a bundle holds: its lineage root (source sha256), parent and model file hash."""
    manifest = bundle.manifest
    return {
        "model": str(bundle.path),
        "model_kind": "bundle",
        "model_name": manifest.name,
        "model_sha256": manifest.provenance.source_sha256,
        "model_source": manifest.provenance.source,
        "model_parent": manifest.provenance.parent,
        "model_file_sha256": manifest.files[manifest.model_file],
        "format": manifest.format.value,
        "precision": manifest.precision.value,
    }


def make_rec_reference(
    bundle: str | Path | Bundle,
    dataset: RecDataset,
    spec: RecDatasetSpec,
    out_dir: str | Path,
    *,
    model: Mapping[str, Any] | None = None,
    overwrite: bool = True,
    log: Log = print,
) -> RecReference:
    """Score the cases ``spec`` selects from ``dataset`` with a recommendation bundle on TensorFlow; save.

    Args:
        bundle: a recommendation bundle TensorFlow runs (SavedModel or Keras).
        dataset: the opened dataset ``spec`` describes.
        spec: which cases (split, limit) and how to open them again.
        out_dir: the reference directory.
        model: info entries naming the model when the bundle is a stand-in (a teacher packaged
            for the run: its file and sha256), replacing the bundle's own.
        overwrite: replace a reference already there.
        log: progress lines.

    Raises:
        ConfigError: the bundle is not a recommendation bundle of this catalogue, or TensorFlow
            cannot open its format.
        BundleError, ManifestError, BackendUnavailableError, InferenceError: see ``Recommender.create``.
    """
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    rec_spec = opened.manifest.recommendation
    if rec_spec is None:
        raise ConfigError(f"{opened.path}: not a recommendation bundle; pass one made by package_recommender")
    cases = select_cases(dataset, spec.split, spec.limit)
    options = RecommenderOptions(profile=REFERENCE_PROFILE, runtime=Runtime.TENSORFLOW, fallback="record")
    with Recommender.create(opened, options) as recommender:
        if len(recommender.catalogue) != spec.n_items:
            raise ConfigError(
                f"{opened.path}: {len(recommender.catalogue):,} items, the dataset {spec.n_items:,}; "
                "pass the bundle made for this dataset"
            )
        ran = recommender.info
        log(f"[reference] {opened.path.name} on {ran.runtime.value} {ran.actual_device}: {spec.describe()}")
        started = time.perf_counter()
        scores = score_cases(recommender, cases, log=log, label="[reference]")
        seconds = time.perf_counter() - started
    items = read_item_files(opened.path, rec_spec)
    info = {
        "runtime": ran.runtime.value,
        "device": ran.actual_device,
        "requested_device": ran.requested_device.value,
        "fell_back": ran.fell_back,
        "note": "no GPU present: the reference ran on the CPU in fp32" if ran.fell_back else "ran on the GPU",
        "runtime_version": ran.runtime_version,
        "session_precision": ran.precision.value,
        "table_precision": rec_spec.table_precision.value,
        "max_len": rec_spec.max_len,
        "dim": rec_spec.dim,
        "seconds": round(seconds, 2),
        **model_identity(opened),
        **dict(model or {}),
    }
    path = save_rec_reference(
        out_dir,
        dataset=spec,
        cases=cases,
        scores=scores,
        max_len=rec_spec.max_len,
        info=info,
        item_table=items.dequantized(),
        item_bias=items.bias,
        overwrite=overwrite,
    )
    log(f"[reference] saved {len(cases):,} cases to {path} ({info['note']}, {seconds:.1f} s)")
    return load_rec_reference(path)
