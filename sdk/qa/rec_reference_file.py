"""The files of a recommendation reference: ``reference.json``'s schema, writing npz then JSON.

See :mod:`sdk.qa.rec_reference` for what they hold and why.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sdk._strict import StrictReader, as_int, as_list, as_str, as_str_dict
from sdk.bundle import sha256_file
from sdk.errors import BundleError, ConfigError, ManifestError
from sdk.qa.rec_reference_spec import RecDatasetSpec
from sdk.qa.reference_save import REQUIRED_INFO
from sdk.qa.reference_schema import REFERENCE_JSON, REFERENCE_NPZ
from sdk.versions import host_info, tool_versions

__all__ = ["REC_REFERENCE_SCHEMA_VERSION", "TASK", "full_info", "parse_document", "write_files"]

REC_REFERENCE_SCHEMA_VERSION = 1
TASK = "recommendation"
_ARRAYS = ("scores", "top_k", "targets", "groups")
_TABLE_ARRAYS = ("item_table", "item_bias")


def parse_document(data: object, where: str) -> dict[str, Any]:
    """The checked values of ``reference.json`` (see :func:`save_rec_reference` for the layout)."""
    r = StrictReader(data, where, ManifestError)
    version = r.required("schema_version", as_int)
    if version != REC_REFERENCE_SCHEMA_VERSION:
        raise r.fail(
            f"schema_version {version} is not supported (this shelfedge reads {REC_REFERENCE_SCHEMA_VERSION}); "
            "save the reference again with this version of shelfedge"
        )
    if r.required("task", as_str) != TASK:
        raise r.fail(f"'task' must be {TASK!r}; an image reference is read by sdk.qa.reference")
    n = r.required("num_cases", as_int)
    dataset_reader, cases, npz = r.child("dataset"), r.child("cases"), r.child("npz")
    assert dataset_reader is not None and cases is not None and npz is not None
    doc: dict[str, Any] = {
        "created_utc": r.required("created_utc", as_str),
        "k": r.required("k", as_int),
        "dataset": RecDatasetSpec.from_reader(dataset_reader),
        "max_len": cases.required("max_len", as_int),
        "history_sha256": cases.required("history_sha256", as_list(_sha)),
        "window_sha256": cases.required("window_sha256", as_list(_sha)),
        "arrays": [_array(v, f"{where}.arrays[{i}]") for i, v in enumerate(r.required("arrays", as_list(lambda v: v)))],
        "info": r.required("info", as_str_dict),
    }
    cases.finish()
    if npz.required("file", as_str) != REFERENCE_NPZ:
        raise npz.fail(f"'file' must be {REFERENCE_NPZ!r}")
    doc["npz_sha256"] = npz.required("sha256", _sha)
    npz.finish()
    r.finish()
    if len(doc["history_sha256"]) != n or len(doc["window_sha256"]) != n:
        raise ManifestError(f"{where}: cases must list {n} history and window hashes")
    keys = {a["key"] for a in doc["arrays"]}
    if not set(_ARRAYS) <= keys or not keys <= {*_ARRAYS, *_TABLE_ARRAYS}:
        raise ManifestError(f"{where}: arrays must be {', '.join(_ARRAYS)} (and optionally the item table)")
    return doc


def _array(value: Any, where: str) -> dict[str, Any]:
    r = StrictReader(value, where, ManifestError)
    array = {
        "key": r.required("key", as_str),
        "shape": r.required("shape", as_list(as_int)),
        "dtype": r.required("dtype", as_str),
    }
    r.finish()
    return array


def _sha(value: Any) -> str:
    text = as_str(value)
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"expected a lowercase hex sha256, got {text!r}")
    return text


def full_info(info: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED_INFO if k not in info]
    if missing:
        raise ConfigError(f"save_rec_reference: info lacks {missing}; say which runtime and device made the scores")
    full = {"versions": tool_versions(), "host": host_info(), **info}
    try:
        json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_rec_reference: info is not JSON-serialisable ({e}); pass plain values") from e
    return full


def write_files(out: Path, arrays: dict[str, np.ndarray], document: dict[str, Any], *, overwrite: bool) -> None:
    """The npz first, then the JSON naming its sha256: a directory holding the JSON is complete."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, npz_path = out / REFERENCE_JSON, out / REFERENCE_NPZ
    if json_path.exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a reference; choose another directory or overwrite it")
    try:
        json_path.unlink(missing_ok=True)  # first: a crash below leaves no JSON naming a half-written npz
        tmp = out / f".{REFERENCE_NPZ}.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool
        os.replace(tmp, npz_path)
        document = {**document, "npz": {"file": REFERENCE_NPZ, "sha256": sha256_file(npz_path)}}
        tmp = out / f".{REFERENCE_JSON}.tmp"
        tmp.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, json_path)
    except OSError as e:
        raise BundleError(f"{out}: cannot write the reference: {e}; check the directory is writable") from e
