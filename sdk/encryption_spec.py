"""The ``encryption`` section of a bundle manifest: which model files are AES-256-GCM ciphertext.

Written by :func:`sdk.encryption.encrypt_bundle`; bundles without it read as before (the key is
simply absent). The section names the algorithm, the encrypted files (every file the runtime
reads for the model) and the id of the key (:func:`key_id`: the first 16 hex digits of the
key's sha256), so a load can say which key a bundle needs without holding it.

Immutable; safe to share across threads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

from sdk._strict import StrictReader, as_list, as_relative_path, as_str

ALGORITHM = "AES-256-GCM"
KEY_BYTES = 32
_KEY_ID = re.compile(r"[0-9a-f]{16}")


def key_id(key: bytes) -> str:
    """The id of a model key: the first 16 hex digits of its sha256 (names the key, reveals nothing)."""
    return hashlib.sha256(key).hexdigest()[:16]


@dataclasses.dataclass(frozen=True, kw_only=True)
class EncryptionSpec:
    """Which files of a bundle are encrypted, how, and with which key.

    Attributes:
        algorithm: ``"AES-256-GCM"`` (the only one).
        files: the encrypted files, relative to the bundle directory (each hashed as ciphertext).
        key_id: :func:`key_id` of the key that encrypted them.

    Raises:
        ValueError: an unknown algorithm, no files, a repeated file or a malformed key id.
    """

    algorithm: str = ALGORITHM
    files: tuple[str, ...]
    key_id: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", tuple(self.files))
        if self.algorithm != ALGORITHM:
            raise ValueError(f"encryption algorithm {self.algorithm!r} is not supported (only {ALGORITHM})")
        if not self.files or len(set(self.files)) != len(self.files):
            raise ValueError(f"encryption files {list(self.files)} must be a non-empty list without repeats")
        if not _KEY_ID.fullmatch(self.key_id):
            raise ValueError(f"encryption key_id {self.key_id[:40]!r} must be 16 lowercase hex digits")

    def to_dict(self) -> dict[str, Any]:
        return {"algorithm": self.algorithm, "files": list(self.files), "key_id": self.key_id}

    @classmethod
    def from_reader(cls, r: StrictReader) -> EncryptionSpec:
        """Parse strictly.

        Raises:
            ManifestError (via ``r``): an unknown/missing key or an impossible value.
        """
        try:
            value = cls(
                algorithm=r.required("algorithm", as_str),
                files=r.required("files", as_list(as_relative_path)),
                key_id=r.required("key_id", as_str),
            )
        except ValueError as e:
            raise r.fail(str(e)) from e
        r.finish()
        return value
