"""Encrypted model files: AES-256-GCM, decrypted in memory only, handed to the runtime as bytes.

:func:`encrypt_bundle` replaces every file the runtime reads for the model (``model.tflite``;
OpenVINO's ``.xml`` and ``.bin``; a self-contained ``.onnx``) with its ciphertext, records the
manifest's ``encryption`` section (:mod:`sdk.encryption_spec`) and hashes the ciphertext. Sign
after encrypting: a signature covers the files as they are. :func:`decrypt_model` turns them
back into bytes in memory; ``sdk.load`` passes those to the runtime (LiteRT ``model_content``,
OpenVINO ``read_model`` from memory, ONNX Runtime from bytes), so the plaintext never touches disk.

An encrypted file is ``MAGIC`` (8 bytes) + a version byte + a 12-byte random nonce + the
ciphertext with its 16-byte tag. The associated data binds the header, the file's name and the
manifest's identity (name, format, precision, model file, source hash, creation time), so a
ciphertext moved to another file or another bundle under the same key does not decrypt.

Keys are 32 random bytes (:func:`generate_model_key` writes one, hex, to a 0600 file). A load
takes the key from its ``model_key`` argument, else ``$SHELFEDGE_MODEL_KEY`` (hex or base64),
else the file ``$SHELFEDGE_MODEL_KEY_FILE``. ``cryptography`` is imported on first use.
Stateless apart from reading the environment; every function is safe to call from several threads.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdk._bundle_files import check_inside
from sdk.bundle import Bundle, write_bundle
from sdk.encryption_spec import KEY_BYTES, EncryptionSpec, key_id
from sdk.enums import ModelFormat
from sdk.errors import BackendUnavailableError, BundleError, ConfigError, DecryptionError
from sdk.manifest import MANIFEST_NAME, Manifest

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "ModelKey",
    "ModelKeyFile",
    "decrypt_model",
    "encrypt_bundle",
    "generate_model_key",
    "key_id",
    "model_bytes_for_load",
    "read_model_key",
    "resolve_model_key",
]

KEY_ENV = "SHELFEDGE_MODEL_KEY"
KEY_FILE_ENV = "SHELFEDGE_MODEL_KEY_FILE"
MAGIC = b"SHELFENC"
VERSION = 1
_NONCE = 12
_HEADER = len(MAGIC) + 1 + _NONCE
_MAX_KEY_FILE = 4 << 10
_SERVER_FORMATS = (ModelFormat.KERAS, ModelFormat.SAVEDMODEL)
_HOW_TO_SET = f"set ${KEY_FILE_ENV} to the key file (or ${KEY_ENV} to the key, hex), or pass model_key="
_log = logging.getLogger(__name__)

# A key as callers pass it: the 32 raw bytes, or the path of a key file (str or Path).
ModelKey = bytes | str | os.PathLike[str]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelKeyFile:
    """What :func:`generate_model_key` wrote: the key file and the key's id."""

    path: Path
    key_id: str


def generate_model_key(path: str | Path) -> ModelKeyFile:
    """Write a new 32-byte model key, as 64 hex digits, to ``path`` (mode 0600, never overwritten).

    Raises:
        ConfigError: ``path`` exists, its directory is a bundle, or it cannot be written.
    """
    path = Path(path)
    if (path.parent / MANIFEST_NAME).exists():
        raise ConfigError(f"{path.parent} is a bundle directory; keys never go into a bundle: choose another path")
    key = secrets.token_bytes(KEY_BYTES)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.hex() + "\n")
        os.chmod(path, 0o600)
    except FileExistsError as e:
        raise ConfigError(f"{path} exists; keys are never overwritten: choose another path") from e
    except OSError as e:
        raise ConfigError(f"cannot write the model key {path}: {e}") from e
    return ModelKeyFile(path=path, key_id=key_id(key))


