"""The one error hierarchy every shelfedge package raises.

Each message names the object at fault and what to do about it; the original
exception is always chained (``raise ... from e``) so the cause is never lost.
"""

from __future__ import annotations


class ShelfedgeError(Exception):
    """Base class of every error shelfedge raises on purpose."""


class ConfigError(ShelfedgeError):
    """A configuration file or value is wrong (hardware profile, options, CLI arguments)."""


class ProfileError(ConfigError):
    """A hardware profile YAML is missing, malformed or has unknown/missing keys."""


class ManifestError(ConfigError):
    """A bundle manifest is missing, malformed or does not follow the schema."""


class BundleError(ShelfedgeError):
    """A bundle directory is missing, incomplete or tampered with (hash mismatch)."""


class BackendUnavailableError(ShelfedgeError):
    """A runtime backend is not installed, or the requested device/accelerator is absent."""


class ConversionError(ShelfedgeError):
    """A converter step could not turn the model into the requested format."""


class InputError(ShelfedgeError):
    """Input data is unusable: not an image, truncated, wrong shape or dtype."""


class InferenceError(ShelfedgeError):
    """A runtime failed while loading or running a model."""


class ParityError(ShelfedgeError):
    """A parity or benchmark run could not be carried out (not a failed check)."""


class SignatureError(BundleError):
    """A bundle cannot be signed, or its signature is missing, invalid or by an untrusted key where one is required."""


class DecryptionError(BundleError):
    """An encrypted bundle cannot be decrypted: no key given, the wrong key, or a tampered ciphertext."""
