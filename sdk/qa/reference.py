"""Saved reference outputs: made once where the server model runs, compared anywhere later.

A reference directory holds two files:

- ``reference.npz``: the reference outputs (``output_0``, ``output_1``, ... in the order of
  ``reference.json``'s ``outputs``), the labels when known, and the preprocessed inputs only
  when asked for (they are large);
- ``reference.json``: schema version, creation time, the id and sha256 of every
  preprocessed input tensor in order, input shape and dtype, output names/shapes/dtypes,
  the preprocessing, where the reference ran (runtime, device, versions, host, model hash)
  and the sha256 of ``reference.npz``.

The per-input hashes let a comparison on another machine prove that it fed the candidate
exactly the tensors the reference saw: same images, same decoding, same preprocessing
(:meth:`Reference.check_inputs`). The JSON is written last, so a directory holding it is
complete.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
import json
import os
import re
import types
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk._strict import StrictReader, as_bool, as_int, as_list, as_str, as_str_dict
from sdk.bundle import sha256_file
from sdk.errors import BundleError, ConfigError, InputError, ManifestError, ParityError
from sdk.manifest import Preprocessing
from sdk.versions import host_info, tool_versions

REFERENCE_SCHEMA_VERSION = 1
REFERENCE_JSON = "reference.json"
REFERENCE_NPZ = "reference.npz"
# Keys ``info`` must carry: every report states where the reference ran (GPU or CPU fallback).
REQUIRED_INFO = ("runtime", "device")

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
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Reference:
    """A loaded, verified reference; arrays are read-only. Compare by content, not ``==``."""

    path: Path
    schema_version: int
    created_utc: str
    input_ids: tuple[str, ...]
    input_sha256: tuple[str, ...]
    input_shape: tuple[int, ...]  # one sample's shape, without the batch axis
    input_dtype: str
    outputs: Mapping[str, np.ndarray]  # name -> (N, ...) array, in saved order
    labels: np.ndarray | None
    inputs: np.ndarray | None  # only when saved with save_inputs=True
    preprocessing: Preprocessing
    info: Mapping[str, Any]
    npz_sha256: str

    @property
    def num_samples(self) -> int:
        return len(self.input_ids)

    def output(self, name: str | None = None) -> np.ndarray:
        """One output by name; without a name, the only output.

        Raises:
            ParityError: no output has that name, or there are several and none was named.
        """
        if name is None:
            if len(self.outputs) != 1:
                raise ParityError(
                    f"{self.path}: the reference has outputs {list(self.outputs)}; name the one to compare"
                )
            return next(iter(self.outputs.values()))
        if name not in self.outputs:
            raise ParityError(
                f"{self.path}: the reference has no output {name!r} (it has {list(self.outputs)}); "
                "compare outputs of the same name or map the candidate's output to one of these"
            )
        return self.outputs[name]

    def check_inputs(
        self, tensors: np.ndarray, where: str, *, input_ids: Sequence[str] | None = None
    ) -> None:
        """Prove that ``tensors`` are the preprocessed inputs the reference was made from.

        Args:
            tensors: ``(N, ...)`` the preprocessed inputs fed to the candidate, in the
                reference's order (before any quantization to the candidate's input dtype).
            where: what produced them (a bundle or run name), for the message.
            input_ids: the ids (image relative paths) of ``tensors``; checked first, when given.

        Raises:
            ParityError: the count, ids, shape or dtype differ, or an input's sha256 differs;
                the message names the first differing input id and how many differ.
        """
        array = np.asarray(tensors)
        fix = (
            "the data or the preprocessing differ from those the reference was made with: use the "
            f"same images and the preprocessing recorded in {self.path / REFERENCE_JSON}"
        )
        if input_ids is not None:
            ids = tuple(input_ids)
            if ids != self.input_ids:
                first = next(
                    (i for i, (a, b) in enumerate(zip(ids, self.input_ids)) if a != b),
                    min(len(ids), len(self.input_ids)),
                )
                given = ids[first] if first < len(ids) else "(none)"
                wanted = self.input_ids[first] if first < len(self.input_ids) else "(none)"
                raise ParityError(
                    f"{where}: input {first} is {given!r} but the reference's is {wanted!r} "
                    f"({len(ids)} inputs given, the reference has {self.num_samples}); select the "
                    "inputs by the reference's input ids"
                )
        if array.ndim < 1 or array.shape[0] != self.num_samples:
            raise ParityError(
                f"{where}: {array.shape[0] if array.ndim else 0} inputs given, the reference has "
                f"{self.num_samples}; {fix}"
            )
        if array.shape[1:] != self.input_shape or str(array.dtype) != self.input_dtype:
            raise ParityError(
                f"{where}: inputs have shape {array.shape[1:]} dtype {array.dtype} per sample, the "
                f"reference's have {self.input_shape} {self.input_dtype}; {fix}"
            )
        differing = [i for i in range(self.num_samples) if tensor_sha256(array[i]) != self.input_sha256[i]]
        if differing:
            first = differing[0]
            raise ParityError(
                f"{where}: input {first} ({self.input_ids[first]!r}) differs from the reference's "
                f"preprocessed input ({len(differing)} of {self.num_samples} inputs differ); {fix}"
            )

    def check_preprocessing(self, preprocessing: Preprocessing, where: str) -> None:
        """Refuse a candidate whose preprocessing is not the reference's.

        Raises:
            ParityError: naming each field that differs.
        """
        ours, theirs = self.preprocessing.to_dict(), preprocessing.to_dict()
        differ = [f"{k}: {theirs[k]} vs {ours[k]}" for k in ours if ours[k] != theirs[k]]
        if differ:
            raise ParityError(
                f"{where}: preprocessing differs from the reference's ({'; '.join(differ)}); the "
                "candidate would see other inputs, so parity would measure preprocessing, not the model"
            )


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
    arrays: dict[str, np.ndarray] = {}
    described = []
    if not outputs:
        raise InputError("save_reference: no outputs given; pass the reference model's outputs by name")
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
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,) or y.dtype.kind not in "iu":
            raise InputError(
                f"save_reference: labels must be {n} integers (shape ({n},)), got shape {y.shape} "
                f"dtype {y.dtype}"
            )
        arrays["labels"] = y.astype(np.int64)
    if save_inputs:
        arrays["inputs"] = x
    if not isinstance(preprocessing, Preprocessing):
        raise ConfigError(
            f"save_reference: preprocessing must be a Preprocessing, got {type(preprocessing).__name__}"
        )
    full_info = _info(info)

    out.mkdir(parents=True, exist_ok=True)
    json_path, npz_path = out / REFERENCE_JSON, out / REFERENCE_NPZ
    if json_path.exists() and not overwrite:
        raise ConfigError(f"{out}: already holds a reference; choose another directory or overwrite it")
    try:
        # The old JSON goes first: a crash below leaves no JSON pointing at a half-written npz.
        json_path.unlink(missing_ok=True)
        tmp = out / f".{REFERENCE_NPZ}.tmp"
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, npz_path)
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
            "info": full_info,
            "npz": {"file": REFERENCE_NPZ, "sha256": sha256_file(npz_path)},
        }
        tmp = out / f".{REFERENCE_JSON}.tmp"
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, json_path)
    except OSError as e:
        raise BundleError(f"{out}: cannot write the reference: {e}; check the directory is writable") from e
    return out


def load_reference(directory: str | Path) -> Reference:
    """Read a reference directory, checking its schema strictly and the npz against its hash.

    Raises:
        BundleError: the directory or a file is missing, ``reference.npz`` does not match the
            sha256 in ``reference.json``, or its arrays disagree with the JSON.
        ManifestError: ``reference.json`` is not JSON, has an unknown or missing key, a bad
            value or an unsupported schema version.
    """
    path = Path(directory)
    json_path, npz_path = path / REFERENCE_JSON, path / REFERENCE_NPZ
    if not path.is_dir():
        raise BundleError(
            f"{path}: no such reference directory; save one with 'shelfedge reference --out {path}'"
        )
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"{path}: no {REFERENCE_JSON}; the reference is incomplete, save it again") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(
            f"{json_path}: cannot read the reference JSON ({e}); save the reference again"
        ) from e
    doc = _parse(data, str(json_path))
    if not npz_path.is_file():
        raise BundleError(f"{path}: {REFERENCE_NPZ} is missing; copy it together with {REFERENCE_JSON}")
    actual = sha256_file(npz_path)
    if actual != doc["npz_sha256"]:
        raise BundleError(
            f"{npz_path}: sha256 {actual[:12]}…, {REFERENCE_JSON} says {doc['npz_sha256'][:12]}…; "
            "the file was changed or corrupted after it was saved: restore both files together "
            "or save the reference again"
        )
    arrays = _read_npz(npz_path)
    n, items = doc["num_samples"], doc["items"]
    expected = {o["key"]: (tuple(o["shape"]), o["dtype"]) for o in doc["outputs"]}
    if doc["has_labels"]:
        expected["labels"] = ((n,), "int64")
    if doc["saved"]:
        expected["inputs"] = ((n, *doc["shape"]), doc["dtype"])
    if set(arrays) != set(expected):
        raise BundleError(
            f"{npz_path}: holds arrays {sorted(arrays)}, {REFERENCE_JSON} describes {sorted(expected)}; "
            "save the reference again"
        )
    for key, (shape, dtype) in expected.items():
        if arrays[key].shape != shape or str(arrays[key].dtype) != dtype:
            raise BundleError(
                f"{npz_path}: {key!r} has shape {arrays[key].shape} dtype {arrays[key].dtype}, "
                f"{REFERENCE_JSON} says {shape} {dtype}; save the reference again"
            )
        arrays[key].flags.writeable = False
    reference = Reference(
        path=path,
        schema_version=REFERENCE_SCHEMA_VERSION,
        created_utc=doc["created_utc"],
        input_ids=tuple(item["id"] for item in items),
        input_sha256=tuple(item["sha256"] for item in items),
        input_shape=tuple(doc["shape"]),
        input_dtype=doc["dtype"],
        outputs=types.MappingProxyType({o["name"]: arrays[o["key"]] for o in doc["outputs"]}),
        labels=arrays.get("labels"),
        inputs=arrays.get("inputs"),
        preprocessing=doc["preprocessing"],
        info=types.MappingProxyType(doc["info"]),
        npz_sha256=actual,
    )
    if reference.inputs is not None:
        # Saved inputs must be the hashed ones, or a comparison fed from them proves nothing.
        reference.check_inputs(reference.inputs, f"{npz_path} (saved inputs)")
    return reference


# --------------------------------------------------------------------------- helpers


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
        raise ConfigError(
            f"save_reference: info lacks {missing}; say which runtime and device produced the reference"
        )
    full = {"versions": tool_versions(), "host": host_info(), **info}
    try:
        json.dumps(full, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"save_reference: info is not JSON-serialisable ({e}); pass plain values") from e
    return full


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


def _parse(data: object, where: str) -> dict[str, Any]:
    """Check ``reference.json`` strictly and return its values flattened."""
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
        "items": [
            _item(v, f"{where}.inputs.items[{i}]") for i, v in enumerate(inputs.required("items", _any_list))
        ],
        "outputs": [
            _output(v, f"{where}.outputs[{i}]") for i, v in enumerate(r.required("outputs", _any_list))
        ],
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


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BundleError(f"{path}: cannot read the reference arrays ({e}); save the reference again") from e
