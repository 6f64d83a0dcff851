"""What a bundle directory may hold, and which of its files a runtime reads to load the model.

A bundle holds directories and regular files only: a symbolic link can point anywhere, so a
verified bundle could read files nobody hashed. And every file a runtime reads for the model
must be listed (and so hashed) in the manifest: OpenVINO reads ``model.bin`` beside
``model.xml`` whatever the manifest says, ONNX Runtime reads the external-data files the
``.onnx`` names, TensorFlow reads the whole SavedModel directory. Stateless; safe across threads.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from sdk.errors import BackendUnavailableError, BundleError
from sdk.manifest import MANIFEST_NAME

_REPACKAGE = "re-package the bundle (shelfedge export) so that the manifest lists and hashes every file"
# Every ONNX external-data entry stores this key as plain bytes: a model without it has none.
_ONNX_LOCATION_KEY = b"location"


def check_tree(root: Path) -> None:
    """Refuse symbolic links and special files anywhere below ``root`` (not following links).

    ``root`` itself may be reached through a link (``current -> bundle-v2``): what it
    holds may not.

    Raises:
        BundleError: an entry is a symbolic link, a FIFO, socket or device, or a directory
            cannot be listed; the message names the entry.
    """

    def unreadable(e: OSError) -> None:
        raise BundleError(f"{root}: cannot list {e.filename}: {e.strerror}; fix its permissions") from e

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        for name in (*dirnames, *filenames):
            full = os.path.join(dirpath, name)
            relative = os.path.relpath(full, root)
            try:
                mode = os.lstat(full).st_mode
            except OSError as e:
                raise BundleError(f"{root}: cannot stat {relative!r}: {e}") from e
            if stat.S_ISLNK(mode):
                raise BundleError(
                    f"{root}: {relative!r} is a symbolic link; a bundle holds regular files only (a link can "
                    "point outside it, past the hashes): replace the link with the file itself (cp -L) or "
                    "re-package the bundle"
                )
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise BundleError(
                    f"{root}: {relative!r} is not a regular file (a FIFO, socket or device); "
                    "remove it: a bundle holds regular files and directories only"
                )


def check_inside(root: Path, name: str) -> Path:
    """``root / name``, checked to stay inside ``root`` once resolved.

    Raises:
        BundleError: the resolved path leaves ``root``.
    """
    path = root / name
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{root}: listed file {name!r} resolves outside the bundle directory; {_REPACKAGE}")
    return path


def model_files(root: Path, model_file: str) -> tuple[str, ...]:
    """Every file (bundle-relative, ``/``-separated) a runtime reads when it loads ``model_file``.

    OpenVINO IR ``x.xml``: also ``x.bin``. ONNX: also every external-data location its tensors
    name. A SavedModel's ``saved_model.pb``: every file of its directory. Anything else: itself.

    Raises:
        BundleError: an ONNX model cannot be parsed, or names external data that is missing,
            or outside the bundle.
        BackendUnavailableError: an ONNX model may use external data and the ``onnx`` package
            needed to read which is not installed.
    """
    model = PurePosixPath(model_file)
    if model.suffix == ".xml":
        return (model_file, model.with_suffix(".bin").as_posix())
    if model.suffix == ".onnx":
        return (model_file, *sorted(_onnx_external_files(root, model)))
    if model.name == "saved_model.pb":
        directory = root / model.parent
        found = sorted(
            p.relative_to(root).as_posix() for p in directory.rglob("*") if p.is_file() and not p.is_symlink()
        )
        return tuple(name for name in found if name != MANIFEST_NAME)
    return (model_file,)


def _onnx_external_files(root: Path, model: PurePosixPath) -> set[str]:
    path = root / model
    if not _contains(path, _ONNX_LOCATION_KEY):
        return set()
    try:
        import onnx  # lazy: the sdk core must not import heavy libraries at import time
    except ImportError as e:
        raise BackendUnavailableError(
            f"{root}: {model} may keep weights in external-data files, and reading which needs the onnx "
            "package; install it with: pip install 'shelfedge[onnx]'"
        ) from e
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf and onnx raise many types: any of them means "not loadable"
        raise BundleError(f"{root}: {model} is not a readable ONNX model ({e}); {_REPACKAGE}") from e
    files = set()
    for tensor in _onnx_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
        if not location:
            raise BundleError(f"{root}: {model} tensor {tensor.name!r} is external but names no file; {_REPACKAGE}")
        parts = PurePosixPath(location).parts
        if not parts or PurePosixPath(location).is_absolute() or ".." in parts or "\\" in location:
            raise BundleError(
                f"{root}: {model} tensor {tensor.name!r} reads external data from {location[:200]!r}, "
                f"outside the bundle directory; {_REPACKAGE}"
            )
        files.add(model.parent.joinpath(*(p for p in parts if p != ".")).as_posix())
    return files


def _contains(path: Path, needle: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
                return view.find(needle) >= 0
    except OSError as e:
        raise BundleError(f"cannot read {path}: {e}") from e


def _onnx_tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers and attribute tensors of all (sub)graphs and functions."""
    stack: list[Any] = [model.graph, *model.functions]
    while stack:
        graph = stack.pop()
        yield from getattr(graph, "initializer", ())
        for sparse in getattr(graph, "sparse_initializer", ()):
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse_tensors = [*attribute.sparse_tensors]
                if attribute.HasField("sparse_tensor"):
                    sparse_tensors.append(attribute.sparse_tensor)
                for sparse in sparse_tensors:
                    yield from (sparse.values, sparse.indices)
                if attribute.HasField("g"):
                    stack.append(attribute.g)
                stack.extend(attribute.graphs)
