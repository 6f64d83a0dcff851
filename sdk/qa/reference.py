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
complete. Saving is in :mod:`sdk.qa.reference_save`, the file format in :mod:`sdk.qa.reference_schema`;
both are importable from here.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sdk.bundle import sha256_file
from sdk.errors import BundleError, ManifestError, ParityError
from sdk.manifest import Preprocessing
from sdk.qa.reference_save import REQUIRED_INFO, save_reference
from sdk.qa.reference_schema import (
    REFERENCE_JSON,
    REFERENCE_NPZ,
    REFERENCE_SCHEMA_VERSION,
    parse,
    read_npz,
    tensor_sha256,
)

__all__ = [
    "REFERENCE_JSON",
    "REFERENCE_NPZ",
    "REFERENCE_SCHEMA_VERSION",
    "REQUIRED_INFO",
    "Reference",
    "load_reference",
    "save_reference",
    "tensor_sha256",
]


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

    def check_inputs(self, tensors: np.ndarray, where: str, *, input_ids: Sequence[str] | None = None) -> None:
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
                    (i for i, (a, b) in enumerate(zip(ids, self.input_ids, strict=False)) if a != b),
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
        raise BundleError(f"{path}: no such reference directory; save one with 'shelfedge reference --out {path}'")
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"{path}: no {REFERENCE_JSON}; the reference is incomplete, save it again") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{json_path}: cannot read the reference JSON ({e}); save the reference again") from e
    doc = parse(data, str(json_path))
    if not npz_path.is_file():
        raise BundleError(f"{path}: {REFERENCE_NPZ} is missing; copy it together with {REFERENCE_JSON}")
    actual = sha256_file(npz_path)
    if actual != doc["npz_sha256"]:
        raise BundleError(
            f"{npz_path}: sha256 {actual[:12]}…, {REFERENCE_JSON} says {doc['npz_sha256'][:12]}…; "
            "the file was changed or corrupted after it was saved: restore both files together "
            "or save the reference again"
        )
    arrays = read_npz(npz_path)
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
