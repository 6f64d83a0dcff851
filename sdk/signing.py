"""Signed bundles: OpenSSF Model Signing with an ECDSA key, checked against trusted public keys.

A signature is ``model.sig`` in the bundle's top directory: a Sigstore bundle (DSSE envelope of
an in-toto statement) written by ``model_signing`` (the OpenSSF reference implementation) with
its elliptic-key signer. It covers the sha256 of *every* file of the bundle, ``manifest.json``
included, and nothing is left out but ``model.sig`` itself (no git paths either). The key id is
the sha256 of the public key's PEM (SubjectPublicKeyInfo), the ``hint`` model_signing records.

``model_signing`` is imported on first use only (importing it takes 0.6-0.9 s; it is the ``trust`` extra), so
``import sdk`` stays light. Private keys never go into a bundle: :func:`sign_bundle` refuses a
key file inside the bundle directory and any bundle file holding a PEM private key.
Every function here is stateless and safe to call from several threads.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sdk._bundle_files import check_tree
from sdk._json_limits import JsonLimits, parse_json_limited, read_json_limited
from sdk.bundle import SIGNATURE_NAME, Bundle, sha256_file
from sdk.errors import BackendUnavailableError, SignatureError
from sdk.signing_keys import KeyPair, generate_keypair, key_id, private_key_id, public_key_id

__all__ = [
    "KeyPair",
    "SignatureStatus",
    "SignedBundle",
    "generate_keypair",
    "key_id",
    "public_key_id",
    "sign_bundle",
    "signature_key_hint",
    "verify_bundle",
]

# A signature lists one digest per file: 4 MiB holds tens of thousands of them.
_SIGNATURE_LIMITS = JsonLimits(max_bytes=4 << 20, max_depth=16)
# PEM headers of a private key ("-----BEGIN PRIVATE KEY-----", "... EC PRIVATE KEY-----", "... ENCRYPTED ...").
_PRIVATE_PEM = b"PRIVATE KEY-----"
_INSTALL = "install it with: pip install 'shelfedge[trust]'"


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignatureStatus:
    """What a bundle's signature says.

    Attributes:
        signed: the bundle holds a signature file.
        valid: the signature verifies against one of the trusted keys and covers every file.
        key_id: the sha256 (hex) of the signing public key's PEM, as the signature names it.
        reason: why ``valid`` is False (what is wrong and what to do); empty when valid.

    Immutable: safe to share across threads.
    """

    signed: bool
    valid: bool
    key_id: str | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SignedBundle:
    """The result of :func:`sign_bundle`: where the signature is, by which key, over which files."""

    signature: Path
    key_id: str
    files: tuple[str, ...]
    bundle_name: str


def sign_bundle(bundle_dir: str | Path, private_key: str | Path) -> SignedBundle:
    """Sign every file of a verified bundle (manifest included) into ``<bundle>/model.sig``.

    The bundle is opened first with every hash checked, so a tampered bundle is never signed.
    An existing signature is replaced (atomically).

    Raises:
        SignatureError: the key file is inside the bundle directory, or a bundle file holds a
            PEM private key.
        ConfigError: the key file is missing, unreadable, encrypted, or not an EC private key
            on P-256, P-384 or P-521.
        BundleError, ManifestError: the bundle fails its integrity checks (:meth:`Bundle.open`).
        BackendUnavailableError: model-signing is not installed.
    """
    root = Path(bundle_dir)
    key_path = Path(private_key)
    bundle = Bundle.open(root)
    if key_path.resolve().is_relative_to(root.resolve()):
        raise SignatureError(
            f"{key_path} is inside the bundle {root}; private keys never go into a bundle: move the key "
            "out of it (and out of anything you ship), then sign again"
        )
    for name in _files(root):
        if _holds_private_key(root / name):
            raise SignatureError(
                f"{root}: {name!r} holds a PEM private key; private keys never go into a bundle: remove it "
                "(and treat that key as leaked), then sign again"
            )
    identity = private_key_id(key_path)
    model_signing = _model_signing()
    # Written next to the signature once every file is hashed, then renamed over it: a reader
    # sees the old signature or the new one, never half of one.
    partial = root / f".{SIGNATURE_NAME}.partial"
    try:
        partial.unlink(missing_ok=True)  # a crashed run's leftover would be signed as a bundle file
        signer = model_signing.signing.Config().set_hashing_config(_hashing_config(model_signing))
        signer.use_elliptic_key_signer(private_key=key_path).sign(root.resolve(), partial)
        os.replace(partial, root / SIGNATURE_NAME)
    except OSError as e:
        raise SignatureError(f"{root}: cannot write {SIGNATURE_NAME}: {e}") from e
    finally:
        partial.unlink(missing_ok=True)
    statement = _statement(root / SIGNATURE_NAME)
    files = tuple(str(r.get("name")) for r in statement.get("predicate", {}).get("resources", ()))
    return SignedBundle(signature=root / SIGNATURE_NAME, key_id=identity, files=files, bundle_name=bundle.manifest.name)


def verify_bundle(bundle_dir: str | Path, trusted_public_keys: Iterable[str | Path]) -> SignatureStatus:
    """Check a bundle's signature against trusted public keys.

    Valid means: ``model.sig`` is a model_signing signature by one of ``trusted_public_keys``,
    and the sha256 of every file now in the bundle (``model.sig`` aside) is the one it signed:
    no file changed, added or removed. Only the bundle's files are hashed here; the manifest's
    own checks are :meth:`Bundle.open`'s.

    Returns:
        The status; ``reason`` says why it is not valid (unsigned, untrusted key, a file that
        changed, a malformed signature) and what to do.

    Raises:
        ConfigError: a trusted key file is missing, unreadable or not an EC public key.
        BundleError: the directory is missing or holds a link or special file.
        BackendUnavailableError: model-signing is not installed.
    """
    given = Path(bundle_dir)
    if not given.is_dir():
        raise SignatureError(f"{given}: no such bundle directory; check the path")
    root = given.resolve()  # the bundle may be reached through a link (current -> bundle-v2); not its files
    check_tree(root)  # before hashing: a FIFO would hang it, a link would lead out of the bundle
    trusted = {public_key_id(path): Path(path) for path in trusted_public_keys}
    signature = root / SIGNATURE_NAME
    if not signature.is_file():
        return SignatureStatus(
            signed=False, valid=False, reason=f"no {SIGNATURE_NAME}: the bundle is not signed; sign it (shelfedge sign)"
        )
    try:
        envelope = read_json_limited(signature, _Malformed, _SIGNATURE_LIMITS, "signature")
        hint = _key_hint(envelope)
    except _Malformed as e:
        return SignatureStatus(signed=True, valid=False, reason=f"{e}; sign the bundle again (shelfedge sign)")
    if not trusted:
        return SignatureStatus(
            signed=True, valid=False, key_id=hint, reason="not verified: no trusted public keys were given"
        )
    if hint not in trusted:
        known = ", ".join(k[:16] for k in sorted(trusted))
        return SignatureStatus(
            signed=True,
            valid=False,
            key_id=hint,
            reason=f"signed by key {hint[:16]}…, which is not trusted (trusted: {known}); add its public key "
            "to the trusted keys if you trust it, or have the bundle signed with a trusted key",
        )
    return _verify_with(root, signature, hint, trusted[hint])


def _verify_with(root: Path, signature: Path, hint: str, public_key: Path) -> SignatureStatus:
    model_signing = _model_signing()
    config = model_signing.verifying.Config().set_hashing_config(_hashing_config(model_signing))
    try:
        config.use_elliptic_key_verifier(public_key=public_key).verify(root, signature)
    except Exception as e:  # model_signing raises ValueError, InvalidSignature, KeyError...: all mean "invalid"
        detail = str(e) or type(e).__name__
        if detail.startswith("Signature mismatch"):  # the signature holds; the files are not what it signed
            detail = _file_differences(root, signature)
        return SignatureStatus(
            signed=True,
            valid=False,
            key_id=hint,
            reason=f"the signature does not match the bundle ({detail[:600]}); a file changed, was added or "
            "removed after signing: restore the bundle as shipped, or re-export and sign it again",
        )
    try:
        ignored = _statement(signature).get("predicate", {}).get("serialization", {}).get("ignore_paths", [])
    except SignatureError as e:
        return SignatureStatus(signed=True, valid=False, key_id=hint, reason=str(e))
    left_out = sorted(set(map(str, ignored)) - {SIGNATURE_NAME})
    if left_out:
        return SignatureStatus(
            signed=True,
            valid=False,
            key_id=hint,
            reason=f"the signature leaves {left_out} out, so nothing checks them; sign the bundle with shelfedge sign",
        )
    return SignatureStatus(signed=True, valid=True, key_id=hint)


def _file_differences(root: Path, signature: Path) -> str:
    """Which files differ from the signed ones (called once the signature itself has verified)."""
    try:
        resources = _statement(signature).get("predicate", {}).get("resources", [])
        signed = {str(r["name"]): str(r["digest"]) for r in resources}
    except (SignatureError, KeyError, TypeError, AttributeError):
        return "the signed file list cannot be read"
    present = {name: sha256_file(root / name) for name in _files(root)}
    parts = [
        f"{what}: {', '.join(names[:10])}{' …' if len(names) > 10 else ''}"
        for what, names in (
            ("changed", sorted(n for n in signed.keys() & present.keys() if signed[n] != present[n])),
            ("added", sorted(present.keys() - signed.keys())),
            ("missing", sorted(signed.keys() - present.keys())),
        )
        if names
    ]
    return "; ".join(parts) or "the files were hashed differently"


def signature_key_hint(bundle_dir: str | Path) -> SignatureStatus:
    """Whether a bundle holds a signature, and by which key it says, without verifying it (cheap).

    Raises:
        Nothing: a malformed signature file is reported in ``reason``.
    """
    signature = Path(bundle_dir) / SIGNATURE_NAME
    if not signature.is_file():
        return SignatureStatus(signed=False, valid=False, reason=f"no {SIGNATURE_NAME}: the bundle is not signed")
    try:
        hint = _key_hint(read_json_limited(signature, _Malformed, _SIGNATURE_LIMITS, "signature"))
    except _Malformed as e:
        return SignatureStatus(signed=True, valid=False, reason=str(e))
    return SignatureStatus(
        signed=True, valid=False, key_id=hint, reason="not verified: no trusted public keys were given"
    )


class _Malformed(SignatureError):
    """A signature file that is not a model_signing Sigstore bundle naming its key."""


def _key_hint(envelope: Any) -> str:
    try:
        hint = envelope["verificationMaterial"]["publicKey"]["hint"]
    except (KeyError, TypeError) as e:
        raise _Malformed(
            f"{SIGNATURE_NAME} is not a key-based model_signing signature (no verificationMaterial.publicKey.hint)"
        ) from e
    if not isinstance(hint, str) or len(hint) != 64 or any(c not in "0123456789abcdef" for c in hint):
        raise _Malformed(f"{SIGNATURE_NAME} names its key with {str(hint)[:80]!r}, not a sha256 key id")
    return hint


def _statement(signature: Path) -> dict[str, Any]:
    """The in-toto statement a signature signed (its files and how they were hashed)."""
    envelope = read_json_limited(signature, _Malformed, _SIGNATURE_LIMITS, "signature")
    try:
        payload = base64.b64decode(envelope["dsseEnvelope"]["payload"], validate=True).decode("utf-8")
    except (KeyError, TypeError, binascii.Error, UnicodeDecodeError) as e:
        raise _Malformed(f"{signature}: the signed payload cannot be read ({e})") from e
    statement = parse_json_limited(payload, _Malformed, _SIGNATURE_LIMITS, "signed statement")
    if not isinstance(statement, dict):
        raise _Malformed(f"{signature}: the signed payload is not an in-toto statement")
    return statement


def _hashing_config(model_signing: Any) -> Any:
    # Explicit, not guessed from the signature: sha256 per file, no links, and only the signature
    # itself left out (model_signing's default also leaves .git*/.github out: not in a bundle).
    return (
        model_signing.hashing.Config()
        .use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
        .set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)
    )


def _model_signing() -> Any:
    try:
        import model_signing.hashing
        import model_signing.signing
        import model_signing.verifying
    except ImportError as e:
        raise BackendUnavailableError(
            f"signing and verifying bundles needs the model-signing package; {_INSTALL}"
        ) from e
    return model_signing


def _files(root: Path) -> Iterator[str]:
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        if path.is_file() and name != SIGNATURE_NAME:
            yield name


def _holds_private_key(path: Path) -> bool:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return False
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as view:
            return view.find(_PRIVATE_PEM) >= 0
