"""Checks and hashes shared by the converters' frozen config dataclasses.

A config lists ``(field, ok, allowed)`` triples; :func:`check_fields` raises on the first that is not
``ok`` with one message shape for every config. :func:`config_hash` is what caches key on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from typing import Any

from sdk.errors import ConfigError


def check_fields(config: Any, checks: Iterable[tuple[str, bool, str]]) -> None:
    """Raises:
    ConfigError: ``<Config>.<field> must be <allowed>, got <value>`` for the first failed check.
    """
    for field, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{type(config).__name__}.{field} must be {allowed}, got {getattr(config, field)!r}")


def config_hash(config: Any) -> str:
    """sha256 of the dataclass's fields as sorted JSON: equal configs, equal hashes."""
    text = json.dumps(dataclasses.asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
