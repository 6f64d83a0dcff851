"""The bundle manifest: a strict, versioned schema that is the single source of truth.

A runtime reads everything it needs from here (format, tensors, preprocessing,
labels); nothing is ever guessed from file names.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from sdk._json_limits import parse_json_limited, read_json_limited
from sdk._strict import (
    StrictReader,
    as_float,
    as_int,
    as_int_pair,
    as_items,
    as_list,
    as_relative_path,
    as_sha256_map,
    as_str,
    as_str_dict,
)
from sdk.encryption_spec import EncryptionSpec
from sdk.enums import ColorOrder, Interpolation, Layout, ModelFormat, OutputKind, Precision, ResizeMode, Task
from sdk.errors import ManifestError
from sdk.rec_manifest import RecommendationSpec
from sdk.tensors import Quantization, TensorSpec
from sdk.unknown_spec import UnknownRule

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
# Sane bounds on preprocessing: a model input side, the crop (resize target = size / crop),
# and normalisation values in 0..255 pixel units.
MAX_INPUT_SIDE = 4096
MIN_CROP_FRACTION = 0.25
MAX_ABS_MEAN = 1e4
MIN_STD, MAX_STD = 1e-4, 1e4


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    ``mean`` and ``std`` are in 0..255 pixel units and in the model's colour order:
    ``x = (pixel - mean) / std``. Layout and dtype come from the input TensorSpec.
    """

    size: tuple[int, int]  # (height, width)
    color_order: ColorOrder = ColorOrder.RGB
    resize_mode: ResizeMode = ResizeMode.SHORTER_SIDE_CROP
    crop_fraction: float = 0.875
    interpolation: Interpolation = Interpolation.BILINEAR
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        # Callers may pass lists; store tuples so a manifest equals its JSON round trip.
        for name in ("size", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.size) != 2 or not all(isinstance(v, int) and 1 <= v <= MAX_INPUT_SIDE for v in self.size):
            raise ValueError(f"size must be [height, width] with integers from 1 to {MAX_INPUT_SIDE}, got {self.size}")
        if not MIN_CROP_FRACTION <= self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in [{MIN_CROP_FRACTION}, 1], got {self.crop_fraction}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std must have 3 values (one per channel)")
        # (pixel - mean) / std is tabulated in float32 for pixels 0..255: these bounds keep it finite.
        if not all(math.isfinite(m) and abs(m) <= MAX_ABS_MEAN for m in self.mean):
            raise ValueError(f"mean must be finite numbers within ±{MAX_ABS_MEAN:g} (pixel units), got {self.mean}")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0, got {self.std}")
        if not all(math.isfinite(s) and MIN_STD <= s <= MAX_STD for s in self.std):
            raise ValueError(
                f"std must be finite numbers from {MIN_STD:g} to {MAX_STD:g} (pixel units, > 0), got {self.std}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "color_order": self.color_order.value,
            "resize_mode": self.resize_mode.value,
            "crop_fraction": self.crop_fraction,
            "interpolation": self.interpolation.value,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_reader(cls, r: StrictReader) -> Preprocessing:
        """Parse strictly.

        Raises:
            ManifestError: unknown/missing key or an impossible value (e.g. a std of 0).
        """
        try:
            value = cls(
                size=r.required("size", as_int_pair),
                color_order=r.optional("color_order", ColorOrder.RGB, _enum(ColorOrder, "color_order")),
                resize_mode=r.optional("resize_mode", ResizeMode.SHORTER_SIDE_CROP, _enum(ResizeMode, "resize_mode")),
                crop_fraction=r.optional("crop_fraction", 0.875, as_float),
                interpolation=r.optional(
                    "interpolation", Interpolation.BILINEAR, _enum(Interpolation, "interpolation")
                ),
                mean=r.optional("mean", (0.0, 0.0, 0.0), _channel_values),
                std=r.optional("std", (1.0, 1.0, 1.0), _channel_values),
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Step:
    """One conversion step: what ran, with which config and tool versions."""

    name: str
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tool_versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": dict(self.config),
            "tool_versions": dict(self.tool_versions),
            "seconds": self.seconds,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Provenance:
    """Where the model came from and every step that made it."""

    source: str
    source_sha256: str
    created_utc: str
    steps: tuple[Step, ...] = ()
    tool_versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    parent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "source_sha256": self.source_sha256,
            "created_utc": self.created_utc,
            "parent": self.parent,
            "steps": [s.to_dict() for s in self.steps],
            "tool_versions": dict(self.tool_versions),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeptInFloat:
    """A layer left in higher precision by accuracy control, and why."""

    layer: str
    precision: Precision
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "precision": self.precision.value, "reason": self.reason}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """Everything a runtime needs to load and use a bundle; see DESIGN.md, "Bundle"."""

    name: str
    task: Task
    format: ModelFormat
    precision: Precision
    model_file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    output_kind: OutputKind
    preprocessing: Preprocessing | None
    labels_file: str | None
    provenance: Provenance
    files: Mapping[str, str]  # relative path -> sha256
    metrics: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    kept_in_float: tuple[KeptInFloat, ...] = ()
    # A recommendation bundle's item files (sdk/rec_manifest.py); None for image bundles.
    recommendation: RecommendationSpec | None = None
    # Which model files are AES-256-GCM ciphertext (sdk/encryption.py); None: none is.
    encryption: EncryptionSpec | None = None
    unknown: UnknownRule | None = None  # a classifier's "unknown product" rule (sdk/unknown_spec.py)
    # Reserved; must be null (a signature is model.sig beside the manifest: sdk/signing.py).
    signature: None = None
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        # Sections are written only when present, so other manifests read as they always did.
        sections = {"recommendation": self.recommendation, "encryption": self.encryption, "unknown": self.unknown}
        extra = {key: spec.to_dict() for key, spec in sections.items() if spec is not None}
        return {
            "schema_version": self.schema_version,
            "name": self.name,
            "task": self.task.value,
            "format": self.format.value,
            "precision": self.precision.value,
            "model_file": self.model_file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "output_kind": self.output_kind.value,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "labels_file": self.labels_file,
            "provenance": self.provenance.to_dict(),
            "files": dict(sorted(self.files.items())),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "kept_in_float": [k.to_dict() for k in self.kept_in_float],
            "signature": None,
            **extra,
        }

    def to_json(self) -> str:
        """The manifest as JSON text that :meth:`load` reads back.

        Raises:
            ManifestError: a value is NaN or infinite, or the text breaks the reader's limits.
        """
        try:
            text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        except ValueError as e:
            raise ManifestError(
                f"manifest {self.name!r}: {e}; a manifest holds finite numbers only: "
                "round the value or record null instead"
            ) from e
        parse_json_limited(text, lambda message: ManifestError(f"manifest {self.name!r}: {message}"), what="manifest")
        return text

    def save(self, directory: Path) -> Path:
        """Write ``manifest.json`` into ``directory``.

        Raises:
            ManifestError: as :meth:`to_json`.
        """
        path = Path(directory) / MANIFEST_NAME
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: object, where: str = MANIFEST_NAME) -> Manifest:
        """Parse a manifest strictly.

        Raises:
            ManifestError: on an unknown key, a missing field, a wrong type or an
                unsupported schema version, naming the key.
        """
        r = StrictReader(data, where, ManifestError)
        version = r.required("schema_version", as_int)
        if version != SCHEMA_VERSION:
            raise r.fail(
                f"schema_version {version} is not supported (this shelfedge reads {SCHEMA_VERSION}); "
                "re-export the bundle with this version of shelfedge"
            )
        preprocessing_reader = r.child("preprocessing", required=False)
        provenance_reader = r.child("provenance")
        recommendation_reader = r.child("recommendation", required=False)
        encryption_reader = r.child("encryption", required=False)
        assert provenance_reader is not None
        if r.optional("signature", None) is not None:
            raise r.fail("'signature' must be null: signed bundles need a newer schema version")
        manifest = cls(
            schema_version=version,
            name=r.required("name", as_str),
            task=r.required("task", _enum(Task, "task")),
            format=r.required("format", _enum(ModelFormat, "format")),
            precision=r.required("precision", _enum(Precision, "precision")),
            model_file=r.required("model_file", as_relative_path),
            inputs=_tensors(r, "inputs"),
            outputs=_tensors(r, "outputs"),
            output_kind=r.required("output_kind", _enum(OutputKind, "output_kind")),
            preprocessing=(Preprocessing.from_reader(preprocessing_reader) if preprocessing_reader else None),
            labels_file=r.optional("labels_file", None, as_relative_path),
            provenance=_provenance(provenance_reader),
            files=r.required("files", as_sha256_map),
            metrics=r.optional("metrics", {}, as_str_dict),
            kept_in_float=_kept_in_float(r),
            recommendation=RecommendationSpec.from_reader(recommendation_reader) if recommendation_reader else None,
            encryption=EncryptionSpec.from_reader(encryption_reader) if encryption_reader else None,
            unknown=UnknownRule.from_section(r, "unknown"),
        )
        r.finish()
        for section, task in (("recommendation", Task.RECOMMENDATION), ("unknown", Task.IMAGE_CLASSIFICATION)):
            if getattr(manifest, section) is not None and manifest.task is not task:
                raise ManifestError(f"{where}: a {manifest.task.value} bundle cannot have a {section!r} section")
        sections = (manifest.recommendation, manifest.encryption, manifest.unknown)
        section_files = [name for spec in sections if spec is not None for name in spec.files]
        for needed in filter(None, (manifest.model_file, manifest.labels_file, *section_files)):
            if needed not in manifest.files:
                raise ManifestError(
                    f"{where}: {needed!r} is not listed in 'files' with its sha256; "
                    "every file of a bundle must be hashed"
                )
        return manifest

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read and parse ``manifest.json`` within the limits of :mod:`sdk._json_limits`.

        Raises:
            ManifestError: the file is missing, not a regular file, larger than 1 MiB, not
                JSON, nested too deeply, repeats a key, holds NaN/Infinity or an unbounded
                number, or does not follow the schema.
        """
        path = Path(path)
        try:
            data = read_json_limited(path, ManifestError, what="manifest")
        except FileNotFoundError as e:
            raise ManifestError(f"{path}: no manifest; a bundle directory needs {MANIFEST_NAME}") from e
        return cls.from_dict(data, where=str(path))

    def with_changes(self, **changes: Any) -> Manifest:
        return dataclasses.replace(self, **changes)


def _enum(enum_type: Any, what: str) -> Any:
    return lambda value: enum_type.parse(value, what)


def _channel_values(value: Any) -> tuple[float, float, float]:
    # The count is checked by Preprocessing itself, with the message a manifest author sees.
    return cast("tuple[float, float, float]", as_list(as_float)(value))


def _tensors(r: StrictReader, key: str) -> tuple[TensorSpec, ...]:
    items: object = r.required(key)
    if not isinstance(items, list) or not items:
        raise r.fail(f"{key!r} must be a non-empty list of tensor specs")
    specs = []
    for i, item in enumerate(items):
        t = StrictReader(item, f"{r.where}.{key}[{i}]", ManifestError)
        q = t.child("quantization", required=False)
        quantization = None
        if q is not None:
            quantization = Quantization(
                scale=q.required("scale", as_float), zero_point=q.required("zero_point", as_int)
            )
            q.finish()
        try:
            spec = TensorSpec(
                name=t.required("name", as_str),
                shape=t.required("shape", as_list(as_int)),
                dtype=t.required("dtype", as_str),
                layout=t.optional("layout", Layout.ANY, _enum(Layout, "layout")),
                quantization=quantization,
            )
        except ValueError as e:
            raise t.fail(str(e)) from e
        t.finish()
        specs.append(spec)
    return tuple(specs)


def _provenance(r: StrictReader) -> Provenance:
    steps = []
    raw_steps: tuple[Any, ...] = r.optional("steps", (), as_items)
    for i, item in enumerate(raw_steps):
        s = StrictReader(item, f"{r.where}.steps[{i}]", ManifestError)
        steps.append(
            Step(
                name=s.required("name", as_str),
                config=s.optional("config", {}, as_str_dict),
                tool_versions=s.optional("tool_versions", {}, as_str_dict),
                seconds=s.optional("seconds", None, as_float),
            )
        )
        s.finish()
    value = Provenance(
        source=r.required("source", as_str),
        source_sha256=r.required("source_sha256", as_str),
        created_utc=r.required("created_utc", as_str),
        parent=r.optional("parent", None, as_str),
        steps=tuple(steps),
        tool_versions=r.optional("tool_versions", {}, as_str_dict),
    )
    r.finish()
    return value


def _kept_in_float(r: StrictReader) -> tuple[KeptInFloat, ...]:
    kept = []
    raw_kept: tuple[Any, ...] = r.optional("kept_in_float", (), as_items)
    for i, item in enumerate(raw_kept):
        k = StrictReader(item, f"{r.where}.kept_in_float[{i}]", ManifestError)
        kept.append(
            KeptInFloat(
                layer=k.required("layer", as_str),
                precision=k.required("precision", _enum(Precision, "precision")),
                reason=k.required("reason", as_str),
            )
        )
        k.finish()
    return tuple(kept)
