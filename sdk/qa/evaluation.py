"""Evaluate a bundle on a labelled image dataset through the public ``sdk.load`` path.

The same function measures converter candidates, backs ``shelfedge eval`` and feeds the
parity harness, so a number in a conversion report is reproduced by loading the bundle.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sdk import preprocess as pp
from sdk.bundle import Bundle
from sdk.classifier import scores_from_output
from sdk.data import ImageDataset
from sdk.enums import Device, FallbackPolicy, Runtime
from sdk.errors import ConfigError
from sdk.loading import load
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class Evaluation:
    """A bundle's float outputs on a dataset, and the accuracy they give."""

    bundle: str
    dataset: str
    logits: np.ndarray  # (N, classes) float32, dequantized
    labels: np.ndarray  # (N,) int
    ran: SessionInfo
    seconds: float

    @property
    def top1(self) -> float:
        return float((self.logits.argmax(1) == self.labels).mean())

    @property
    def top5(self) -> float:
        k = min(5, self.logits.shape[1])
        top = np.argsort(-self.logits, axis=1, kind="stable")[:, :k]
        return float((top == self.labels[:, None]).any(axis=1).mean())

    def agreement(self, other: Evaluation) -> float:
        """Share of images whose top-1 equals ``other``'s (the same images, in order)."""
        if other.logits.shape != self.logits.shape:
            raise ConfigError(
                f"cannot compare {self.bundle} with {other.bundle}: outputs {self.logits.shape} vs {other.logits.shape}"
            )
        return float((self.logits.argmax(1) == other.logits.argmax(1)).mean())

    def summary(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "dataset": self.dataset,
            "images": len(self.labels),
            "top1": round(self.top1, 6),
            "top5": round(self.top5, 6),
            "seconds": round(self.seconds, 2),
            "ran": self.ran.to_dict(),
        }


def preprocess_dataset(bundle: Bundle, dataset: ImageDataset) -> np.ndarray:
    """Every image of ``dataset`` as the bundle's input tensors (one array, model dtype).

    Raises:
        ConfigError: the bundle has no preprocessing.
        InputError: an image cannot be decoded (names the file).
    """
    manifest = bundle.manifest
    if manifest.preprocessing is None:
        raise ConfigError(f"{bundle.path}: the manifest records no preprocessing; re-export the bundle")
    spec = manifest.inputs[0]
    # One image decoded at a time: a full-size photo set would not fit in memory decoded.
    return np.concatenate([pp.load_and_preprocess(path, manifest.preprocessing, spec) for path in dataset.paths])


def evaluate(
    bundle: str | Path | Bundle,
    dataset: ImageDataset,
    *,
    profile: str | Path | HardwareProfile | None = None,
    runtime: Runtime | str | None = None,
    device: Device | str | None = None,
    fallback: FallbackPolicy | str | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Evaluation:
    """Run every image of ``dataset`` through the bundle and collect float logits.

    Raises:
        ConfigError: the bundle's outputs do not match the dataset's classes.
        BundleError, ManifestError, BackendUnavailableError, InferenceError: see :func:`sdk.load`.
        InputError: an image cannot be decoded.
    """
    started = time.perf_counter()
    opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    manifest = opened.manifest
    classes = manifest.outputs[0].shape[-1]
    if classes != len(dataset.class_names):
        raise ConfigError(
            f"{opened.path} has {classes} outputs but {dataset.root} has {len(dataset.class_names)} classes; "
            "evaluate on the dataset the model was trained for"
        )
    tensors = preprocess_dataset(opened, dataset)
    out_spec = manifest.outputs[0]
    chunks = []
    with load(opened, profile, runtime=runtime, device=device, fallback=fallback) as model:
        name = manifest.inputs[0].name
        for start in range(0, len(tensors), batch_size):
            raw = model.run({name: tensors[start : start + batch_size]})[out_spec.name]
            if out_spec.quantization is not None:
                raw = out_spec.quantization.dequantize(raw)
            chunks.append(np.asarray(raw, np.float32).reshape(raw.shape[0], -1))
            if progress:
                progress(min(start + batch_size, len(tensors)), len(tensors))
        info = model.info
    logits = np.concatenate(chunks)
    # Probability outputs are compared as log-probabilities so argmax and KL stay meaningful.
    if manifest.output_kind.value == "probabilities":
        logits = np.log(np.clip(scores_from_output(logits, manifest.output_kind), 1e-12, None))
    return Evaluation(
        bundle=str(opened.path),
        dataset=f"{dataset.root}:{dataset.split}",
        logits=logits,
        labels=np.asarray(dataset.labels),
        ran=info,
        seconds=time.perf_counter() - started,
    )
