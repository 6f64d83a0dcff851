"""The session fields every task's options share (profile, runtime, device, fallback, threads), checked once.

``ClassifierOptions`` and ``RecommenderOptions`` are frozen dataclasses with these fields plus their
own; their ``__post_init__`` calls :func:`check_session_fields`, which refuses a wrong type or value
with a :class:`~sdk.errors.ConfigError` naming the options class, the field and what to pass, and
stores ``runtime``, ``device`` and ``fallback`` as their enums. An options class with a
``concurrency`` field (calls that may run at once on the shared session) gets it checked and
applied too. Stateless; safe across threads.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from sdk.bundle import Bundle
from sdk.enums import Device, FallbackPolicy, Runtime, _StrEnum
from sdk.errors import ConfigError
from sdk.loading import Model, load
from sdk.profiles import HardwareProfile
from sdk.runtime import ResizableSession


def check_session_fields(options: Any) -> None:
    """Check and normalise ``options``' session fields in place (a frozen dataclass being built).

    Raises:
        ConfigError: a field has the wrong type or an unknown value (names the field and the fix).
    """
    owner = type(options).__name__
    profile = options.profile
    if profile is not None and not (
        isinstance(profile, (Path, HardwareProfile)) or (isinstance(profile, str) and profile)
    ):
        raise ConfigError(
            f"{owner}.profile is {profile!r}; pass a profile id such as 'x86-kiosk-cpu', "
            "a profile YAML path, a HardwareProfile, or None"
        )
    # Normalised here so that what the options say is what load() will be asked for.
    object.__setattr__(options, "runtime", _choice(options.runtime, Runtime, f"{owner}.runtime"))
    object.__setattr__(options, "device", _choice(options.device, Device, f"{owner}.device"))
    object.__setattr__(options, "fallback", _choice(options.fallback, FallbackPolicy, f"{owner}.fallback"))
    if options.threads is not None and not is_positive_int(options.threads):
        raise ConfigError(
            f"{owner}.threads is {options.threads!r}; pass a positive integer such as threads=2, "
            "or None for the profile's or runtime's default"
        )
    concurrency = getattr(options, "concurrency", None)
    if concurrency is not None and not is_positive_int(concurrency):
        raise ConfigError(
            f"{owner}.concurrency is {concurrency!r}; pass a positive integer (how many calls may run at "
            "once on the shared session, e.g. concurrency=4), or None for the runtime's default"
        )


OptionsT = TypeVar("OptionsT")


def options_or_default(options: object, kind: type[OptionsT], task: str) -> OptionsT:
    """``options`` if it is a ``kind``, ``kind()`` for None.

    Raises:
        ConfigError: ``options`` is something else (names ``task``'s create and from_bundle).
    """
    if options is None:
        return kind()
    if not isinstance(options, kind):
        raise ConfigError(
            f"{task}.create got options of type {type(options).__name__}; pass "
            f"{kind.__name__}(...) or use {task}.from_bundle(path, **keywords)"
        )
    return options


def load_for(bundle: str | Path | Bundle, options: Any) -> Model:
    """Open ``bundle`` on the runtime, device and fallback a task's options ask for (see :func:`sdk.load`),
    with the session sized to the options' ``concurrency`` when they have one.

    Raises:
        ConfigError: the session cannot be sized (the model is closed first), or as :func:`sdk.load`.
        BundleError, ManifestError, ProfileError, BackendUnavailableError, InferenceError: as :func:`sdk.load`.
    """
    model = load(
        bundle,
        options.profile,
        runtime=options.runtime,
        device=options.device,
        fallback=options.fallback,
        threads=options.threads,
    )
    concurrency = getattr(options, "concurrency", None)
    if concurrency is None or model.plan.options.concurrency == concurrency:
        return model
    # sdk.load has no concurrency argument: the session is sized once open, before any call.
    if not isinstance(model.session, ResizableSession):
        model.close()
        raise ConfigError(
            f"the {model.plan.runtime.value} session of {model.bundle.path} cannot be sized to "
            f"concurrency={concurrency}; leave concurrency=None"
        )
    model.session.set_concurrency(concurrency)
    model.plan = dataclasses.replace(
        model.plan, options=dataclasses.replace(model.plan.options, concurrency=concurrency)
    )
    return model


def is_positive_int(value: object) -> bool:
    """An int >= 1 that is not a bool (``threads=True`` is a mistake, not 1)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _choice(value: object, enum_type: type[_StrEnum], field: str) -> _StrEnum | None:
    if value is None:
        return None
    choices = ", ".join(repr(m.value) for m in enum_type)
    if not isinstance(value, str):
        raise ConfigError(f"{field} is a {type(value).__name__} ({value!r}); pass one of {choices} or None")
    try:
        return enum_type.parse(value, field)
    except ValueError as e:
        raise ConfigError(f"{e}; pass one of those, or None for the profile's choice") from e
