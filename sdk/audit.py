"""The audit log: one JSON line per bundle load, signature check and signing.

Where: ``$SHELFEDGE_AUDIT_LOG`` if set (an operator's override for one device), else the
profile's ``audit_log``; neither set, nothing is written. Each line is appended with one
``write`` on a descriptor opened ``O_APPEND``, so lines from several threads and processes do
not interleave or overwrite one another. Writing the log never fails a load: if it cannot be
written, a warning is logged once per path and the load goes on.

A line holds: ``time`` (UTC, ISO 8601), ``event`` (load | verify | sign), ``outcome``
(loaded | refused | valid | invalid | signed), ``bundle`` (absolute path), ``bundle_name``,
``manifest_sha256``, ``signed``, ``signature_valid``, ``signature_key_id``, ``profile``,
``runtime``, ``device``, ``reason`` and ``error`` (for refusals), ``host`` and ``pid``.
Safe to call from several threads.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
import socket
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sdk.manifest import MANIFEST_NAME, Manifest
from sdk.profiles import HardwareProfile
from sdk.signing import SignatureStatus

AUDIT_LOG_ENV = "SHELFEDGE_AUDIT_LOG"
_MAX_MANIFEST = 1 << 20  # the manifest reader's own cap: a larger file is not a manifest
_MAX_TEXT = 2000  # longest free-text field kept (a refusal reason), so lines stay small
_log = logging.getLogger(__name__)
_warned: set[str] = set()
_warned_lock = threading.Lock()


def audit_log_path(profile: HardwareProfile | None, environ: Mapping[str, str] | None = None) -> Path | None:
    """The audit log file: ``$SHELFEDGE_AUDIT_LOG``, else the profile's ``audit_log``, else None."""
    env = os.environ if environ is None else environ
    given = env.get(AUDIT_LOG_ENV, "").strip()
    if given:
        return Path(given).expanduser()
    return profile.audit_log if profile is not None else None


def manifest_sha256(bundle_dir: str | Path) -> str | None:
    """The sha256 of ``<bundle>/manifest.json``, or None when it is missing, not a regular file or too large."""
    path = Path(bundle_dir) / MANIFEST_NAME
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_MANIFEST:
            return None
        return hashlib.sha256(path.read_bytes()[: _MAX_MANIFEST + 1]).hexdigest()
    except OSError:
        return None


def bundle_event(
    event: str,
    outcome: str,
    bundle_dir: str | Path,
    *,
    bundle_name: str | None = None,
    status: SignatureStatus | None = None,
    profile: str | None = None,
    runtime: str | None = None,
    device: str | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """One audit line's fields for ``bundle_dir`` (the manifest's sha256 is computed here)."""
    reason = str(error) if error is not None else (status.reason if status and status.reason else None)
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "event": event,
        "outcome": outcome,
        "bundle": str(Path(bundle_dir).absolute()),
        "bundle_name": bundle_name or _manifest_name(bundle_dir),
        "manifest_sha256": manifest_sha256(bundle_dir),
        "signed": status.signed if status else None,
        "signature_valid": status.valid if status else None,
        "signature_key_id": status.key_id if status else None,
        "profile": profile,
        "runtime": runtime,
        "device": device,
        "reason": _clip(reason) if reason else None,
        "error": type(error).__name__ if error is not None else None,
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }


def append_audit(path: str | Path | None, record: Mapping[str, Any]) -> bool:
    """Append ``record`` as one JSON line to ``path`` (None: do nothing).

    Returns:
        True when the line was written; False when there is no log, or it could not be written
        (then a warning is logged, once per path).

    Raises:
        Nothing: an audit log that cannot be written never fails the caller.
    """
    if path is None:
        return False
    try:
        line = (json.dumps(dict(record), ensure_ascii=True, default=str, allow_nan=False) + "\n").encode("ascii")
        # O_NONBLOCK: a FIFO without a reader fails at once instead of hanging the load.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o640)
        try:
            written = os.write(fd, line)  # one write: O_APPEND puts it whole at the end
        finally:
            os.close(fd)
        if written != len(line):
            raise OSError(f"wrote {written} of {len(line)} bytes")
    except (OSError, ValueError, TypeError) as e:
        _warn_once(str(path), e)
        return False
    return True


def _warn_once(path: str, error: BaseException) -> None:
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    _log.warning(
        "cannot write the audit log %s (%s); loads go on without it. Fix the path or its permissions "
        "(%s or the profile's audit_log). Shown once.",
        path,
        error,
        AUDIT_LOG_ENV,
    )


def _manifest_name(bundle_dir: str | Path) -> str | None:
    # Read within the manifest reader's limits: the bundle may be the hostile one being refused.
    try:
        return Manifest.load(Path(bundle_dir) / MANIFEST_NAME).name
    except Exception:  # a manifest too broken to name the bundle: the line says null, the load goes on
        return None


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
