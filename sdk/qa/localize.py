"""Localising a parity failure: the first layer whose output leaves the fp32 model's.

When a bundle fails parity on OpenVINO or ONNX Runtime, every intermediate activation of the
bundle's model is compared with the same activation of an fp32 model of the same format, on
the same photos, in the fp32 model's topological order; the first layer whose relative L2
error exceeds the tolerance for the bundle's precision is where the answers start to differ.

Which fp32 model, and which inputs:

- a quantized/fp16 bundle is compared with its fp32 parent (``provenance.parent``, found
  next to it as ``convert`` lays bundles out) or with the fp32 bundle the caller names; each
  model gets the photos preprocessed as its own manifest says;
- an fp32 bundle is compared with itself fed the reference's preprocessed inputs: a wrong
  mean/std, size or colour order in its manifest shows up at the input, before any layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from sdk.bundle import Bundle, sha256_file
from sdk.enums import RUNTIMES_FOR_FORMAT, Layout, ModelFormat, Precision, Runtime
from sdk.errors import BundleError, ConfigError, ManifestError
from sdk.manifest import MANIFEST_NAME
from sdk.runtime import Capability, layer_outputs_adapter, runtimes_with, supports

__all__ = [
    "LAYER_TOLERANCE",
    "LayerDiff",
    "Localisation",
    "can_localize",
    "find_fp32_parent",
    "localize",
    "relative_error",
]
# Relative L2 error of one activation vs fp32 beyond which a layer "diverges", per precision:
# fp32 differs by summation order only (~1e-6); fp16 by ~1e-3; int8 by a few % per layer.
LAYER_TOLERANCE: dict[Precision, float] = {
    Precision.FP32: 1e-3,
    Precision.FP16: 2e-2,
    Precision.INT16X8: 5e-2,
    Precision.DYNAMIC_INT8: 0.2,
    Precision.INT8: 0.2,
}
INPUT = "<input>"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerDiff:
    """One activation, candidate vs fp32."""

    index: int  # position in the fp32 model's topological order (0 = the input)
    layer: str
    op_type: str
    shape: tuple[int, ...]
    rel_error: float
    cosine: float
    max_abs_diff: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "layer": self.layer,
            "op_type": self.op_type,
            "shape": list(self.shape),
            "rel_error": _finite(self.rel_error),
            "cosine": _finite(self.cosine),
            "max_abs_diff": _finite(self.max_abs_diff),
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Localisation:
    """Where the bundle's activations leave the fp32 model's, and how far."""

    runtime: Runtime
    bundle: str
    fp32_model: str
    compared_with: str
    images: int
    tolerance: float
    layers_compared: int
    first: LayerDiff | None
    worst: tuple[LayerDiff, ...]
    note: str | None = None

    def summary(self) -> str:
        if self.first is None:
            return (
                f"no layer diverges beyond {self.tolerance:g} relative error ({self.layers_compared} compared"
                + (f"; {self.note}" if self.note else "")
                + ")"
            )
        f = self.first
        if f.layer == INPUT:
            return (
                f"diverges at the input (relative error {f.rel_error:.3g} > {self.tolerance:g}): the bundle's "
                "preprocessing (size, mean/std, colour order) differs from the reference's"
            )
        return (
            f"first diverging layer: {f.layer} ({f.op_type}, #{f.index} of {self.layers_compared}, "
            f"output {'x'.join(map(str, f.shape[1:]))}): relative error {f.rel_error:.3g} > {self.tolerance:g}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime.value,
            "bundle": self.bundle,
            "fp32_model": self.fp32_model,
            "compared_with": self.compared_with,
            "images": self.images,
            "tolerance": self.tolerance,
            "layers_compared": self.layers_compared,
            "summary": self.summary(),
            "first_diverging": self.first.to_dict() if self.first else None,
            "worst": [w.to_dict() for w in self.worst],
            "note": self.note,
        }


def relative_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """``||candidate - reference|| / ||reference||`` (L2 over the whole tensor)."""
    c, r = np.asarray(candidate, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    return float(np.linalg.norm(c - r) / max(float(np.linalg.norm(r)), 1e-12))


def find_fp32_parent(bundle: Bundle) -> Bundle | None:
    """The fp32 bundle ``bundle`` was quantized from, if it lies where ``convert`` puts it.

    ``provenance.parent`` reads ``<name>@sha256:<manifest sha256>``; the parent is looked for
    next to the bundle and in a ``variants`` directory beside it, and must match the hash.
    """
    parent = bundle.manifest.provenance.parent
    if not parent or "@sha256:" not in parent:
        return None
    name, digest = parent.split("@sha256:", 1)
    for directory in (bundle.path.parent / name, bundle.path.parent / "variants" / name):
        manifest = directory / MANIFEST_NAME
        if manifest.is_file() and sha256_file(manifest) == digest:
            try:
                return Bundle.open(directory)
            except (BundleError, ManifestError):
                return None
    return None


def can_localize(runtime: Runtime, fmt: ModelFormat) -> bool:
    """Whether ``runtime`` exposes every activation (the adapter table says) and reads ``fmt``."""
    return supports(runtime, Capability.LAYER_OUTPUTS) and runtime in RUNTIMES_FOR_FORMAT[fmt]


def localize(
    runtime: Runtime,
    bundle: Bundle,
    inputs: np.ndarray,
    *,
    fp32: Bundle,
    fp32_inputs: np.ndarray,
    compared_with: str,
    tolerance: float | None = None,
    worst: int = 5,
) -> Localisation:
    """Compare every activation of ``bundle`` on ``inputs`` with ``fp32``'s on ``fp32_inputs``.

    Args:
        inputs, fp32_inputs: the same photos, preprocessed for each model (NHWC or as the model's
            input spec says; an NHWC batch is transposed for an NCHW model).
        compared_with: how the fp32 side was chosen, for the report.
        tolerance: relative L2 error that counts as diverging; default by the bundle's precision.

    Raises:
        ConfigError: the runtime cannot expose intermediate activations or cannot read the bundle.
        BackendUnavailableError: the runtime's backend is not installed (naming the pip extra).
        InferenceError: a model cannot be run on the inputs.
    """
    fmt = bundle.manifest.format
    if not can_localize(runtime, fmt):
        able = runtimes_with(Capability.LAYER_OUTPUTS)
        formats = sorted({f.value for f in ModelFormat for r in able if r in RUNTIMES_FOR_FORMAT[f]})
        raise ConfigError(
            f"layer localisation runs on {', '.join(r.value for r in able)} with {' or '.join(formats)} models, "
            f"not {runtime.value} with {fmt.value}; localise an {' or '.join(formats)} export of the model"
        )
    encrypted = [b.path.name for b in (bundle, fp32) if b.manifest.encryption is not None]
    if encrypted:
        raise ConfigError(
            f"layer localisation reads the model files from disk, and {', '.join(encrypted)} holds encrypted ones; "
            "localise the plain (unencrypted) bundles the encrypted ones were made from"
        )
    tolerance = LAYER_TOLERANCE.get(bundle.manifest.precision, 0.2) if tolerance is None else tolerance
    module = layer_outputs_adapter(runtime)
    candidate_feed = _feed(bundle, inputs)
    reference_feed = _feed(fp32, fp32_inputs)
    diffs: list[LayerDiff] = []
    note = None
    cand_in, ref_in = next(iter(candidate_feed.values())), next(iter(reference_feed.values()))
    if cand_in.shape == ref_in.shape:
        diffs.append(_diff(0, INPUT, "Parameter", cand_in, ref_in))
    else:
        note = f"the inputs differ in shape ({cand_in.shape} vs {ref_in.shape}): compared layer shapes only where equal"
    candidate = {n: (kind, value) for n, kind, value in module.layer_outputs(bundle.model_path, candidate_feed)}
    reference = module.layer_outputs(fp32.model_path, reference_feed)
    for index, (layer, kind, ref_value) in enumerate(reference, start=1):
        found = candidate.get(layer)
        # Same name, same op and shape: a quantizer that folds an activation into the convolution
        # before it hands the convolution the activation's tensor name; that pair is not comparable.
        if found is not None and found[0] == kind and found[1].shape == ref_value.shape:
            diffs.append(_diff(index, layer, kind, found[1], ref_value))
    first = next((d for d in diffs if not d.rel_error <= tolerance), None)
    ranked = sorted(diffs, key=lambda d: -d.rel_error if np.isfinite(d.rel_error) else -np.inf)
    if len(diffs) <= 1:
        note = (note + "; " if note else "") + "no layer names in common with the fp32 model"
    return Localisation(
        runtime=runtime,
        bundle=str(bundle.path),
        fp32_model=str(fp32.model_path),
        compared_with=compared_with,
        images=len(inputs),
        tolerance=tolerance,
        layers_compared=len(reference),
        first=first,
        worst=tuple(ranked[:worst]),
        note=note,
    )


def _feed(bundle: Bundle, batch: np.ndarray) -> Mapping[str, np.ndarray]:
    spec = bundle.manifest.inputs[0]
    batch = np.asarray(batch, np.float32)
    if (
        spec.layout is Layout.NCHW
        and batch.ndim == 4
        and batch.shape[-1] in (1, 3, 4)
        and batch.shape[1] not in (1, 3, 4)
    ):
        batch = batch.transpose(0, 3, 1, 2)
    return {spec.name: np.ascontiguousarray(batch)}


def _diff(index: int, layer: str, kind: str, candidate: np.ndarray, reference: np.ndarray) -> LayerDiff:
    c, r = np.asarray(candidate, np.float64).ravel(), np.asarray(reference, np.float64).ravel()
    norms = float(np.linalg.norm(c) * np.linalg.norm(r))
    cosine = float(c @ r / norms) if norms > 0 else (1.0 if not c.any() and not r.any() else 0.0)
    return LayerDiff(
        index=index,
        layer=layer,
        op_type=kind,
        shape=tuple(int(d) for d in reference.shape),
        rel_error=relative_error(c, r),
        cosine=cosine,
        max_abs_diff=float(np.max(np.abs(c - r))) if c.size else 0.0,
    )


def _finite(value: float) -> float | None:
    return round(float(value), 6) if np.isfinite(value) else None
