"""Calibration sets: class-balanced samples of training data, preprocessed exactly as the
manifest records, with a hash so a bundle's provenance names the data that calibrated it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator

import numpy as np

from sdk import preprocess as pp
from sdk.data import ImageDataset
from sdk.enums import Layout
from sdk.errors import ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.tensors import TensorSpec


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationSet:
    """Float32 model-input tensors, one per image, plus where they came from."""

    tensors: np.ndarray  # (N, H, W, C) or (N, C, H, W) float32, already normalised
    labels: np.ndarray  # (N,) int32, for accuracy-aware steps
    sha256: str  # over the tensors' bytes: the same images + preprocessing -> the same hash
    source: str
    per_class: int

    def __len__(self) -> int:
        return int(self.tensors.shape[0])

    def batches(self, batch_size: int = 1) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch_size):
            yield self.tensors[start : start + batch_size]

    def record(self) -> dict[str, object]:
        """What provenance records about the set."""
        return {
            "images": len(self),
            "per_class": self.per_class,
            "sha256": self.sha256,
            "source": self.source,
            "shape": list(self.tensors.shape[1:]),
        }

    def check_matches(self, spec: TensorSpec, where: str) -> None:
        """Refuse a set whose tensors do not fit the model input, before any work.

        Raises:
            ConfigError: empty set, or sample shape (size/channels/layout) differs from ``spec``.
        """
        if len(self) == 0:
            raise ConfigError(
                f"{where}: the calibration set is empty; give a dataset with images "
                "for the model's classes or raise --calibration-size"
            )
        want = tuple(spec.shape[1:])
        got = tuple(self.tensors.shape[1:])
        if len(want) != len(got) or any(w not in (-1, g) for w, g in zip(want, got, strict=False)):
            raise ConfigError(
                f"{where}: calibration tensors have shape {got} per sample but the model input "
                f"{spec.name!r} takes {want}; build the set with the model's preprocessing "
                "(size, channels, layout)"
            )


def build_calibration_set(
    dataset: ImageDataset,
    preprocessing: Preprocessing,
    *,
    per_class: int,
    channels: int = 3,
    layout: Layout = Layout.NHWC,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> CalibrationSet:
    """Draw ``per_class`` images of every class and preprocess them as the manifest says.

    Raises:
        ConfigError: ``per_class`` < 1 or the dataset is empty.
        InputError: an image cannot be decoded (names the file).
    """
    if per_class < 1:
        raise ConfigError(f"calibration per_class must be at least 1, got {per_class}")
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.root}: the {dataset.split} split has no images to calibrate with")
    chosen = dataset.balanced(per_class, seed=seed)
    h, w = preprocessing.size
    shape = (-1, h, w, channels) if layout is Layout.NHWC else (-1, channels, h, w)
    spec = TensorSpec(name="calibration", shape=shape, dtype="float32", layout=layout)
    tensors = np.empty((len(chosen), *shape[1:]), np.float32)
    for i, path in enumerate(chosen.paths):
        try:
            tensors[i] = pp.load_and_preprocess(path, preprocessing, spec)[0]
        except InputError as e:
            raise InputError(f"calibration image {path}: {e}") from e
        if progress and (i + 1) % 50 == 0:
            progress(i + 1, len(chosen))
    digest = hashlib.sha256(tensors.tobytes()).hexdigest()
    return CalibrationSet(
        tensors=tensors,
        labels=np.asarray(chosen.labels, np.int32),
        sha256=digest,
        source=f"{dataset.root}:{dataset.split}",
        per_class=per_class,
    )


def from_arrays(tensors: np.ndarray, labels: np.ndarray | None = None, source: str = "arrays") -> CalibrationSet:
    """A calibration set from ready tensors (tests, or callers with their own pipeline).

    Raises:
        ConfigError: not a float32 batch of at least one sample.
    """
    tensors = np.asarray(tensors)
    if tensors.ndim < 2 or tensors.dtype != np.float32:
        raise ConfigError(f"calibration tensors must be a float32 batch (N, ...), got {tensors.dtype} {tensors.shape}")
    labels = np.zeros(len(tensors), np.int32) if labels is None else np.asarray(labels, np.int32)
    return CalibrationSet(
        tensors=tensors,
        labels=labels,
        sha256=hashlib.sha256(tensors.tobytes()).hexdigest(),
        source=source,
        per_class=0,
    )
