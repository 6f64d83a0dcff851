"""``sdk.load``: a verified bundle + a hardware profile -> a running model session.

Every load checks the bundle's hashes, then its signature as the trust policy asks
(:mod:`sdk.trust`), before any model byte reaches a runtime; what the signature said goes
into what-ran-where (``SessionInfo.details``), and each load, accepted or refused, is one
line of the audit log (:mod:`sdk.audit`) when one is configured. An encrypted bundle
(:mod:`sdk.encryption`) is decrypted in memory after those checks and handed to the runtime as
bytes; what-ran-where says ``encrypted`` (and the key id and decryption time).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from sdk.audit import append_audit, audit_log_path, bundle_event
from sdk.bundle import Bundle
from sdk.encryption import ModelKey, model_bytes_for_load
from sdk.enums import RUNTIMES_FOR_FORMAT, Device, FallbackPolicy, Runtime
from sdk.errors import ConfigError, ShelfedgeError
from sdk.profiles import HardwareProfile, RuntimeOptions, load_profile
from sdk.runtime import BaseSession, SessionInfo, SessionOptions, open_session
from sdk.signing import SignatureStatus
from sdk.tensors import TensorSpec
from sdk.trust import check_signature, enforce, session_details, trust_policy


@dataclasses.dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """What ``load`` decided to open, before opening it (printed by ``--dry-run`` style tools)."""

    runtime: Runtime
    options: SessionOptions
    profile_id: str | None


def plan_load(
    bundle: Bundle,
    profile: HardwareProfile | None = None,
    *,
    runtime: Runtime | str | None = None,
    device: Device | str | None = None,
    fallback: FallbackPolicy | str | None = None,
    threads: int | None = None,
) -> LoadPlan:
    """Decide runtime, device and options: explicit arguments win over the profile.

    Raises:
        ConfigError: the runtime cannot open the bundle's format, or a value is unknown.
    """
    fmt = bundle.manifest.format
    allowed = RUNTIMES_FOR_FORMAT[fmt]
    try:
        chosen_runtime = Runtime.parse(runtime, "runtime") if runtime is not None else None
        chosen_device = Device.parse(device, "device") if device is not None else None
        chosen_fallback = FallbackPolicy.parse(fallback, "fallback") if fallback is not None else None
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if chosen_runtime is None and profile is not None and profile.runtime in allowed:
        chosen_runtime = profile.runtime
    chosen_runtime = chosen_runtime or allowed[0]
    if chosen_runtime not in allowed:
        names = ", ".join(r.value for r in allowed)
        raise ConfigError(
            f"bundle {bundle.path} is {fmt.value}; runtime {chosen_runtime.value!r} cannot open it "
            f"(use one of: {names}, or export the model to a format that runtime reads)"
        )
    # A profile only speaks for its own runtime: its device and options do not carry over.
    own = profile if profile is not None and profile.runtime == chosen_runtime else None
    options = own.runtime_options if own is not None else RuntimeOptions()
    if threads is not None:
        options = dataclasses.replace(options, threads=threads)
    session_options = SessionOptions(
        device=chosen_device or (own.device if own is not None else Device.CPU),
        fallback_device=(own.fallback_device if own is not None and own.fallback_device else Device.CPU),
        fallback=chosen_fallback or (own.fallback if own is not None else FallbackPolicy.RECORD),
        runtime_options=options,
    )
    return LoadPlan(runtime=chosen_runtime, options=session_options, profile_id=profile.id if profile else None)


class Model:
    """A bundle opened on a runtime: tensors in, tensors out, plus what ran where.

    ``trust`` is what the bundle's signature said when it was loaded (None: not checked).
    """

    def __init__(
        self, bundle: Bundle, session: BaseSession, plan: LoadPlan, trust: SignatureStatus | None = None
    ) -> None:
        self.bundle = bundle
        self.session = session
        self.plan = plan
        self.trust = trust

    @property
    def info(self) -> SessionInfo:
        return self.session.info

    @property
    def input_spec(self) -> TensorSpec:
        return self.bundle.manifest.inputs[0]

    def run(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch through the session (see BaseSession.run for what it raises)."""
        return self.session.run(feed)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def load(
    bundle: str | Path | Bundle,
    profile: str | Path | HardwareProfile | None = None,
    *,
    runtime: Runtime | str | None = None,
    device: Device | str | None = None,
    fallback: FallbackPolicy | str | None = None,
    threads: int | None = None,
    model_key: ModelKey | None = None,
) -> Model:
    """Open a bundle (hashes and signature checked) on the runtime and device the profile or caller asks for.

    The signature policy (``require_signature``, trusted keys) comes from the profile and the
    environment (:mod:`sdk.trust`); the audit log from ``$SHELFEDGE_AUDIT_LOG`` or the profile.
    An encrypted bundle's key: ``model_key`` (the 32 raw bytes, or a key file's path), else
    ``$SHELFEDGE_MODEL_KEY`` (hex or base64), else the file ``$SHELFEDGE_MODEL_KEY_FILE``.

    Raises:
        SignatureError: a valid signature by a trusted key is required and the bundle lacks one
            (unsigned, untrusted key, or a file changed after signing); the message says why.
        DecryptionError: the bundle is encrypted and no key is given or set, the key is not the
            bundle's, or a model file does not decrypt (tampered with, or moved from elsewhere).
        BundleError: the bundle is missing or tampered with.
        ManifestError: the manifest breaks the schema or disagrees with the model file.
        ProfileError: the profile is unknown or malformed.
        ConfigError: the runtime cannot open this bundle's format, a trusted key file is not
            an EC public key, ``$SHELFEDGE_REQUIRE_SIGNATURE`` is not a yes/no value, or a model
            key given or set is not a key.
        BackendUnavailableError: the runtime is not installed, or the device is absent under
            a strict fallback policy.
        InferenceError: the runtime could not load the model file.
    """
    chosen_profile = load_profile(profile) if isinstance(profile, (str, Path)) else profile
    audit_log = audit_log_path(chosen_profile)
    profile_id = chosen_profile.id if chosen_profile else None
    path = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
    opened: Bundle | None = None
    status: SignatureStatus | None = None
    plan: LoadPlan | None = None
    try:
        opened = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        policy = trust_policy(chosen_profile)
        status = check_signature(opened, policy)
        enforce(opened, policy, status)
        plan = plan_load(opened, chosen_profile, runtime=runtime, device=device, fallback=fallback, threads=threads)
        manifest = opened.manifest
        model_bytes, encrypted = _decrypt(opened, model_key)
        session = open_session(
            plan.runtime, opened.model_path, manifest.inputs, manifest.outputs, plan.options, model_bytes
        )
        del model_bytes  # the plaintext lives on only inside the session (LiteRT makes interpreters from it)
    except ShelfedgeError as e:
        refused = bundle_event(
            "load",
            "refused",
            path,
            bundle_name=opened.manifest.name if opened else None,
            status=status,
            profile=profile_id,
            runtime=plan.runtime.value if plan else None,
            device=plan.options.device.value if plan else None,
            error=e,
        )
        append_audit(audit_log, refused)
        raise
    info = session.info
    details = {**info.details, **session_details(status), **encrypted}
    session.info = dataclasses.replace(info, details=details)
    loaded = bundle_event(
        "load",
        "loaded",
        path,
        bundle_name=opened.manifest.name,
        status=status,
        profile=profile_id,
        runtime=info.runtime.value,
        device=info.actual_device,
    )
    append_audit(audit_log, loaded)
    return Model(opened, session, plan, trust=status)


def _decrypt(bundle: Bundle, model_key: ModelKey | None) -> tuple[dict[Path, bytes] | None, dict[str, Any]]:
    """(the model files decrypted in memory, or None when not encrypted; the what-ran-where entries).

    Raises:
        DecryptionError, ConfigError, BundleError, BackendUnavailableError: as
            :func:`sdk.encryption.model_bytes_for_load`.
    """
    started = time.perf_counter()
    model_bytes = model_bytes_for_load(bundle, model_key)
    spec = bundle.manifest.encryption
    if model_bytes is None or spec is None:
        return None, {"encrypted": False}
    decrypt_ms = round((time.perf_counter() - started) * 1000, 3)
    return model_bytes, {"encrypted": True, "encryption_key_id": spec.key_id, "decrypt_ms": decrypt_ms}
