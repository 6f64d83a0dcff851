"""Signing keys: ECDSA key pairs for OpenSSF Model Signing, and their ids.

A key id is the sha256 (hex) of the public key's PEM (SubjectPublicKeyInfo): the ``hint``
model_signing records in a signature, so a signature names the key that made it. Keys are
ECDSA on P-256 (what :func:`generate_keypair` makes), P-384 or P-521 (what model_signing's
elliptic-key signer accepts). ``cryptography`` is imported on first use. Stateless; safe
across threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any

from sdk.errors import ConfigError
from sdk.manifest import MANIFEST_NAME

SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyPair:
    """The files :func:`generate_keypair` wrote."""

    private_key: Path
    public_key: Path
    key_id: str


def key_id(public_key: Any) -> str:
    """The id of a ``cryptography`` public key: sha256 (hex) of its PEM, as model_signing's hint."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def public_key_id(path: str | Path) -> str:
    """The key id of a PEM public key file (checked to be an EC key model_signing can verify with).

    Raises:
        ConfigError: the file is missing, unreadable, not a PEM public key, or not an EC key on
            P-256, P-384 or P-521.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = Path(path)
    data = _read_key_file(path, "public")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: not a PEM public key ({e}); pass the .pub file shelfedge keygen wrote") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        raise ConfigError(f"{path}: not an ECDSA P-256/P-384/P-521 public key; make one with shelfedge keygen")
    return key_id(key)


def generate_keypair(out_dir: str | Path, name: str = "shelfedge-signing") -> KeyPair:
    """Write a new ECDSA P-256 key pair: ``<name>.pem`` (private, mode 0600) and ``<name>.pub``.

    Raises:
        ConfigError: ``name`` is not a plain file name, ``out_dir`` is a bundle, a key file of
            that name already exists (never overwritten), or the files cannot be written.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    if not name or Path(name).name != name or name.startswith("."):
        raise ConfigError(f"key name {name!r} must be a plain file name (no directories, not hidden)")
    if (out / MANIFEST_NAME).exists():
        raise ConfigError(f"{out} is a bundle directory; private keys never go into a bundle: choose another --out")
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pair = KeyPair(private_key=out / f"{name}.pem", public_key=out / f"{name}.pub", key_id=key_id(key.public_key()))
    try:
        out.mkdir(parents=True, exist_ok=True)
        for existing in (pair.private_key, pair.public_key):
            if existing.exists():
                raise ConfigError(f"{existing} exists; keys are never overwritten: pick another --name or --out")
        _write_new(pair.private_key, private_pem, 0o600)
        _write_new(pair.public_key, public_pem, 0o644)
    except OSError as e:
        raise ConfigError(f"cannot write the key pair into {out}: {e}") from e
    return pair


def private_key_id(path: Path) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    data = _read_key_file(path, "private")
    if os.name == "posix" and os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        _log.warning("%s: the private key is readable by other users; chmod 600 it", path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        raise ConfigError(f"{path}: the private key is encrypted; pass an unencrypted PEM key (mode 0600)") from e
    except ValueError as e:
        raise ConfigError(f"{path}: not a PEM private key ({e}); pass the .pem file shelfedge keygen wrote") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        raise ConfigError(f"{path}: not an ECDSA P-256/P-384/P-521 private key; make one with shelfedge keygen")
    return key_id(key.public_key())


def _read_key_file(path: Path, kind: str) -> bytes:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(f"{path}: the {kind} key is not a regular file")
        if os.stat(path).st_size > 64 << 10:
            raise ConfigError(f"{path}: too large for a PEM {kind} key; pass the key file itself")
        return path.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{path}: no such {kind} key file; make a key pair with shelfedge keygen") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {kind} key: {e}") from e


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # the umask may have narrowed (or, for 0600, nothing to widen) the mode