def parse_model_key(value: bytes | str, where: str) -> bytes:
    """A 32-byte key from its raw bytes, 64 hex digits or base64 (surrounding whitespace ignored).

    Raises:
        ConfigError: ``value`` is none of those; the message names ``where`` but never the value.
    """
    if isinstance(value, bytes) and len(value) == KEY_BYTES:
        return value
    try:
        text = value.decode("ascii") if isinstance(value, bytes) else value
        text = text.strip()
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text)
        decoded = base64.b64decode(text, validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error):
        decoded = b""
    if len(decoded) != KEY_BYTES:
        raise ConfigError(
            f"{where} is not a model key: expected 32 bytes, as 64 hex digits or base64; make one with "
            "shelfedge keygen --model-key --out FILE"
        )
    return decoded


def read_model_key(path: str | os.PathLike[str]) -> bytes:
    """The key in a key file (hex, base64 or 32 raw bytes); warns when others may read it.

    Raises:
        ConfigError: the file is missing, not a regular file, too large or holds no key.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) or os.stat(path).st_size > _MAX_KEY_FILE:
            raise ConfigError(f"{path}: not a model key file (a small regular file); pass the file keygen wrote")
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such model key file; make one with shelfedge keygen --model-key") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the model key: {e}") from e
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("%s: the model key is readable by other users; chmod 600 it", path)
    return parse_model_key(data, f"key file {path}")


def resolve_model_key(key: ModelKey | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key from ``key`` (raw bytes or a key file), else ``$SHELFEDGE_MODEL_KEY``, else the
    file ``$SHELFEDGE_MODEL_KEY_FILE``; None when none is set.

    Raises:
        ConfigError: the key given or set is not a key, or its file cannot be read.
    """
    if isinstance(key, bytes):
        return parse_model_key(key, "the model_key argument")
    if key is not None:
        return read_model_key(key)
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV, "").strip():
        return parse_model_key(env[KEY_ENV], f"${KEY_ENV}")
    if env.get(KEY_FILE_ENV, "").strip():
        return read_model_key(Path(env[KEY_FILE_ENV]).expanduser())
    return None


def encrypt_bundle(bundle_dir: str | Path, key: ModelKey) -> Bundle:
    """Encrypt, in place, every file the runtime reads for the bundle's model; re-hash the manifest.

    The bundle is checked (hashes) first. A signature no longer holds and is removed: sign after
    encrypting. Keep the plain bundle where it was made only if that place is trusted.

    Raises:
        ConfigError: no usable key, a Keras/SavedModel bundle (reference formats stay on the
            server), or an ONNX model with external data (ONNX Runtime reads that only from disk).
        BundleError: the bundle is already encrypted, tampered with, or a file cannot be written.
        ManifestError: the manifest is malformed.
        BackendUnavailableError: the ``cryptography`` package is not installed.
    """
    raw = resolve_model_key(key, environ={})
    assert raw is not None  # a key was passed: resolve_model_key returned it or raised
    bundle = Bundle.open(bundle_dir)
    manifest = bundle.manifest
    if manifest.encryption is not None:
        raise BundleError(
            f"{bundle.path}: already encrypted (key id {manifest.encryption.key_id}); encrypt the plain bundle instead"
        )
    if manifest.format in _SERVER_FORMATS:
        raise ConfigError(
            f"{bundle.path}: a {manifest.format.value} bundle is a server-side reference and is not encrypted; "
            "encrypt the tflite, openvino or onnx bundles that go to devices"
        )
    if manifest.format is ModelFormat.ONNX and len(bundle.model_files) > 1:
        raise ConfigError(
            f"{bundle.path}: {manifest.model_file} keeps weights in {', '.join(bundle.model_files[1:])}, and ONNX "
            "Runtime reads external data only from disk; re-export it with the weights inside the .onnx"
        )
    aesgcm = _aesgcm(raw)
    staged: list[tuple[Path, Path]] = []
    try:
        for name in bundle.model_files:
            target = check_inside(bundle.path, name)
            nonce = secrets.token_bytes(_NONCE)
            header = MAGIC + bytes([VERSION]) + nonce
            sealed = aesgcm.encrypt(nonce, target.read_bytes(), _associated_data(header, manifest, name))
            temporary = target.with_name(target.name + ".encrypting")
            temporary.write_bytes(header + sealed)
            staged.append((temporary, target))
        for temporary, target in staged:
            os.replace(temporary, target)
    except OSError as e:
        raise BundleError(f"{bundle.path}: cannot encrypt the model files: {e}; re-export the bundle") from e
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    spec = EncryptionSpec(files=bundle.model_files, key_id=key_id(raw))
    return write_bundle(bundle.path, manifest.with_changes(encryption=spec))


