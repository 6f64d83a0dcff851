"""Strict reading of dicts from JSON/YAML: unknown keys and missing fields are errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any, TypeVar

from sdk.errors import BundleError, ManifestError

T = TypeVar("T")


class UnsafeBundlePathError(ManifestError, BundleError):
    """A manifest names a path that leaves the bundle directory (``..``, absolute, odd characters).

    Both a ManifestError (the manifest is wrong) and a BundleError (the bundle would read outside
    itself), so either ``except`` catches it.
    """


class _UnsafePath(ValueError):
    """Raised by :func:`as_relative_path`; the reader turns it into UnsafeBundlePathError."""


class StrictReader:
    """Reads one mapping, remembering which keys were consumed.

    ``error`` builds the exception to raise; ``where`` names the file and path in it,
    so every message says exactly which key is wrong.
    """

    def __init__(self, data: object, where: str, error: Callable[[str], Exception]) -> None:
        if not isinstance(data, Mapping):
            raise error(f"{where}: expected a mapping, got {type(data).__name__}")
        self._data = data
        self._seen: set[str] = set()
        self.where = where
        self._error = error

    def fail(self, message: str) -> Exception:
        return self._error(f"{self.where}: {message}")

    def has(self, key: str) -> bool:
        return key in self._data

    def required(self, key: str, convert: Callable[[Any], T] | None = None) -> T:
        if key not in self._data:
            raise self.fail(f"missing required key {key!r}")
        return self._convert(key, self._data[key], convert)

    def optional(self, key: str, default: T, convert: Callable[[Any], T] | None = None) -> T:
        if key not in self._data or self._data[key] is None:
            self._seen.add(key)
            return default
        return self._convert(key, self._data[key], convert)

    def child(self, key: str, required: bool = True) -> StrictReader | None:
        if key not in self._data or self._data[key] is None:
            if required:
                raise self.fail(f"missing required key {key!r}")
            self._seen.add(key)
            return None
        self._seen.add(key)
        return StrictReader(self._data[key], f"{self.where}.{key}", self._error)

    def keys(self) -> Iterable[str]:
        return list(self._data)

    def raw(self, key: str) -> Any:
        self._seen.add(key)
        return self._data[key]

    def finish(self) -> None:
        unknown = sorted(set(self._data) - self._seen)
        if unknown:
            raise self.fail(f"unknown key(s) {', '.join(map(repr, unknown))}; remove or rename them")

    def _convert(self, key: str, value: Any, convert: Callable[[Any], T] | None) -> T:
        self._seen.add(key)
        if convert is None:
            return value
        try:
            return convert(value)
        except _UnsafePath as e:
            raise UnsafeBundlePathError(f"{self.where}.{key}: {e}") from e
        except (TypeError, ValueError) as e:
            raise self._error(f"{self.where}.{key}: {e}") from e


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    return value


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def as_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)


def as_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true/false, got {value!r}")
    return value


def as_list(item: Callable[[Any], T]) -> Callable[[Any], tuple[T, ...]]:
    def convert(value: Any) -> tuple[T, ...]:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__} {value!r}")
        return tuple(item(v) for v in value)

    return convert


def as_items(value: Any) -> tuple[Any, ...]:
    return as_list(lambda v: v)(value)


def as_int_pair(value: Any) -> tuple[int, int]:
    items = as_list(as_int)(value)
    if len(items) != 2:
        raise ValueError(f"expected [height, width], got {value!r}")
    return (items[0], items[1])


def as_str_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise TypeError(f"expected a mapping with string keys, got {value!r}")
    return dict(value)


def as_relative_path(value: Any) -> str:
    """A bundle-relative path in plain ``/`` form that cannot leave the bundle directory.

    Raises:
        TypeError: ``value`` is not a string.
        ValueError: the path is empty, absolute, has ``..`` or ``.`` parts, is not in
            canonical form, or holds a backslash or control character (the reader turns this
            into :class:`UnsafeBundlePathError`).
    """
    text = as_str(value)
    path = PurePosixPath(text)
    if (
        not text
        or path.is_absolute()
        or any(part in ("..", ".") for part in text.split("/"))
        or path.as_posix() != text
        or "\\" in text
        or any(ord(c) < 32 or c == "\x7f" for c in text)
    ):
        raise _UnsafePath(
            f"{text[:200]!r} must be a path relative to the bundle directory ('name' or 'dir/name': no "
            "'..', '.', leading '/', backslash or control characters); re-package the bundle"
        )
    return text


def as_sha256_map(value: Any) -> dict[str, str]:
    """A ``files`` mapping: bundle-relative path -> lowercase hex sha256.

    Raises:
        TypeError: not a mapping with string keys.
        ValueError: a path is unsafe (see :func:`as_relative_path`) or a digest is malformed.
    """
    hashes = as_str_dict(value)
    for name, digest in hashes.items():
        as_relative_path(name)
        if not isinstance(digest, str) or len(digest) != 64 or digest.strip("0123456789abcdef"):
            raise ValueError(f"files[{name!r}] must be a 64-character lowercase sha256 hex digest")
    return hashes
