"""Saving a reference directory (``reference.npz`` + ``reference.json``): see :mod:`sdk.qa.reference`."""

from __future__ import annotations

import collections
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import sha256_file
from sdk.errors import BundleError, ConfigError, InputError
from sdk.manifest import Preprocessing
from sdk.qa.reference_schema import REFERENCE_JSON, REFERENCE_NPZ, REFERENCE_SCHEMA_VERSION, tensor_sha256
from sdk.versions import host_info, tool_versions

# Keys ``info`` must carry: every report states where the reference ran (GPU or CPU fallback).
REQUIRED_INFO = ("runtime", "device")


def save_reference(
    out_dir: str | Path,
    *,
    inputs: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    input_ids: Sequence[str],
    labels: np.ndarray | None,
    info: Mapping[str, Any],
    preprocessing: Preprocessing,
    save_inputs: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``reference.npz`` and ``reference.json`` under ``out_dir``.

    Args:
        out_dir: the reference directory (created if missing).
        inputs: ``(N, ...)`` the preprocessed input tensors, in order; hashed one by one,
            stored only with ``save_inputs``.
        outputs: output name -> ``(N, ...)`` reference outputs for those inputs.
        input_ids: one id per input (e.g. the image path relative to the data root), unique.
        labels: ``(N,)`` integer class ids, or None.
        info: where the reference ran: must hold ``runtime`` and ``device``; ``versions``
            (tool versions) and ``host`` are filled in when absent; add ``model_sha256``.
            Must be JSON-serialisable.
        preprocessing: how the inputs were made (the reference model's preprocessing).
        save_inputs: also store the input tensors in the npz.
        overwrite: replace a reference already in ``out_dir``.

    Returns:
        ``out_dir``, the path :func:`load_reference` takes.

    Raises:
        InputError: an array is empty, not numeric, or its first axis is not ``N``; the ids
            are not ``N`` unique non-empty strings; labels are not ``N`` integers.
        ConfigError: ``info`` lacks a required key or is not JSON-serialisable, ``preprocessing``
            is not a Preprocessing, or ``out_dir`` already holds a reference and not ``overwrite``.
        BundleError: the files cannot be written.
    """
    out = Path(out_dir)
    x = _batch(inputs, "inputs")
    n = x.shape[0]
    ids = _ids(input_ids, n)
    arrays, described = _output_arrays(outputs, n)
    if labels is not None:
        arrays["labels"] = _labels(labels, n)
    if save_inputs:
        arrays["inputs"] = x
    if not isinstance(preprocessing, Preprocessing):
        raise ConfigError(f"save_reference: preprocessing must be a Preprocessing, got {type(preprocessing).__name__}")
    document = {
        "schema_version": REFERENCE_SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "num_samples": n,
        "inputs": {
            "shape": list(x.shape[1:]),
            "dtype": str(x.dtype),
            "saved": save_inputs,
            "items": [{"id": i, "sha256": tensor_sha256(x[k])} for k, i in enumerate(ids)],
        },
        "outputs": described,
        "has_labels": labels is not None,
        "preprocessing": preprocessing.to_dict(),
        "info": _info(info),
    }
    _write(out, arrays, document, overwrite=overwrite)
    return out


def _output_arrays(outputs: Mapping[str, np.ndarray], n: int) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The npz arrays of the outputs (keyed ``output_<i>``) and their JSON descriptions."""
    if not outputs:
        raise InputError("save_reference: no outputs given; pass the reference model's outputs by name")
    arrays: dict[str, np.ndarray] = {}
    described = []
    for index, (name, value) in enumerate(outputs.items()):
        if not isinstance(name, str) or not name:
            raise InputError(f"save_reference: output names must be non-empty strings, got {name!r}")
        array = _batch(value, f"output {name!r}")
        if array.shape[0] != n:
            raise InputError(
                f"save_reference: output {name!r} has {array.shape[0]} samples (shape {array.shape}), "
                f"inputs have {n}; pass the outputs of exactly these inputs"
            )
        key = f"output_{index}"  # output names may hold ':' or '/', which npz keys should not
        arrays[key] = array
        described.append({"name": name, "key": key, "shape": list(array.shape), "dtype": str(array.dtype)})
    return arrays, described


def _labels(labels: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.shape != (n,) or y.dtype.kind not in "iu":
        raise InputError(
            f"save_reference: labels must be {n} integers (shape ({n},)), got shape {y.shape} dtype {y.dtype}"
        )
    return y.astype(np.int64)


def _write(out: Path, arrays: dict[str, np.ndarray], document: dict[str, Any], *, overwrite: bool) -> None:
    """Write the npz, then the JSON naming its sha256: a directory holding the JSON is complete."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, npz_path = out / REFERENCE_JSON, out / REFERENCE_NPZ
    if json_path.exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a reference; choose another directory or overwrite it")
    try:
        # The old JSON goes first: a crash below leaves no JSON pointing at a half-written npz.
        json_path.unlink(missing_ok=True)
        tmp = out / f".{REFERENCE_NPZ}.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        os.replace(tmp, npz_path)
        document = {**document, "npz": {"file": REFERENCE_NPZ, "sha256": sha256_file(npz_path)}}
        tmp = out / f".{REFERENCE_JSON}.tmp"
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, json_path)
    except OSError as e:
        raise BundleError(f"{out}: cannot write the reference: {e}; check the directory is writable") from e


def _batch(value: np.ndarray, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InputError(f"save_reference: {what} is a {type(value).__name__}, expected a numpy array")
    if value.ndim < 1 or value.shape[0] == 0 or value.dtype.kind not in "biuf":
        raise InputError(
            f"save_reference: {what} must be a non-empty numeric (N, ...) array, got shape "
            f"{value.shape} dtype {value.dtype}"
        )
    return value


def _ids(input_ids: Sequence[str], n: int) -> list[str]:
    ids = list(input_ids)
    if len(ids) != n:
        raise InputError(f"save_reference: {len(ids)} input ids for {n} inputs; pass one id per input")
    if not all(isinstance(i, str) and i for i in ids):
        raise InputError("save_reference: input ids must be non-empty strings (e.g. image relative paths)")
    if len(set(ids)) != n:
        duplicate = next(i for i, count in collections.Counter(ids).items() if count > 1)
        raise InputError(f"save_reference: input id {duplicate!r} appears more than once; ids must be unique")
    return ids


def _info(info: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(info, Mapping) or not all(isinstance(k, str) for k in info):
        raise ConfigError(f"save_reference: info must be a mapping with string keys, got {info!r}")
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        raise ConfigError(f"save_reference: info lacks {missing}; say which runtime and device produced the reference")
    full = {"versions": tool_versions(), "host": host_info(), **info}
    try:
        json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_reference: info is not JSON-serialisable ({e}); pass plain values") from e
    return full
