"""Helpers every adapter shares: spec building, manifest-vs-model checks, fallback policy.

Private to ``runtimes``; imports no backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sdk.enums import FallbackPolicy, Layout
from sdk.errors import BackendUnavailableError, ConfigError, InferenceError, ManifestError
from sdk.runtime import SessionOptions
from sdk.tensors import Quantization, TensorSpec

# Channel counts that identify the channel axis of an image tensor (grey, RGB, RGBA).
_CHANNELS = (1, 3, 4)


def infer_layout(shape: Sequence[int]) -> Layout:
    """Guess the layout from the shape alone: channels-last wins when both ends look like channels."""
    if len(shape) == 4:
        if shape[-1] in _CHANNELS:
            return Layout.NHWC
        if shape[1] in _CHANNELS:
            return Layout.NCHW
        return Layout.ANY
    if len(shape) == 2:
        return Layout.NC
    return Layout.ANY


def dim(value: object) -> int:
    """A dimension as an int, -1 for anything dynamic (None, '?', a symbolic name, negative)."""
    if isinstance(value, (int, np.integer)) and int(value) >= 0:
        return int(value)
    return -1


def make_spec(
    name: str,
    shape: Sequence[object],
    dtype: object,
    quantization: Quantization | None = None,
) -> TensorSpec:
    """Build a TensorSpec with dynamic dims as -1, a numpy dtype name and the inferred layout."""
    dims = tuple(dim(d) for d in shape)
    return TensorSpec(
        name=name,
        shape=dims,
        dtype=np.dtype(dtype).name,  # type: ignore[call-overload]  # any dtype-like the backends report
        layout=infer_layout(dims),
        quantization=quantization,
    )


def with_dynamic_batch(specs: Sequence[TensorSpec]) -> list[TensorSpec]:
    """The specs with dim 0 as -1: for sessions that resize or re-compile to any batch size."""
    return [dataclasses.replace(s, shape=(-1, *s.shape[1:])) if s.shape else s for s in specs]


def require_file(model_path: Path, runtime: str, *, directory_ok: bool = False) -> None:
    """Fail early, with a useful message, when the model file is not there.

    Raises:
        InferenceError: the path does not exist (or is a directory where a file is needed).
    """
    if not model_path.exists():
        raise InferenceError(
            f"{runtime}: model file {model_path} does not exist; check the bundle path or re-package the bundle"
        )
    if model_path.is_dir() and not directory_ok:
        raise InferenceError(f"{runtime}: {model_path} is a directory, expected a model file")


def model_content(model_path: Path, model_bytes: Mapping[Path, bytes] | None, runtime: str) -> bytes | None:
    """The content ``model_bytes`` holds for ``model_path`` (an encrypted bundle's file, decrypted in
    memory); None without ``model_bytes``: read the file from disk.

    Raises:
        InferenceError: ``model_bytes`` is given but lacks ``model_path``.
    """
    if model_bytes is None:
        return None
    content = model_bytes.get(Path(model_path))
    if content is None:
        raise InferenceError(
            f"{runtime}: the decrypted model files ({', '.join(str(p) for p in model_bytes)}) do not include "
            f"{model_path}; encrypt the bundle again (shelfedge encrypt)"
        )
    return content


def load_failed(model_path: Path, runtime: str, error: BaseException) -> InferenceError:
    """The InferenceError for a model the backend could not read; the caller chains ``error``."""
    return InferenceError(
        f"{runtime} could not load the model {model_path}: {error}; the file is corrupted, "
        f"truncated or not a {runtime} model: re-export or re-package the bundle"
    )


def check_specs(
    model_path: Path,
    kind: str,
    given: Sequence[TensorSpec],
    actual: Sequence[TensorSpec],
    aliases: Mapping[str, str] | None = None,
) -> list[TensorSpec]:
    """Check the manifest's specs against the model's own; return the model's spec for each given one.

    Every given name must exist in the model (directly or through ``aliases``, alias -> model
    name) with the same dtype, rank, static non-batch dims and, when both carry one, the same
    quantization. For inputs, every model input must be given, or the model could not run.

    Raises:
        ManifestError: naming the tensor and both values.
    """
    by_name = {s.name: s for s in actual}
    aliases = aliases or {}
    known = ", ".join(repr(s.name) for s in actual)
    matched: list[TensorSpec] = []
    for spec in given:
        model_spec = by_name.get(spec.name) or by_name.get(aliases.get(spec.name, ""))
        if model_spec is None:
            raise ManifestError(
                f"{model_path}: manifest {kind} {spec.name!r} is not in the model, whose {kind}s "
                f"are {known}; re-package the bundle so its manifest matches the model"
            )
        if spec.dtype != model_spec.dtype:
            raise ManifestError(
                f"{model_path}: manifest {kind} {spec.name!r} has dtype {spec.dtype}, the model's "
                f"is {model_spec.dtype}; re-package the bundle so its manifest matches the model"
            )
        if len(spec.shape) != len(model_spec.shape) or any(
            a != b and -1 not in (a, b) for a, b in zip(spec.shape[1:], model_spec.shape[1:], strict=True)
        ):
            raise ManifestError(
                f"{model_path}: manifest {kind} {spec.name!r} has shape {spec.shape}, the model's "
                f"is {model_spec.shape} (-1 = dynamic); re-package the bundle"
            )
        q, mq = spec.quantization, model_spec.quantization
        if q and mq and (q.zero_point != mq.zero_point or not np.isclose(q.scale, mq.scale, rtol=1e-6)):
            raise ManifestError(
                f"{model_path}: manifest {kind} {spec.name!r} has quantization {q.to_dict()}, the "
                f"model's is {mq.to_dict()}; re-package the bundle"
            )
        matched.append(model_spec)
    if kind == "input":
        missing = sorted({s.name for s in actual} - {m.name for m in matched})
        if missing:
            raise ManifestError(
                f"{model_path}: the model needs inputs {missing} that the manifest does not list; re-package the bundle"
            )
    return matched


def accelerator_unavailable(
    options: SessionOptions,
    runtime: str,
    problem: str,
    fix: str,
    cause: BaseException | None = None,
) -> str:
    """Apply the fallback policy to a missing device/accelerator.

    Returns the fallback reason (``problem``) under ``record``.

    Raises:
        BackendUnavailableError: under ``strict``, saying what is missing and how to fix it.
    """
    if options.fallback is FallbackPolicy.STRICT:
        error = BackendUnavailableError(
            f"{runtime}: {problem}; {fix}, or use a hardware profile with 'fallback: record' "
            f"to run on the fallback device instead"
        )
        if cause is not None:
            raise error from cause
        raise error
    return problem


def require_single_input(count: int, model_path: Path) -> None:
    """Bare loops feed one image tensor: refuse a model with another number of inputs.

    Raises:
        ConfigError: naming the model, its input count and how to benchmark it anyway.
    """
    if count != 1:
        raise ConfigError(
            f"{model_path} has {count} inputs; the bare-loop overhead check feeds one image tensor: "
            f"benchmark it with overhead disabled (BenchConfig(bare_loop=False))"
        )
