"""Image embedding task API: a product photo -> an L2-normalised feature vector.

``ImageEmbedder.create(bundle, EmbedderOptions(...))``, or the short form
``ImageEmbedder.from_bundle(path, runtime=...)``; then ``embed(image)``. The bundle is a
classifier exported with its embedding output (``converters/models/embedding.py``
``with_embedding_output``) or an ``image_embedding`` bundle. Preprocessing is the classifier's,
read from the same manifest, so the vectors of one photo match across the two tasks.
"""

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
from sdk.classifier import Timings
from sdk.enums import ColorOrder, Device, FallbackPolicy, OutputKind, Runtime, Task
from sdk.errors import ConfigError, InferenceError, InputError
from sdk.loading import Model
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo
from sdk.task_options import check_session_fields, load_for, options_or_default
from sdk.tensors import TensorSpec
from sdk.unknown_spec import EMBEDDING_OUTPUT, l2_normalise


@dataclasses.dataclass(frozen=True, kw_only=True)
class EmbedderOptions:
    """How to open a bundle and embed with it; the session fields of ``ClassifierOptions``.

    Immutable, so one instance may be shared across threads and embedders.

    Attributes:
        profile, runtime, device, fallback, threads, concurrency: as in
            :class:`sdk.classifier.ClassifierOptions`.

    Raises:
        ConfigError: a field has the wrong type or an unknown value; the message names the
            field and what to pass instead.
    """

    profile: str | Path | HardwareProfile | None = None
    runtime: Runtime | str | None = None
    device: Device | str | None = None
    fallback: FallbackPolicy | str | None = None
    threads: int | None = None
    concurrency: int | None = None

    def __post_init__(self) -> None:
        check_session_fields(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Embedding:
    """One image's embedding: a unit-length float32 vector (cosine similarity is a dot product)."""

    vector: np.ndarray
    timings: Timings
    ran: SessionInfo
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "vector": [round(float(v), 6) for v in self.vector],
            "timings": self.timings.to_dict(),
            "batch_size": self.batch_size,
            "ran": self.ran.to_dict(),
        }


def embedding_output(bundle: Bundle) -> TensorSpec:
    """The embedding output of ``bundle``: the one named ``embedding``, or an embedding bundle's only output.

    Raises:
        ConfigError: the bundle has no embedding output; the message says how to export one.
    """
    manifest = bundle.manifest
    if manifest.task is Task.IMAGE_EMBEDDING and manifest.output_kind is OutputKind.EMBEDDING:
        return manifest.outputs[0]
    for output in manifest.outputs:
        if output.name == EMBEDDING_OUTPUT:
            return output
    names = ", ".join(repr(o.name) for o in manifest.outputs)
    raise ConfigError(
        f"bundle {bundle.path} has no {EMBEDDING_OUTPUT!r} output (its outputs: {names}); re-export the model "
        "with its embedding: converters.models.embedding.with_embedding_output(model), then "
        "converters.export.pipeline.export(...)"
    )


