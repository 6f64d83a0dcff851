"""Image classification task API.

``ImageClassifier.create(bundle, ClassifierOptions(...))``, or the short form
``ImageClassifier.from_bundle(path, runtime=..., top_k=...)``; then ``classify(image)``.
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
from sdk.enums import ColorOrder, Device, FallbackPolicy, OutputKind, Runtime, Task
from sdk.errors import ConfigError, InferenceError, InputError, ManifestError
from sdk.loading import Model
from sdk.profiles import HardwareProfile
from sdk.runtime import SessionInfo
from sdk.task_options import check_session_fields, is_positive_int, load_for, options_or_default
from sdk.unknown_spec import EMBEDDING_OUTPUT, l2_normalise, load_centroids, nearest_centroid_distance


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClassifierOptions:
    """How to open a bundle and classify with it: the MediaPipe Tasks shape of options.

    Checked when constructed; strings for ``runtime``, ``device`` and ``fallback`` are
    parsed case-insensitively and stored as their enums. Immutable, so one instance may be
    shared across threads and classifiers.

    Attributes:
        profile: hardware profile id (``"x86-kiosk-cpu"``), YAML path or loaded profile; its
            runtime, device, runtime options and fallback policy apply unless overridden below.
        runtime: ``litert``, ``openvino``, ``onnxruntime`` or ``tensorflow`` (default: the
            profile's when it can open the bundle, else the first runtime for its format).
        device: ``CPU``, ``GPU``, ``NPU``, ``TPU`` or ``AUTO`` (default: the profile's, else CPU).
        fallback: ``strict`` (fail when the device is absent) or ``record`` (run on the fallback
            device and say so in ``info``); default: the profile's, else ``record``.
        threads: inference threads (default: the profile's, else the runtime's own).
        top_k: categories :meth:`ImageClassifier.classify` returns when not told, best first.
        concurrency: how many calls from different threads may run the model at once on the one
            shared session; more wait their turn. LiteRT: a pool of up to N interpreters
            (default 1, a lock); OpenVINO: up to N infer requests on the compiled model (default:
            the profile's ``num_requests``, else the model's optimal number: 1 under the LATENCY
            hint, one per stream under THROUGHPUT); ONNX Runtime and TensorFlow: at most N at
            once (default: no limit, their run is thread-safe). Each interpreter or request is
            made on first need and holds its own buffers; with ``threads`` each uses that many.

    Raises:
        ConfigError: a field has the wrong type or an unknown value; the message names the
            field and what to pass instead.
    """

    profile: str | Path | HardwareProfile | None = None
    runtime: Runtime | str | None = None
    device: Device | str | None = None
    fallback: FallbackPolicy | str | None = None
    threads: int | None = None
    top_k: int = 5
    concurrency: int | None = None

    def __post_init__(self) -> None:
        check_session_fields(self)
        if not is_positive_int(self.top_k):
            raise ConfigError(f"ClassifierOptions.top_k is {self.top_k!r}; pass a positive integer such as top_k=3")


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
    """The categories of one image, best first.

    ``unknown`` is true when the bundle's calibrated rule (manifest section ``unknown``) says the
    photo is not one of the trained products: the app should not show ``top1`` as the answer.
    Bundles without the rule never say unknown.
    """

    categories: tuple[Category, ...]
    timings: Timings
    ran: SessionInfo
    batch_size: int = 1
    unknown: bool = False

    def is_known(self) -> bool:
        return not self.unknown

    @property
    def top1(self) -> Category:
        return self.categories[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "categories": [dataclasses.asdict(c) for c in self.categories],
            "timings": self.timings.to_dict(),
            "batch_size": self.batch_size,
            "unknown": self.unknown,
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

    Create with :meth:`create` (options object) or :meth:`from_bundle` (keywords); use as a
    context manager or call :meth:`close`.

    Thread safety: safe to share across threads. ``classify`` and ``classify_batch`` may be
    called from any number of threads at once on one instance, and each call gets its own
    answer: decoding, preprocessing, postprocessing and timings are per call, and the one
    runtime session runs every call on its own interpreter / infer request (LiteRT, OpenVINO:
    a pool sized by ``ClassifierOptions.concurrency``; a call that finds all busy waits, it
    never shares one) or on a backend whose run is thread-safe (ONNX Runtime, TensorFlow).
    ``info.details["concurrency"]`` says which. The default on LiteRT is one interpreter, so
    threads take turns: raise ``concurrency`` for parallel calls. ``close`` waits for the calls
    in flight; calls after it, or waiting when it came, raise InferenceError. Results and
    options are immutable and may be shared freely.
    """

    def __init__(self, model: Model, options: ClassifierOptions | None = None) -> None:
        """Wrap an opened model; prefer :meth:`create`, which opens it from a bundle.

        Raises:
            ConfigError: the model is not an image classification bundle with preprocessing
                (the model is closed before raising).
            ManifestError: its 'unknown' rule needs centroids or an embedding output that do
                not fit the bundle (the model is closed before raising).
        """
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
        self._options = options if options is not None else ClassifierOptions()
        self._pre = manifest.preprocessing
        self._input = manifest.inputs[0]
        # The logits, by name: a bundle may carry an embedding output beside them.
        self._output = next((o for o in manifest.outputs if o.name != EMBEDDING_OUTPUT), manifest.outputs[0])
        self._output_kind = manifest.output_kind
        self._labels = model.bundle.labels
        self._unknown = manifest.unknown
        self._embedding = next((o for o in manifest.outputs if o.name == EMBEDDING_OUTPUT), None)
        self._centroids = self._load_centroids(model)

    @classmethod
    def create(cls, bundle: str | Path | Bundle, options: ClassifierOptions | None = None) -> ImageClassifier:
        """Open a classification bundle with ``options`` (defaults: see :class:`ClassifierOptions`).

        Raises:
            ConfigError: ``options`` is not a ClassifierOptions, the bundle is not an image
                classification bundle, or the runtime cannot open its format.
            BundleError: the bundle is missing or tampered with.
            ManifestError: the manifest breaks the schema or disagrees with the model file.
            ProfileError: the profile is unknown or malformed.
            BackendUnavailableError: the runtime is not installed, or the device is absent
                under a strict fallback policy.
            InferenceError: the runtime could not load the model file.
        """
        options = options_or_default(options, ClassifierOptions, "ImageClassifier")
        model = load_for(bundle, options)
        return cls(model, options)

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
        top_k: int = 5,
        concurrency: int | None = None,
    ) -> ImageClassifier:
        """The short form of :meth:`create`: the keywords are :class:`ClassifierOptions` fields.

        Raises:
            ConfigError: a keyword has a wrong type or value (naming it), or as :meth:`create`.
            BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError:
                as :meth:`create`.
        """
        options = ClassifierOptions(
            profile=profile,
            runtime=runtime,
            device=device,
            fallback=fallback,
            threads=threads,
            top_k=top_k,
            concurrency=concurrency,
        )
        return cls.create(path, options)

    @property
    def options(self) -> ClassifierOptions:
        return self._options

    @property
    def labels(self) -> tuple[str, ...]:
        return self._labels

    @property
    def info(self) -> SessionInfo:
        """What actually ran: runtime and version, requested vs actual device, precision, fallback."""
        return self.model.info

    def classify(
        self, image: pp.ImageSource, top_k: int | None = None, *, array_color: ColorOrder = ColorOrder.BGR
    ) -> ClassificationResult:
        """Classify one image: a path, encoded bytes, or an HxWxC uint8 array.

        Args:
            image: the image; arrays are BGR (camera frames) unless ``array_color`` says RGB.
            top_k: how many categories to return, best first (default: the options' ``top_k``).

        Raises:
            InputError: the image cannot be decoded or is unusable, or ``top_k`` is not a
                positive integer.
            InferenceError: the runtime failed, or the classifier is closed.
            ManifestError: the model returns another number of classes than the bundle has labels.
        """
        return self.classify_batch([image], top_k, array_color=array_color)[0]

    def classify_batch(
        self,
        images: Sequence[pp.ImageSource],
        top_k: int | None = None,
        *,
        array_color: ColorOrder = ColorOrder.BGR,
    ) -> list[ClassificationResult]:
        """Classify several images in one inference call; timings are the whole batch's.

        Raises:
            InputError: an image cannot be decoded (the message names which one), the list
                is empty, or ``top_k`` is not a positive integer.
            InferenceError: the runtime failed, or the classifier is closed.
            ManifestError: the model returns another number of classes than the bundle has labels.
        """
        if not images:
            raise InputError("classify_batch got no images; pass at least one")
        k_wanted = self._options.top_k if top_k is None else top_k
        if isinstance(k_wanted, np.integer):
            k_wanted = int(k_wanted)
        if not is_positive_int(k_wanted):
            raise InputError(f"top_k must be a positive integer, got {k_wanted!r}; pass e.g. top_k=3")
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
        raw = self._checked_output(outputs[self._output.name], len(images))
        if self._output.quantization is not None:
            raw = self._output.quantization.dequantize(raw)
        scores = scores_from_output(raw, self._output_kind)
        unknown = self._unknown_rows(scores, outputs, len(images))
        k = min(k_wanted, scores.shape[-1])
        results_idx = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
        t3 = time.perf_counter()
        timings = Timings(preprocess_ms=(t1 - t0) * 1e3, inference_ms=(t2 - t1) * 1e3, postprocess_ms=(t3 - t2) * 1e3)
        return [
            ClassificationResult(
                categories=tuple(Category(index=int(j), label=self._label(int(j)), score=float(row[j])) for j in idx),
                timings=timings,
                ran=self.info,
                batch_size=len(images),
                unknown=bool(flag),
            )
            for row, idx, flag in zip(scores, results_idx, unknown, strict=True)
        ]

    def _load_centroids(self, model: Model) -> np.ndarray | None:
        """The distance rule's centroids, checked against the labels and the embedding output.

        Raises:
            ManifestError: the rule needs an embedding output the bundle lacks, or the centroids
                file does not fit (the model is closed before raising).
        """
        if self._unknown is None or self._unknown.centroids_file is None:
            return None
        try:
            if self._embedding is None or self._embedding.shape[-1] <= 0:
                raise ManifestError(
                    f"bundle {model.bundle.path}: its 'unknown' rule measures embedding distances but the model "
                    f"has no fixed-size {EMBEDDING_OUTPUT!r} output; export it with with_embedding_output(model)"
                )
            return load_centroids(model.bundle.path, self._unknown, len(self._labels), self._embedding.shape[-1])
        except ManifestError:
            model.close()
            raise

    def _unknown_rows(self, scores: np.ndarray, outputs: dict[str, np.ndarray], batch: int) -> np.ndarray:
        """Per image, whether the bundle's calibrated rule calls it unknown (all false without one)."""
        if self._unknown is None:
            return np.zeros(batch, bool)
        distance = None
        if self._centroids is not None and self._embedding is not None:
            raw = outputs[self._embedding.name].reshape(batch, -1)
            if self._embedding.quantization is not None:
                raw = self._embedding.quantization.dequantize(raw)
            distance = nearest_centroid_distance(l2_normalise(raw), self._centroids)
        return self._unknown.rejects(scores.max(axis=-1), distance)

    def _checked_output(self, raw: np.ndarray, batch: int) -> np.ndarray:
        """The output as (batch, classes), its class count checked against the labels.

        Checked on every call: a manifest whose output shape is dynamic (-1 classes) leaves the
        count open when the bundle is opened, and a model may answer differently per input.

        Raises:
            InferenceError: the output cannot be split into ``batch`` rows.
            ManifestError: the model returns another number of classes than there are labels.
        """
        if raw.size == 0 or raw.size % batch:
            raise InferenceError(
                f"bundle {self.model.bundle.path}: output {self._output.name!r} has shape {raw.shape} for a batch "
                f"of {batch}; a classifier output is (batch, classes): re-export the model"
            )
        raw = raw.reshape(batch, -1)
        if self._labels and raw.shape[1] != len(self._labels):
            raise ManifestError(
                f"bundle {self.model.bundle.path}: the model returns {raw.shape[1]} scores per image but "
                f"{self.model.bundle.manifest.labels_file!r} has {len(self._labels)} labels (the manifest's "
                f"output shape {self._output.shape} leaves the class count open); re-package the bundle with "
                "one label per output class"
            )
        return raw

    def _label(self, index: int) -> str:
        return self._labels[index] if index < len(self._labels) else str(index)

    def close(self) -> None:
        """Release the runtime session; later calls raise InferenceError. Closing twice is fine."""
        self.model.close()

    def __enter__(self) -> ImageClassifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
