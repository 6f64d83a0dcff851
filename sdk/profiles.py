"""Hardware profiles: one strict YAML per target device class (``hw_profiles/<id>.yaml``)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from sdk._strict import StrictReader, as_bool, as_float, as_int, as_list, as_str
from sdk.enums import Device, FallbackPolicy, Precision, Runtime
from sdk.errors import ProfileError

PROFILES_ENV = "SHELFEDGE_PROFILES"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """Backend knobs; each adapter reads the ones that apply to it."""

    threads: int | None = None
    delegate: str | None = None  # LiteRT external delegate: a library path or file name
    delegate_options: Mapping[str, str] = dataclasses.field(default_factory=dict)
    performance_hint: str | None = None  # OpenVINO: LATENCY | THROUGHPUT | CUMULATIVE_THROUGHPUT
    num_requests: int | None = None  # OpenVINO async infer requests
    inference_precision: str | None = None  # OpenVINO INFERENCE_PRECISION_HINT: f32 | f16 | bf16
    cache_dir: str | None = None  # OpenVINO model cache
    execution_providers: tuple[str, ...] = ()  # ONNX Runtime, in order of preference

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["execution_providers"] = list(self.execution_providers)
        data["delegate_options"] = dict(self.delegate_options)
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Budgets:
    """What a bundle must fit on the device; None means not budgeted."""

    p95_latency_ms: float | None = None
    peak_memory_mb: float | None = None
    bundle_size_mb: float | None = None
    max_accuracy_drop_pt: float | None = None
    # Recommendation bundles: the allowed NDCG@10 drop vs fp32 in points (NDCG x 100), and
    # recommend()'s end-to-end p99 (encoder + scoring + top-k) for one request.
    max_ndcg_drop_pt: float | None = None
    p99_recommend_ms: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ParityTolerance:
    """Allowed deviation from the reference for one precision; None means not checked."""

    max_abs_diff: float | None = None
    mean_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    min_psnr_db: float | None = None
    min_cosine: float | None = None
    max_kl: float | None = None
    min_top1_agreement: float | None = None
    min_top5_overlap: float | None = None
    min_accuracy_ratio: float | None = None
    max_worst_class_recall_drop: float | None = None
    # Recommendations: the candidate's top-10 against the reference's (share in common, and
    # NDCG@10 graded by the reference's ranking); min_accuracy_ratio is then NDCG@10 on the
    # held-out items as a fraction of the reference's.
    min_overlap_at_10: float | None = None
    min_ndcg_at_10: float | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardwareProfile:
    """A target device class: runtime, device, options, budgets and tolerances."""

    id: str
    description: str
    runtime: Runtime
    device: Device
    fallback_device: Device | None
    runtime_options: RuntimeOptions
    precisions: tuple[Precision, ...]
    input_size: tuple[int, int]
    budgets: Budgets
    parity: Mapping[Precision, ParityTolerance]
    fallback: FallbackPolicy
    # Trust (sdk/signing.py, sdk/audit.py): refuse bundles without a valid signature by one of
    # ``trusted_keys`` (PEM public keys); append one JSON line per load to ``audit_log``. Paths
    # in the YAML are relative to the profile file; here they are resolved.
    require_signature: bool = False
    trusted_keys: tuple[Path, ...] = ()
    audit_log: Path | None = None
    source: str = ""

    def tolerance(self, precision: Precision) -> ParityTolerance:
        """The tolerances for ``precision``, or an empty (nothing checked) set."""
        return self.parity.get(precision, ParityTolerance())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "runtime": self.runtime.value,
            "device": self.device.value,
            "fallback_device": self.fallback_device.value if self.fallback_device else None,
            "runtime_options": self.runtime_options.to_dict(),
            "precisions": [p.value for p in self.precisions],
            "input_size": list(self.input_size),
            "budgets": dataclasses.asdict(self.budgets),
            "parity": {p.value: dataclasses.asdict(t) for p, t in self.parity.items()},
            "fallback": self.fallback.value,
            "require_signature": self.require_signature,
            "trusted_keys": [str(p) for p in self.trusted_keys],
            "audit_log": str(self.audit_log) if self.audit_log else None,
        }


def builtin_profiles_dir() -> Path:
    """The ``hw_profiles`` directory shipped with shelfedge."""
    import hw_profiles

    return Path(hw_profiles.__file__).parent


def profile_dirs() -> list[Path]:
    """Where profiles are looked up: ``$SHELFEDGE_PROFILES`` (os.pathsep-separated), then built-ins."""
    extra = [Path(p) for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    return [*extra, builtin_profiles_dir()]


def list_profiles() -> list[HardwareProfile]:
    """Every profile found, first definition of an id wins.

    Raises:
        ProfileError: a profile file is malformed.
    """
    seen: dict[str, HardwareProfile] = {}
    for directory in profile_dirs():
        for file in sorted(directory.glob("*.yaml")):
            profile = load_profile_file(file)
            seen.setdefault(profile.id, profile)
    return list(seen.values())


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """Load a profile by id (``x86-kiosk-cpu``) or by path to a YAML file.

    Raises:
        ProfileError: no such profile, or the file breaks the schema (names file and key).
    """
    text = str(name_or_path)
    path = Path(text)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return load_profile_file(path)
    for directory in profile_dirs():
        candidate = directory / f"{text}.yaml"
        if candidate.is_file():
            return load_profile_file(candidate)
    known = ", ".join(sorted(p.stem for d in profile_dirs() for p in d.glob("*.yaml")))
    raise ProfileError(f"no hardware profile {text!r}; known profiles: {known} (or pass a YAML path)")


def load_profile_file(path: Path) -> HardwareProfile:
    """Parse one profile YAML strictly.

    Raises:
        ProfileError: missing/unreadable file, bad YAML, unknown or missing key, bad value.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ProfileError(f"{path}: no such profile file") from e
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ProfileError(f"{path}: cannot read the profile YAML: {e}") from e
    r = StrictReader(data, str(path), ProfileError)
    options = r.child("runtime_options", required=False)
    budgets = r.child("budgets", required=False)
    parity = r.child("parity", required=False)
    profile = HardwareProfile(
        id=r.required("id", as_str),
        description=r.required("description", as_str),
        runtime=r.required("runtime", lambda v: Runtime.parse(v, "runtime")),
        device=r.required("device", lambda v: Device.parse(v, "device")),
        fallback_device=r.optional("fallback_device", None, lambda v: Device.parse(v, "fallback_device")),
        runtime_options=_options(options) if options else RuntimeOptions(),
        precisions=r.required("precisions", as_list(lambda v: Precision.parse(v, "precision"))),
        input_size=r.required("input_size", _size),
        budgets=_dataclass_from(budgets, Budgets) if budgets else Budgets(),
        parity=_parity(parity) if parity else {},
        fallback=r.required("fallback", lambda v: FallbackPolicy.parse(v, "fallback")),
        require_signature=r.optional("require_signature", False, as_bool),
        trusted_keys=r.optional("trusted_keys", (), as_list(lambda v: _beside(path, v))),
        audit_log=r.optional("audit_log", None, lambda v: _beside(path, v)),
        source=str(path),
    )
    r.finish()
    if profile.id != path.stem:
        raise ProfileError(f"{path}: id {profile.id!r} must match the file name {path.stem!r}")
    if not profile.precisions:
        raise ProfileError(f"{path}: 'precisions' must list at least one precision")
    return profile


