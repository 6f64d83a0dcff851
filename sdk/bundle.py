"""Bundle directories: open (with every file's sha256 checked) and write."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from sdk._bundle_files import check_inside, check_tree, model_files
from sdk.errors import BundleError, ManifestError
from sdk.manifest import MANIFEST_NAME, Manifest

_CHUNK = 1 << 20
# The OpenSSF Model Signing signature (sdk/signing.py): the one file of a bundle the manifest
# cannot list (it signs the manifest), at exactly this name in the bundle's top directory.
SIGNATURE_NAME = "model.sig"
_log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file, read in chunks (bundles can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(path: Path) -> str:
    """A sha256 over every file below ``path`` (names and contents), for model directories."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Bundle:
    """An opened, verified bundle: its directory, manifest and labels.

    Attributes:
        model_files: every file the runtime reads to load the model (the model file, OpenVINO
            ``.bin``, ONNX external data, a SavedModel's directory), all listed in the manifest.

    Immutable: safe to share across threads.
    """

    path: Path
    manifest: Manifest
    labels: tuple[str, ...]
    model_files: tuple[str, ...] = ()

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest.model_file

    @property
    def signature_path(self) -> Path:
        """Where the bundle's signature is (it may not exist: see :mod:`sdk.signing`)."""
        return self.path / SIGNATURE_NAME

    def size_bytes(self) -> int:
        return sum((self.path / name).stat().st_size for name in self.manifest.files)

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> Bundle:
        """Open a bundle directory and check it.

        Always checked: the directory holds no symbolic links or special files; the manifest
        is read within its limits (:meth:`Manifest.load`); every listed file exists inside the
        directory; and every file the runtime reads for the model is listed.

        Args:
            path: the bundle directory (the one holding ``manifest.json``).
            verify: also check the sha256 of every file listed in the manifest.

        Raises:
            BundleError: the directory or a listed file is missing, the directory holds a link
                or special file, a hash does not match, or the model needs a file the manifest
                does not list (the message names it).
            ManifestError: the manifest is missing, malformed, beyond the reader's limits or
                breaks the schema.
            BackendUnavailableError: an ONNX model may use external data and the ``onnx``
                package that reads which is not installed.
        """
        path = Path(path)
        if not path.exists():
            raise BundleError(f"{path}: no such bundle directory; check the path or run 'shelfedge export'")
        if not path.is_dir():
            raise BundleError(f"{path}: a bundle is a directory holding {MANIFEST_NAME}, not a file")
        check_tree(path)
        manifest = Manifest.load(path / MANIFEST_NAME)
        _check_signature_entry(path, manifest)
        for name, expected in manifest.files.items():
            file = check_inside(path, name)
            if not file.is_file():
                raise BundleError(f"{path}: file {name!r} listed in the manifest is missing; re-export the bundle")
            if verify:
                actual = sha256_file(file)
                if actual != expected:
                    raise BundleError(
                        f"{path}: {name!r} has sha256 {actual[:12]}…, the manifest says {expected[:12]}…; "
                        "the file was changed or corrupted after export: re-export the bundle or restore it"
                    )
        needed = model_files(path, manifest.model_file)
        for name in needed:
            if name not in manifest.files:
                raise BundleError(
                    f"{path}: the model {manifest.model_file!r} loads {name!r}, which the manifest does not list "
                    "with its sha256, so nothing checks it; re-package the bundle (shelfedge export) so that "
                    "the manifest lists every file the model needs"
                )
        labels = _read_labels(path, manifest)
        return cls(path=path, manifest=manifest, labels=labels, model_files=needed)


def _check_signature_entry(path: Path, manifest: Manifest) -> None:
    if SIGNATURE_NAME in manifest.files:
        raise BundleError(
            f"{path}: the manifest lists {SIGNATURE_NAME!r}, the signature file, which signs the manifest and so "
            "cannot be hashed in it; re-package the bundle (shelfedge export), then sign it (shelfedge sign)"
        )
    signature = path / SIGNATURE_NAME
    if signature.exists() and not signature.is_file():
        raise BundleError(
            f"{path}: {SIGNATURE_NAME!r} is not a regular file; remove it and sign the bundle again (shelfedge sign)"
        )


def _read_labels(path: Path, manifest: Manifest) -> tuple[str, ...]:
    if manifest.labels_file is None:
        return ()
    try:
        lines = (path / manifest.labels_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: cannot read labels file {manifest.labels_file!r}: {e}") from e
    labels = tuple(line.strip() for line in lines if line.strip())
    classes = manifest.outputs[0].shape[-1]
    if classes > 0 and len(labels) != classes:
        raise ManifestError(
            f"{path}: {manifest.labels_file!r} has {len(labels)} labels but output "
            f"{manifest.outputs[0].name!r} has {classes} classes; they must match"
        )
    return labels


def write_bundle(directory: Path, manifest: Manifest) -> Bundle:
    """Hash every file the manifest names, write ``manifest.json`` and reopen the bundle.

    ``manifest.files`` lists the relative paths to hash (values are replaced). A signature
    left from an earlier bundle in ``directory`` no longer holds and is removed: sign again.

    Raises:
        BundleError: a listed file does not exist under ``directory``, or a stale signature
            cannot be removed.
    """
    directory = Path(directory)
    stale = directory / SIGNATURE_NAME
    if stale.is_file():
        try:
            stale.unlink()
        except OSError as e:
            raise BundleError(f"{stale}: cannot remove the previous bundle's signature: {e}; delete it by hand") from e
        _log.info("%s: removed the previous signature (the bundle changed); sign it again", stale)
    hashes = {}
    for name in manifest.files:
        file = directory / name
        if not file.is_file():
            raise BundleError(f"{directory}: cannot package {name!r}: the file does not exist")
        hashes[name] = sha256_file(file)
    manifest.with_changes(files=hashes).save(directory)
    return Bundle.open(directory)