class ImageEmbedder:
    """Embeds product images with a bundle on any runtime.

    Create with :meth:`create` (options object) or :meth:`from_bundle` (keywords); use as a
    context manager or call :meth:`close`.

    Thread safety: safe to share across threads, as :class:`sdk.ImageClassifier`: decoding,
    preprocessing and normalising are per call, and the one runtime session runs each call on
    its own interpreter / infer request (a pool sized by ``EmbedderOptions.concurrency``) or on a
    backend whose run is thread-safe. ``close`` waits for the calls in flight; calls after it
    raise InferenceError. Results and options are immutable (the vector is read-only).
    """

    def __init__(self, model: Model, options: EmbedderOptions | None = None) -> None:
        """Wrap an opened model; prefer :meth:`create`, which opens it from a bundle.

        Raises:
            ConfigError: the bundle is not an image bundle with preprocessing, or has no
                embedding output (the model is closed before raising).
        """
        manifest = model.bundle.manifest
        try:
            if manifest.task not in (Task.IMAGE_CLASSIFICATION, Task.IMAGE_EMBEDDING):
                raise ConfigError(
                    f"bundle {model.bundle.path} is a {manifest.task.value} model; ImageEmbedder needs an "
                    "image_classification bundle with an embedding output, or an image_embedding bundle"
                )
            if manifest.preprocessing is None:
                raise ConfigError(f"bundle {model.bundle.path} has no preprocessing in its manifest; re-export it")
            self._output = embedding_output(model.bundle)
        except ConfigError:
            model.close()
            raise
        self.model = model
        self._options = options if options is not None else EmbedderOptions()
        self._pre = manifest.preprocessing
        self._input = manifest.inputs[0]

    @classmethod
    def create(cls, bundle: str | Path | Bundle, options: EmbedderOptions | None = None) -> ImageEmbedder:
        """Open a bundle with an embedding output with ``options`` (defaults: see :class:`EmbedderOptions`).

        Raises:
            ConfigError: ``options`` is not an EmbedderOptions, the bundle has no embedding
                output (the message says how to export one), or the runtime cannot open its format.
            BundleError: the bundle is missing or tampered with.
            ManifestError: the manifest breaks the schema or disagrees with the model file.
            ProfileError: the profile is unknown or malformed.
            BackendUnavailableError: the runtime is not installed, or the device is absent
                under a strict fallback policy.
            InferenceError: the runtime could not load the model file.
        """
        options = options_or_default(options, EmbedderOptions, "ImageEmbedder")
        return cls(load_for(bundle, options), options)

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
        concurrency: int | None = None,
    ) -> ImageEmbedder:
        """The short form of :meth:`create`: the keywords are :class:`EmbedderOptions` fields.

        Raises:
            ConfigError, BundleError, ManifestError, ProfileError, BackendUnavailableError,
                InferenceError: as :meth:`create`.
        """
        options = EmbedderOptions(
            profile=profile, runtime=runtime, device=device, fallback=fallback, threads=threads, concurrency=concurrency
        )
        return cls.create(path, options)

    @property
    def options(self) -> EmbedderOptions:
        return self._options

    @property
    def dimension(self) -> int:
        """The embedding length (-1 when the manifest leaves it open)."""
        return self._output.shape[-1] if self._output.shape else -1

    @property
    def info(self) -> SessionInfo:
        """What actually ran: runtime and version, requested vs actual device, precision, fallback."""
        return self.model.info

    def embed(self, image: pp.ImageSource, *, array_color: ColorOrder = ColorOrder.BGR) -> Embedding:
        """Embed one image: a path, encoded bytes, or an HxWxC uint8 array (BGR unless ``array_color``).

        Raises:
            InputError: the image cannot be decoded or is unusable.
            InferenceError: the runtime failed, or the embedder is closed.
        """
        return self.embed_batch([image], array_color=array_color)[0]

    def embed_batch(
        self, images: Sequence[pp.ImageSource], *, array_color: ColorOrder = ColorOrder.BGR
    ) -> list[Embedding]:
        """Embed several images in one inference call; timings are the whole batch's.

        Raises:
            InputError: an image cannot be decoded (the message names which one), or the list is empty.
            InferenceError: the runtime failed, the output is not (batch, d), or the embedder is closed.
        """
        if not images:
            raise InputError("embed_batch got no images; pass at least one")
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
        raw = self.model.run({self._input.name: batch})[self._output.name]
        t2 = time.perf_counter()
        if raw.size == 0 or raw.size % len(images):
            raise InferenceError(
                f"bundle {self.model.bundle.path}: output {self._output.name!r} has shape {raw.shape} for a batch "
                f"of {len(images)}; an embedding output is (batch, d): re-export the model"
            )
        raw = raw.reshape(len(images), -1)
        if self._output.quantization is not None:
            raw = self._output.quantization.dequantize(raw)
        vectors = l2_normalise(raw)
        vectors.setflags(write=False)
        t3 = time.perf_counter()
        timings = Timings(preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3, postprocess_ms=(t3 - t2) * 1e3)
        return [Embedding(vector=v, timings=timings, ran=self.info, batch_size=len(images)) for v in vectors]

    def close(self) -> None:
        """Release the runtime session; later calls raise InferenceError. Closing twice is fine."""
        self.model.close()

    def __enter__(self) -> ImageEmbedder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
