"""Reading a JSON file that may be hostile: bounded in size, depth and numbers, duplicate keys refused.

``json.loads`` alone follows a FIFO or ``/dev/zero`` forever, takes any size, raises
RecursionError on deep nesting, keeps the last of two equal keys, and accepts ``NaN``,
``Infinity`` and 5,000-digit integers. :func:`read_json_limited` refuses each of these with
the error class the caller names, saying what is wrong and what to do. Stateless; safe across
threads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


@dataclasses.dataclass(frozen=True, kw_only=True)
class JsonLimits:
    """What a JSON document may hold.

    Attributes:
        max_bytes: the largest file read (a shelfedge manifest is a few KB).
        max_depth: the deepest nesting of objects and arrays.
        max_int_digits: the most digits of an integer (int64 has 19).
        max_float_chars: the longest text of a non-integer number.
    """

    max_bytes: int = 1 << 20
    max_depth: int = 64
    max_int_digits: int = 19
    max_float_chars: int = 40


DEFAULT_LIMITS = JsonLimits()
_INT64 = 1 << 63


class _Refused(ValueError):
    """Raised inside the decoder hooks; turned into the caller's error with the file name."""


def read_json_limited(
    path: Path,
    error: Callable[[str], Exception],
    limits: JsonLimits = DEFAULT_LIMITS,
    what: str = "file",
) -> Any:
    """Read and parse a JSON file within ``limits``.

    Args:
        path: the file; it must be a regular file (not a FIFO, device or directory).
        error: builds the exception to raise from a message (e.g. ``ManifestError``).
        limits: the caps to apply.
        what: how messages name the document (``"manifest"``).

    Raises:
        FileNotFoundError: ``path`` does not exist (the caller words that case itself).
        Exception: ``error(message)`` when the file is not a regular file, cannot be read, is
            larger than ``limits.max_bytes``, is not UTF-8 JSON, nests deeper than
            ``limits.max_depth``, repeats a key in one object, or holds NaN, Infinity or a
            number outside the bounds.
    """
    text = _read_bounded(Path(path), error, limits, what)
    return parse_json_limited(text, lambda message: error(f"{path}: {message}"), limits, what)


def parse_json_limited(
    text: str, error: Callable[[str], Exception], limits: JsonLimits = DEFAULT_LIMITS, what: str = "document"
) -> Any:
    """Parse JSON text within ``limits`` (see :func:`read_json_limited`).

    Raises:
        Exception: ``error(message)`` on any limit broken or malformed JSON.
    """
    if len(text) > limits.max_bytes:
        raise error(f"the {what} has {len(text):,} characters, more than the {limits.max_bytes:,} allowed")
    try:
        data = json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=lambda s: _bounded_int(s, limits),
            parse_float=lambda s: _bounded_float(s, limits),
            parse_constant=_no_constant,
        )
    except _Refused as e:
        raise error(f"{e}; the {what} is corrupted or was not written by shelfedge: re-create it") from e
    except RecursionError as e:
        raise error(
            f"the {what} nests deeper than Python can parse (the limit is {limits.max_depth} levels); "
            "it is corrupted or hostile: re-create it"
        ) from e
    except json.JSONDecodeError as e:
        raise error(f"not valid JSON ({e}); the {what} is corrupted: re-create it") from e
    depth = nesting_depth(data, limits.max_depth)
    if depth > limits.max_depth:
        raise error(
            f"the {what} nests more than {limits.max_depth} levels of objects/arrays; "
            "it is corrupted or hostile: re-create it"
        )
    return data


def nesting_depth(data: Any, stop_after: int) -> int:
    """The nesting depth of parsed JSON (a scalar is 0), walked without recursion.

    Stops counting once the depth passes ``stop_after`` (the answer is then ``stop_after + 1``).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        depth += 1
        if depth > stop_after:
            return depth
        deepest = max(deepest, depth)
        stack.extend((child, depth) for child in children)
    return deepest


def _read_bounded(path: Path, error: Callable[[str], Exception], limits: JsonLimits, what: str) -> str:
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it unread.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise error(f"{path}: cannot open the {what}: {e}") from e
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(
                f"{path}: the {what} is not a regular file ({_kind(info.st_mode)}); "
                f"point at a real {what} file, not a pipe, device or directory"
            )
        if info.st_size > limits.max_bytes:
            raise error(
                f"{path}: the {what} is {info.st_size:,} bytes, more than the {limits.max_bytes:,} allowed; "
                f"it is not a shelfedge {what} or was corrupted: re-create it"
            )
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            raw = f.read(limits.max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read the {what}: {e}") from e
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > limits.max_bytes:  # it grew after fstat
        raise error(f"{path}: the {what} is larger than the {limits.max_bytes:,} bytes allowed; re-create it")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: the {what} is not UTF-8 text ({e}); it is corrupted: re-create it") from e


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Refused(f"key {key[:80]!r} appears twice in one object (which one counts is ambiguous)")
        result[key] = value
    return result


def _bounded_int(text: str, limits: JsonLimits) -> int:
    digits = len(text.lstrip("-"))
    if digits > limits.max_int_digits:
        raise _Refused(
            f"an integer has {digits:,} digits ({text[:20]}…), more than the {limits.max_int_digits} allowed"
        )
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise _Refused(f"the integer {text} does not fit in 64 bits")
    return value


def _bounded_float(text: str, limits: JsonLimits) -> float:
    if len(text) > limits.max_float_chars:
        raise _Refused(
            f"a number is written with {len(text):,} characters ({text[:20]}…), "
            f"more than the {limits.max_float_chars} allowed"
        )
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text} overflows to infinity")
    return value


def _no_constant(text: str) -> NoReturn:
    raise _Refused(f"{text} is not a number JSON allows (NaN and Infinity are refused)")