def decrypt_model(bundle: Bundle, key: ModelKey) -> dict[str, bytes]:
    """The plaintext of every encrypted model file (bundle-relative name -> bytes), in memory only.

    Raises:
        ConfigError: the bundle is not encrypted, or ``key`` is not a key.
        DecryptionError: ``key`` is not the bundle's key, or a file does not decrypt under it
            (tampered with, or moved from another file or bundle).
        BundleError: the encrypted files are not the files the model needs.
        BackendUnavailableError: the ``cryptography`` package is not installed.
    """
    spec = bundle.manifest.encryption
    if spec is None:
        raise ConfigError(f"{bundle.path}: the bundle is not encrypted; load it without a key")
    raw = resolve_model_key(key, environ={})
    assert raw is not None
    if key_id(raw) != spec.key_id:
        raise DecryptionError(
            f"{bundle.path}: encrypted with the key whose id is {spec.key_id}, but the key given has id "
            f"{key_id(raw)}: wrong key; {_HOW_TO_SET} with the bundle's key"
        )
    if set(spec.files) != set(bundle.model_files):
        raise BundleError(
            f"{bundle.path}: the manifest encrypts {list(spec.files)} but the model reads {list(bundle.model_files)}; "
            "re-package and encrypt the bundle again"
        )
    aesgcm = _aesgcm(raw)
    from cryptography.exceptions import InvalidTag

    plain: dict[str, bytes] = {}
    for name in spec.files:
        data = check_inside(bundle.path, name).read_bytes()
        header = data[:_HEADER]
        if len(data) < _HEADER + 16 or header[: len(MAGIC)] != MAGIC or header[len(MAGIC)] != VERSION:
            raise DecryptionError(
                f"{bundle.path}: {name!r} is not a shelfedge encrypted model file (version {VERSION}); "
                "re-export and encrypt the bundle again"
            )
        associated = _associated_data(header, bundle.manifest, name)
        try:
            plain[name] = aesgcm.decrypt(header[len(MAGIC) + 1 :], data[_HEADER:], associated)
        except InvalidTag as e:
            raise DecryptionError(
                f"{bundle.path}: the key does not decrypt {name!r}: wrong key or tampered file (one moved from "
                "another file or bundle does not decrypt either); restore the bundle or re-export it"
            ) from e
    return plain


def model_bytes_for_load(
    bundle: Bundle, key: ModelKey | None = None, environ: Mapping[str, str] | None = None
) -> dict[Path, bytes] | None:
    """For ``sdk.load``: the decrypted model files by their path in the bundle; None if not encrypted.

    Raises:
        DecryptionError: the bundle is encrypted and no key is given or set, or as :func:`decrypt_model`.
        ConfigError, BundleError, BackendUnavailableError: as :func:`decrypt_model`.
    """
    spec = bundle.manifest.encryption
    if spec is None:
        return None
    raw = resolve_model_key(key, environ)
    if raw is None:
        raise DecryptionError(f"{bundle.path}: the model is encrypted (key id {spec.key_id}); {_HOW_TO_SET}")
    return {bundle.path / name: data for name, data in decrypt_model(bundle, raw).items()}


def _associated_data(header: bytes, manifest: Manifest, name: str) -> bytes:
    identity = {
        "bundle": manifest.name,
        "format": manifest.format.value,
        "precision": manifest.precision.value,
        "model_file": manifest.model_file,
        "source_sha256": manifest.provenance.source_sha256,
        "created_utc": manifest.provenance.created_utc,
        "file": name,
    }
    return header + json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()


def _aesgcm(key: bytes) -> Any:  # cryptography's AESGCM
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as e:
        raise BackendUnavailableError(
            f"encrypted bundles need the cryptography package ({e}); install it with: pip install 'shelfedge[trust]'"
        ) from e
    return AESGCM(key)
