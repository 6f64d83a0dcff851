"""Which bundles a load accepts: the signature policy of a profile and the environment.

A hardware profile may say ``require_signature: true`` and list ``trusted_keys`` (PEM public
keys, paths relative to the profile file). The environment adds to it, for apps that load
without a profile or devices whose keys are provisioned apart from the profiles:

- ``SHELFEDGE_TRUSTED_KEYS``: more trusted public keys, ``os.pathsep``-separated;
- ``SHELFEDGE_REQUIRE_SIGNATURE``: ``1``/``true`` requires a valid signature on every load
  (it can only tighten a profile: ``0`` does not lift a profile's requirement).

Under the requirement an unsigned bundle, a signature by an untrusted key, or one that does
not match the bundle's files is refused with :class:`SignatureError` before any model byte
reaches a runtime. Without it such a bundle loads, and what-ran-where says so (``signed``,
``signature_verified``). Stateless apart from reading the environment; safe across threads.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdk.bundle import Bundle
from sdk.errors import ConfigError, SignatureError
from sdk.profiles import HardwareProfile
from sdk.signing import SignatureStatus, signature_key_hint, verify_bundle

TRUSTED_KEYS_ENV = "SHELFEDGE_TRUSTED_KEYS"
REQUIRE_SIGNATURE_ENV = "SHELFEDGE_REQUIRE_SIGNATURE"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrustPolicy:
    """What a load demands of a bundle's signature. Immutable: safe to share across threads."""

    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()


def trust_policy(profile: HardwareProfile | None, environ: Mapping[str, str] | None = None) -> TrustPolicy:
    """The profile's signature policy, tightened by the environment (see the module docstring).

    Raises:
        ConfigError: ``SHELFEDGE_REQUIRE_SIGNATURE`` is not a yes/no value.
    """
    env = os.environ if environ is None else environ
    flag = env.get(REQUIRE_SIGNATURE_ENV, "").strip().lower()
    if flag not in _TRUE + _FALSE:
        raise ConfigError(f"{REQUIRE_SIGNATURE_ENV}={flag[:40]!r}: use 1 (require a valid signature) or 0")
    extra = tuple(Path(p).expanduser() for p in env.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p.strip())
    own = profile.trusted_keys if profile is not None else ()
    return TrustPolicy(
        require_signature=flag in _TRUE or (profile is not None and profile.require_signature),
        trusted_keys=tuple(dict.fromkeys((*own, *extra))),
    )


def check_signature(bundle: Bundle, policy: TrustPolicy) -> SignatureStatus:
    """What ``bundle``'s signature says under ``policy`` (:func:`enforce` then refuses or not).

    With trusted keys the signature is verified (every file hashed again); without any, only
    whether the bundle holds one, and by which key it says, is read.

    Raises:
        ConfigError: a trusted key file is missing or not an EC public key.
        BundleError: the bundle directory holds a link or special file.
        BackendUnavailableError: there are trusted keys and model-signing is not installed.
    """
    if not policy.trusted_keys:
        return signature_key_hint(bundle.path)
    return verify_bundle(bundle.path, policy.trusted_keys)


def enforce(bundle: Bundle, policy: TrustPolicy, status: SignatureStatus) -> None:
    """Refuse ``bundle`` if ``policy`` requires a valid signature and ``status`` is not one.

    Without the requirement nothing is refused; a signature that is there but does not verify
    is logged as a warning.

    Raises:
        SignatureError: a valid signature is required and no trusted key is configured, or the
            bundle is unsigned, signed by an untrusted key, or its files do not match the
            signature (the message says which, and what to do).
    """
    if policy.require_signature and not policy.trusted_keys:
        raise SignatureError(
            f"{bundle.path}: a valid signature is required but no trusted public key is configured; list the "
            f"signers' .pub files under trusted_keys in the profile or in ${TRUSTED_KEYS_ENV}"
        )
    if status.valid:
        return
    if policy.require_signature:
        raise SignatureError(f"{bundle.path}: refused, a valid signature by a trusted key is required: {status.reason}")
    if status.signed and policy.trusted_keys:
        _log.warning("%s: loading although its signature is not valid: %s", bundle.path, status.reason)


def session_details(status: SignatureStatus) -> dict[str, Any]:
    """The what-ran-where entries (``SessionInfo.details``) for a signature status."""
    details: dict[str, Any] = {
        "signed": status.signed,
        "signature_verified": status.valid,
        "signature_key_id": status.key_id,
    }
    if status.signed and not status.valid:
        details["signature_reason"] = status.reason
    return details
