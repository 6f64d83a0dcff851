"""The schema of ``reference.json`` and the reading of ``reference.npz`` (see :mod:`sdk.qa.reference`)."""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sdk._strict import StrictReader, as_bool, as_int, as_list, as_str, as_str_dict
from sdk.errors import BundleError, InputError, ManifestError
from sdk.manifest import Preprocessing

REFERENCE_SCHEMA_VERSION = 1
REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def tensor_sha256(tensor: np.ndarray) -> str:
    """The sha256 of one tensor's dtype, shape and bytes, the same on every host.

    Bytes are taken little-endian and C-ordered, so a view, a Fortran-ordered copy or a
    big-endian host hash the same values the same way; dtype and shape are part of the hash,
    so equal bytes of a different dtype or shape do not collide.

    Raises:
        InputError: the array is not numeric or boolean.
    """
    array = np.asarray(tensor)
    if array.dtype.kind not in "biuf":
        raise InputError(f"cannot hash a tensor of dtype {array.dtype}; expected a numeric array")
    array = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("<"), copy=False))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def _sha(value: Any) -> str:
    text = as_str(value)
    if not _SHA256.match(text):
        raise ValueError(f"expected a lowercase hex sha256, got {text!r}")
    return text


def _dtype(value: Any) -> str:
    text = as_str(value)
    try:
        np.dtype(text)
    except TypeError as e:
        raise ValueError(f"not a numpy dtype: {text!r}") from e
    return text


def parse(data: object, where: str) -> dict[str, Any]:
    """Check ``reference.json`` strictly and return its values flattened.

    Raises:
        ManifestError: an unknown or missing key, a bad value or an unsupported schema version.
    """
    r = StrictReader(data, where, ManifestError)
    version = r.required("schema_version", as_int)
    if version != REFERENCE_SCHEMA_VERSION:
        raise r.fail(
            f"schema_version {version} is not supported (this shelfedge reads {REFERENCE_SCHEMA_VERSION}); "
            "save the reference again with this version of shelfedge"
        )
    n = r.required("num_samples", as_int)
    inputs = r.child("inputs")
    assert inputs is not None
    doc: dict[str, Any] = {
        "created_utc": r.required("created_utc", as_str),
        "num_samples": n,
        "shape": inputs.required("shape", as_list(as_int)),
        "dtype": inputs.required("dtype", _dtype),
        "saved": inputs.required("saved", as_bool),
        "items": [_item(v, f"{where}.inputs.items[{i}]") for i, v in enumerate(inputs.required("items", _any_list))],
        "outputs": [_output(v, f"{where}.outputs[{i}]") for i, v in enumerate(r.required("outputs", _any_list))],
        "has_labels": r.required("has_labels", as_bool),
        "info": r.required("info", as_str_dict),
    }
    inputs.finish()
    pre = r.child("preprocessing")
    assert pre is not None
    try:
        doc["preprocessing"] = Preprocessing.from_reader(pre)
    except ValueError as e:  # Preprocessing checks its values on construction
        raise ManifestError(f"{where}.preprocessing: {e}") from e
    npz = r.child("npz")
    assert npz is not None
    if npz.required("file", as_str) != REFERENCE_NPZ:
        raise npz.fail(f"'file' must be {REFERENCE_NPZ!r}")
    doc["npz_sha256"] = npz.required("sha256", _sha)
    npz.finish()
    r.finish()
    ids = [item["id"] for item in doc["items"]]
    if len(ids) != n or len(set(ids)) != n:
        raise ManifestError(f"{where}: inputs.items must list {n} inputs with unique ids, got {len(ids)}")
    if not doc["outputs"] or any(o["shape"][:1] != [n] for o in doc["outputs"]):
        raise ManifestError(f"{where}: every output must have {n} samples along its first axis")
    for field in ("name", "key"):
        if len({o[field] for o in doc["outputs"]}) != len(doc["outputs"]):
            raise ManifestError(f"{where}: output {field}s must be unique")
    return doc


def _any_list(value: Any) -> tuple[Any, ...]:
    return as_list(lambda v: v)(value)


def _item(value: Any, where: str) -> dict[str, str]:
    r = StrictReader(value, where, ManifestError)
    item = {"id": r.required("id", as_str), "sha256": r.required("sha256", _sha)}
    r.finish()
    return item


def _output(value: Any, where: str) -> dict[str, Any]:
    r = StrictReader(value, where, ManifestError)
    output = {
        "name": r.required("name", as_str),
        "key": r.required("key", as_str),
        "shape": list(r.required("shape", as_list(as_int))),
        "dtype": r.required("dtype", _dtype),
    }
    r.finish()
    if output["key"] in ("labels", "inputs"):
        raise ManifestError(f"{where}: key {output['key']!r} is reserved")
    return output


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of ``reference.npz`` (no pickles).

    Raises:
        BundleError: the file cannot be read as an npz.
    """
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: cannot read the reference arrays ({e}); save the reference again") from e
