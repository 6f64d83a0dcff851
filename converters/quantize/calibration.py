"""Calibration sets: class-balanced samples of training data, preprocessed exactly as the
manifest records, with a hash so a bundle's provenance names the data that calibrated it.

Image models take float32 tensors; a recommendation encoder takes int32 item ids (index + 1,
left-padded, ``converters.models.sasrec.pad_histories``). Ids are never quantized (only the
weights and activations behind the lookup are), so a set keeps its model's input dtype:
:data:`DTYPES` lists the two a set may hold, and :meth:`CalibrationSet.check_matches` refuses a
set whose dtype is not the model input's.
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

# What a calibration set may hold: float32 (images, features) or int32 (item ids of a history).
DTYPES = ("float32", "int32")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CalibrationSet:
    """Model-input tensors, one per sample (image or history), plus where they came from."""

    # (N, H, W, C) or (N, C, H, W) float32, already normalised; or (N, max_len) int32 item ids
    tensors: np.ndarray
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
            # Image sets count images; an int32 set holds item-id histories.
            ("histories" if self.tensors.dtype.name == "int32" else "images"): len(self),
            "per_class": self.per_class,
            "sha256": self.sha256,
            "source": self.source,
            "shape": list(self.tensors.shape[1:]),
            "dtype": self.tensors.dtype.name,
        }

    def check_matches(self, spec: TensorSpec, where: str) -> None:
        """Refuse a set whose tensors do not fit the model input, before any work.

        Raises:
            ConfigError: empty set, sample shape (size/channels/layout) differs from ``spec``, or
                the tensors' dtype is not the input's (float32 images for an int32 id input).
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
        if spec.dtype in DTYPES and spec.dtype != self.tensors.dtype.name:
            raise ConfigError(
                f"{where}: calibration tensors are {self.tensors.dtype.name} but the model input {spec.name!r} "
                f"takes {spec.dtype}; build the set from the data the model reads (item-id histories for an "
                "int32 input, preprocessed images for a float32 one)"
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

    Args:
        tensors: a float32 batch (images, features) or an int32 batch (item-id histories, the
            recommendation encoder's input), first axis the samples.

    Raises:
        ConfigError: not a float32 or int32 batch (N, ...) (an empty one is refused where it is used).
    """
    tensors = np.asarray(tensors)
    if tensors.ndim < 2 or tensors.dtype.name not in DTYPES:
        raise ConfigError(
            f"calibration tensors must be a float32 or int32 batch (N, ...), got {tensors.dtype} {tensors.shape}"
        )
    labels = np.zeros(len(tensors), np.int32) if labels is None else np.asarray(labels, np.int32)
    return CalibrationSet(
        tensors=tensors,
        labels=labels,
        sha256=hashlib.sha256(tensors.tobytes()).hexdigest(),
        source=source,
        per_class=0,
    )