def _beside(profile: Path, value: Any) -> Path:
    """A path from the profile, relative to the profile's own directory unless absolute."""
    text = as_str(value)
    if not text:
        raise ValueError("expected a file path, got an empty string")
    return Path(os.path.abspath(profile.parent / Path(text).expanduser()))


def _size(value: Any) -> tuple[int, int]:
    items = as_list(as_int)(value)
    if len(items) != 2 or min(items) < 1:
        raise ValueError(f"expected [height, width], got {value!r}")
    return (items[0], items[1])


def _options(r: StrictReader) -> RuntimeOptions:
    value = RuntimeOptions(
        threads=r.optional("threads", None, as_int),
        delegate=r.optional("delegate", None, as_str),
        delegate_options=r.optional("delegate_options", {}, lambda v: {str(k): str(x) for k, x in dict(v).items()}),
        performance_hint=r.optional("performance_hint", None, as_str),
        num_requests=r.optional("num_requests", None, as_int),
        inference_precision=r.optional("inference_precision", None, _precision_hint),
        cache_dir=r.optional("cache_dir", None, as_str),
        execution_providers=r.optional("execution_providers", (), as_list(as_str)),
    )
    r.finish()
    return value


def _precision_hint(value: Any) -> str:
    text = as_str(value).lower()
    if text not in ("f32", "f16", "bf16"):
        raise ValueError(f"inference_precision must be f32, f16 or bf16, got {value!r}")
    return text


def _dataclass_from(r: StrictReader, cls: type) -> Any:
    values = {f.name: r.optional(f.name, None, as_float) for f in dataclasses.fields(cls)}
    r.finish()
    return cls(**values)


def _parity(r: StrictReader) -> dict[Precision, ParityTolerance]:
    result = {}
    keys = r.keys()  # a StrictReader's keys, not a dict's
    for key in keys:
        try:
            precision = Precision.parse(key, "parity precision")
        except ValueError as e:
            raise r.fail(str(e)) from e
        child = r.child(key)
        assert child is not None
        result[precision] = _dataclass_from(child, ParityTolerance)
    r.finish()
    return result
