"""Image classification task API: ``ImageClassifier.from_bundle(path).classify(image)``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from sdk import preprocess as pp
from sdk.bundle import Bundle
from sdk.enums import ColorOrder, Device, FallbackPolicy, OutputKind, Runtime, Task
from sdk.errors import ConfigError, InputError
from sdk.loading import Model, load
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo


@dataclasses.dataclass(frozen=True, kw_only=True)
class Category:
    index: int
    label: str
    score: float


@dataclasses.dataclass(frozen=True, kw_only=True)
class Timings:
    """Milliseconds spent per stage; for a batch, the whole batch's time."""

    preprocess_ms: float
    inference_ms: float
    postprocess_ms: float

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms

    def to_dict(self) -> dict[str, float]:
        return {
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "postprocess_ms": round(self.postprocess_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassificationResult:
    categories: tuple[Category, ...]
    timings: Timings
    ran: SessionInfo
    batch_size: int = 1

    @property
    def top1(self) -> Category:
        return self.categories[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": [dataclasses.asdict(c) for c in self.categories],
            "timings": self.timings.to_dict(),
            "batch_size": self.batch_size,
            "ran": self.ran.to_dict(),
        }


def scores_from_output(raw: np.ndarray, output_kind: OutputKind) -> np.ndarray:
    """Class probabilities from a (batch, classes) float output (softmax of logits)."""
    x = raw.astype(np.float32, copy=False)
    if output_kind is OutputKind.PROBABILITIES:
        return x
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


class ImageClassifier:
    """Classifies product images with a bundle on any runtime.

    Create with :meth:`from_bundle`; use as a context manager or call :meth:`close`.
    """

    def __init__(self, model: Model) -> None:
        manifest = model.bundle.manifest
        if manifest.task is not Task.IMAGE_CLASSIFICATION:
            model.close()
            raise ConfigError(
                f"bundle {model.bundle.path} is a {manifest.task.value} model; "
                "ImageClassifier needs an image_classification bundle"
            )
        if manifest.preprocessing is None:
            model.close()
            raise ConfigError(f"bundle {model.bundle.path} has no preprocessing in its manifest; re-export it")
        self.model = model
        self._pre = manifest.preprocessing
        self._input = manifest.inputs[0]
        self._output = manifest.outputs[0]
        self._output_kind = manifest.output_kind
        self._labels = model.bundle.labels

    @classmethod
    def from_bundle(
        cls,
        path: str | Path | Bundle,
        *,
        profile: str | Path | HardwareProfile | None = None,
        runtime: Runtime | str | None = None,
        device: Device | str | None = None,
        fallback: FallbackPolicy | str | None = None,
        threads: int | None = None,
    ) -> "ImageClassifier":
        """Open a classification bundle (see :func:`sdk.load` for what it raises).

        Raises:
            ConfigError: the bundle is not an image classification bundle.
        """
        return cls(
            load(path, profile, runtime=runtime, device=device, fallback=fallback, threads=threads)
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def info(self) -> SessionInfo:
        return self.model.info

    def classify(
        self, image: pp.ImageSource, top_k: int = 5, *, array_color: ColorOrder = ColorOrder.BGR
    ) -> ClassificationResult:
        """Classify one image: a path, encoded bytes, or an HxWxC uint8 array.

        Args:
            image: the image; arrays are BGR (camera frames) unless ``array_color`` says RGB.
            top_k: how many categories to return, best first.

        Raises:
            InputError: the image cannot be decoded or is unusable.
            InferenceError: the runtime failed.
        """
        return self.classify_batch([image], top_k, array_color=array_color)[0]

    def classify_batch(
        self,
        images: Sequence[pp.ImageSource],
        top_k: int = 5,
        *,
        array_color: ColorOrder = ColorOrder.BGR,
    ) -> list[ClassificationResult]:
        """Classify several images in one inference call; timings are the whole batch's.

        Raises:
            InputError: an image cannot be decoded (the message names which one), or the
                list is empty.
            InferenceError: the runtime failed.
        """
        if not images:
            raise InputError("classify_batch got no images; pass at least one")
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, got {top_k}")
        t0 = time.perf_counter()
        tensors = []
        for i, image in enumerate(images):
            try:
                tensors.append(pp.load_and_preprocess(image, self._pre, self._input, array_color=array_color))
            except InputError as e:
                if len(images) == 1:
                    raise
                raise InputError(f"image {i} of the batch: {e}") from e
        batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors, axis=0)
        t1 = time.perf_counter()
        outputs = self.model.run({self._input.name: batch})
        t2 = time.perf_counter()
        raw = outputs[self._output.name]
        if self._output.quantization is not None:
            raw = self._output.quantization.dequantize(raw)
        scores = scores_from_output(raw.reshape(len(images), -1), self._output_kind)
        k = min(top_k, scores.shape[-1])
        results_idx = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
        t3 = time.perf_counter()
        timings = Timings(
            preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3, postprocess_ms=(t3 - t2) * 1e3
        )
        return [
            ClassificationResult(
                categories=tuple(
                    Category(index=int(j), label=self._label(int(j)), score=float(row[j])) for j in idx
                ),
                timings=timings,
                ran=self.info,
                batch_size=len(images),
            )
            for row, idx in zip(scores, results_idx)
        ]

    def _label(self, index: int) -> str:
        return self._labels[index] if index < len(self._labels) else str(index)

    def close(self) -> None:
        self.model.close()

    def __enter__(self) -> "ImageClassifier":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
