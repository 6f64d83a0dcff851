"""The parity harness: bundles on every runtime, against the server model's reference outputs.

A reference is either computed now from the server model's Keras bundle (the TensorFlow
reference path, on the GPU when present) or read from a directory saved earlier with
``shelfedge reference`` — on another machine, without the server model. Either way the
inputs are proven to be the same: every preprocessed input's sha256 is checked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import Bundle
from sdk.data import ImageDataset
from sdk.enums import RUNTIMES_FOR_FORMAT, Layout, Precision, Runtime
from sdk.errors import ParityError, ShelfedgeError
from sdk.profiles import HardwareProfile, load_profile
from sdk.progress import Log
from sdk.qa.evaluation import evaluate, preprocess_dataset
from sdk.qa.localize import can_localize, find_fp32_parent, localize
from sdk.qa.parity import ParityVerdict, compute_metrics, jsonable
from sdk.qa.reference import REFERENCE_JSON, Reference, load_reference, save_reference
from sdk.tensors import TensorSpec

# Whose tolerances judge a runtime when no --profile is given: the generic CPU profile of it.
DEFAULT_TOLERANCE_PROFILE: dict[Runtime, str] = {
    Runtime.LITERT: "android-arm64",
    Runtime.OPENVINO: "x86-kiosk-cpu",
    Runtime.ONNXRUNTIME: "onnxruntime-cpu",
    Runtime.TENSORFLOW: "server-gpu-reference",
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParityResult:
    """One bundle on one runtime, judged against the reference."""

    bundle: str
    runtime: Runtime
    ran: dict[str, Any]
    precision: str
    tolerance_profile: str
    metrics: dict[str, Any]
    verdict: ParityVerdict
    localisation: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "bundle": Path(self.bundle).name,
            "runtime": self.runtime.value,
            "device": self.ran["actual_device"] + (" (fell back)" if self.ran["fell_back"] else ""),
            "precision": self.precision,
            "max abs diff": m.get("max_abs_diff"),
            "PSNR dB": m.get("psnr_db"),
            "cosine": m.get("cosine_mean"),
            "KL": m.get("kl_mean"),
            "top-1 agree": m.get("top1_agreement"),
            "top-5 overlap": m.get("top5_overlap"),
            "acc % of ref": None if m.get("accuracy_ratio") is None else 100 * m["accuracy_ratio"],
            "verdict": "PASS" if self.verdict.passed else "FAIL: " + ", ".join(self.verdict.failed),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "runtime": self.runtime.value,
            "ran": self.ran,
            "precision": self.precision,
            "tolerance_profile": self.tolerance_profile,
            "metrics": jsonable(self.metrics),
            "verdict": self.verdict.to_dict(),
            "localisation": self.localisation,
        }


def reference_spec(reference: Reference) -> TensorSpec:
    shape = (-1, *reference.input_shape)
    layout = Layout.NHWC if shape[-1] in (1, 3) else Layout.NCHW
    return TensorSpec(name="reference_input", shape=shape, dtype=reference.input_dtype, layout=layout)


def make_reference(
    model_bundle: str | Path, dataset: ImageDataset, out_dir: str | Path, *, overwrite: bool = True, log: Log = print
) -> Reference:
    """Run the server model (a Keras reference bundle) on the TensorFlow reference path and save it.

    The server-gpu-reference profile asks for the GPU; without one it runs on the CPU in fp32
    and the saved info says so.

    Raises:
        BundleError, ManifestError, BackendUnavailableError, InferenceError: see ``sdk.load``.
    """
    bundle = Bundle.open(model_bundle)
    log(f"[reference] {bundle.path.name} on the TensorFlow reference path: {len(dataset)} images")
    result = evaluate(bundle, dataset, profile="server-gpu-reference", fallback="record")
    tensors = preprocess_dataset(bundle, dataset)
    ran = result.ran
    info = {
        "runtime": ran.runtime.value,
        "device": ran.actual_device,
        "requested_device": ran.requested_device.value,
        "fell_back": ran.fell_back,
        "note": ("no GPU present: the reference ran on the CPU in fp32" if ran.fell_back else "ran on the GPU"),
        "model": str(bundle.path),
        "model_sha256": bundle.manifest.files[bundle.manifest.model_file],
        "runtime_version": ran.runtime_version,
    }
    ids = [str(p.relative_to(dataset.root)) if p.is_relative_to(dataset.root) else str(p) for p in dataset.paths]
    assert bundle.manifest.preprocessing is not None  # evaluate checked
    path = save_reference(
        out_dir,
        inputs=tensors,
        outputs={bundle.manifest.outputs[0].name: result.logits},
        input_ids=ids,
        labels=np.asarray(dataset.labels),
        info=info,
        preprocessing=bundle.manifest.preprocessing,
        overwrite=overwrite,
    )
    log(f"[reference] saved to {path} ({info['note']})")
    return load_reference(path)


def open_reference(reference: str | Path, dataset: ImageDataset, *, log: Log = print) -> Reference:
    """A saved reference directory, or a Keras bundle to compute one from (kept in memory only)."""
    path = Path(reference)
    if (path / REFERENCE_JSON).is_file():
        return load_reference(path)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="shelfedge-reference-") as tmp:
        made = make_reference(path, dataset, Path(tmp) / "ref", log=log)
        # Copy the arrays out: the directory goes away with the context.
        return dataclasses.replace(made, outputs={k: np.array(v) for k, v in made.outputs.items()})


def select(dataset: ImageDataset, reference: Reference) -> ImageDataset:
    """The dataset's images in the reference's order, chosen by the reference's input ids.

    Raises:
        ParityError: an id of the reference is not in the dataset.
    """
    index = {
        str(p.relative_to(dataset.root)) if p.is_relative_to(dataset.root) else str(p): i
        for i, p in enumerate(dataset.paths)
    }
    missing = [i for i in reference.input_ids if i not in index]
    if missing:
        raise ParityError(
            f"{reference.path}: {len(missing)} reference inputs are not in {dataset.root} (first: {missing[0]!r}); "
            "pass --data pointing at the dataset the reference was made from"
        )
    return dataset.subset([index[i] for i in reference.input_ids])


def tolerance_profile(runtime: Runtime, profile: HardwareProfile | None) -> HardwareProfile:
    if profile is not None:
        return profile
    return load_profile(DEFAULT_TOLERANCE_PROFILE[runtime])


def run_parity(
    bundles: Sequence[str | Path],
    reference: Reference,
    dataset: ImageDataset,
    *,
    profile: HardwareProfile | None = None,
    runtimes: Sequence[Runtime] | None = None,
    localize_images: int = 4,
    log: Log = print,
) -> list[ParityResult]:
    """Every bundle on every runtime that can open it (or the profile's runtime), judged per precision.

    A failure on OpenVINO or ONNX Runtime is localised (:mod:`sdk.qa.localize`) on up to
    ``localize_images`` photos, those whose top-1 differs from the reference first; 0 turns it off.

    Raises:
        ParityError: the inputs are not the reference's (hash mismatch), or outputs differ in shape.
    """
    images = select(dataset, reference)
    ref_tensors = _reference_inputs(images, reference)
    reference.check_inputs(ref_tensors, "parity inputs")
    ref_logits = np.asarray(reference.output(), np.float32)
    labels = reference.labels
    results = []
    for path in bundles:
        bundle = Bundle.open(path)
        candidates = (
            [profile.runtime] if profile is not None else list(runtimes or RUNTIMES_FOR_FORMAT[bundle.manifest.format])
        )
        for runtime in candidates:
            if runtime not in RUNTIMES_FOR_FORMAT[bundle.manifest.format]:
                continue
            log(f"[parity] {bundle.path.name} on {runtime.value}: {len(images)} images")
            evaluation = evaluate(bundle, images, profile=profile, runtime=runtime, fallback="record")
            if evaluation.logits.shape != ref_logits.shape:
                raise ParityError(
                    f"{bundle.path}: outputs {evaluation.logits.shape} vs the reference's {ref_logits.shape}; "
                    "compare bundles of the same task and classes"
                )
            metrics = compute_metrics(
                evaluation.logits,
                ref_logits,
                output_kind=bundle.manifest.output_kind,
                labels=labels,
                num_classes=ref_logits.shape[1],
            )
            judge = tolerance_profile(runtime, profile)
            verdict = ParityVerdict.from_metrics(metrics, judge.tolerance(evaluation.ran.precision))
            where = None
            if not verdict.passed and localize_images and can_localize(runtime, bundle.manifest.format):
                where = _localize(
                    runtime, bundle, images, ref_tensors, evaluation.logits, ref_logits, localize_images, log
                )
            results.append(
                ParityResult(
                    bundle=str(bundle.path),
                    runtime=runtime,
                    ran=evaluation.ran.to_dict(),
                    precision=evaluation.ran.precision.value,
                    tolerance_profile=judge.id,
                    metrics=metrics,
                    verdict=verdict,
                    localisation=where,
                )
            )
            log(
                f"[parity]   {'PASS' if verdict.passed else 'FAIL ' + ', '.join(verdict.failed)}"
                + (f"; {where['summary']}" if where else "")
            )
    return results


def _localize(
    runtime: Runtime,
    bundle: Bundle,
    images: ImageDataset,
    ref_tensors: np.ndarray,
    logits: np.ndarray,
    ref_logits: np.ndarray,
    count: int,
    log: Log,
) -> dict[str, Any]:
    """The first diverging layer of a failing bundle, as a dict for the report (an error note if it cannot run)."""
    differ = np.flatnonzero(logits.argmax(-1) != ref_logits.argmax(-1))
    rest = np.setdiff1d(np.arange(len(ref_logits)), differ)
    chosen = np.concatenate([differ, rest])[:count].astype(int)
    subset = images.subset(chosen.tolist())
    parent = find_fp32_parent(bundle)
    try:
        inputs = preprocess_dataset(bundle, subset)
        if parent is not None:
            fp32, fp32_inputs = parent, preprocess_dataset(parent, subset)
            how = f"its fp32 parent {parent.path.name}, each fed the photos preprocessed as its manifest says"
        else:
            fp32, fp32_inputs = bundle, ref_tensors[chosen]
            how = "its own model fed the reference's preprocessed inputs" + (
                "" if bundle.manifest.precision is Precision.FP32 else " (its fp32 parent was not found next to it)"
            )
        log(f"[parity]   localising on {len(chosen)} photo(s) against {how}")
        return localize(runtime, bundle, inputs, fp32=fp32, fp32_inputs=fp32_inputs, compared_with=how).to_dict()
    except ShelfedgeError as e:
        return {"summary": f"localisation failed: {e}", "error": str(e)}


def _reference_inputs(images: ImageDataset, reference: Reference) -> np.ndarray:
    from sdk import preprocess as pp

    spec = reference_spec(reference)
    return np.concatenate([pp.load_and_preprocess(p, reference.preprocessing, spec) for p in images.paths])
