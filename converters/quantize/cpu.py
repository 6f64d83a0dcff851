"""Whether int8 weights need 7 bits on this CPU: the VNNI check behind the overflow fix.

x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply u8 activations by s8 weights with
``vpmaddubsw``, which adds pairs of products in int16 and saturates: with full 8-bit weights and
large activations the sums clip, so the same int8 model answers differently there than on CPUs
with VNNI (``vpdpbusd`` adds in int32), AMX, ARM (``sdot``), GPUs or NPUs. Weights stored in 7
bits (NNCF's ``overflow_fix``, ONNX Runtime's ``reduce_range``) keep the pair sums in range, at a
small cost in accuracy where it is not needed. ``auto`` in a quantize config asks this module.

The detection reads the host the conversion runs on (``/proc/cpuinfo`` on Linux), which is also
where the budget search measures accuracy; a target known to differ is given an explicit value.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
from pathlib import Path
from typing import Any

AUTO = "auto"
# cpuinfo flags of an int8 dot product that adds in int32 (AMX implies VNNI).
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
_CPUINFO = Path("/proc/cpuinfo")


@dataclasses.dataclass(frozen=True, kw_only=True)
class CpuInt8:
    """What a CPU offers for int8 dot products. Immutable: safe to share across threads.

    Attributes:
        machine: ``platform.machine()``, e.g. ``x86_64`` or ``aarch64``.
        vnni_flags: the ``VNNI_FLAGS`` the CPU reports.
        flags_read: whether the CPU's flags could be read; an x86 CPU whose flags are unknown
            is treated as one without VNNI (7 bits are correct everywhere, 8 are not).
    """

    machine: str
    vnni_flags: tuple[str, ...]
    flags_read: bool

    @property
    def x86(self) -> bool:
        return self.machine.lower() in _X86

    @property
    def needs_seven_bit_weights(self) -> bool:
        """True on x86 without (known) VNNI: where 8-bit weights can saturate."""
        return self.x86 and not self.vnni_flags

    def to_record(self) -> dict[str, Any]:
        return {"machine": self.machine, "vnni_flags": list(self.vnni_flags), "flags_read": self.flags_read}


def parse_cpuinfo(text: str, machine: str) -> CpuInt8:
    """The int8 capabilities named in a ``/proc/cpuinfo`` text (its first ``flags`` line)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return CpuInt8(machine=machine, vnni_flags=tuple(f for f in VNNI_FLAGS if f in flags), flags_read=True)
    return CpuInt8(machine=machine, vnni_flags=(), flags_read=False)


@functools.lru_cache(maxsize=1)
def host_cpu() -> CpuInt8:
    """The CPU this process runs on, read once (``/proc/cpuinfo``; flags unread elsewhere)."""
    machine = platform.machine()
    try:
        text = _CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        # No /proc (macOS, Windows): an x86 host then counts as one without VNNI.
        return CpuInt8(machine=machine, vnni_flags=(), flags_read=False)
    return parse_cpuinfo(text, machine)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SevenBitChoice:
    """Whether a quantize step stores weights in 7 bits, and why (recorded in provenance).

    Attributes:
        requested: the config's value (``auto``, or an explicit one).
        seven_bit: the decision.
        applied: the concrete value handed to the library (e.g. ``enable`` or ``True``).
        cpu: the host CPU that ``auto`` detected; None for an explicit value.
    """

    requested: str | bool
    seven_bit: bool
    applied: str | bool
    cpu: CpuInt8 | None

    def to_record(self) -> dict[str, Any]:
        if self.cpu is None:
            reason = "set explicitly in the config"
        elif self.seven_bit:
            reason = "auto: x86 host CPU without VNNI (8-bit weights can saturate int16 sums)"
        else:
            reason = "auto: the host CPU adds int8 products in int32 (VNNI/AMX, or not x86)"
        return {
            "requested": self.requested,
            "seven_bit_weights": self.seven_bit,
            "applied": self.applied,
            "reason": reason,
            "host_cpu": self.cpu.to_record() if self.cpu is not None else None,
        }


def choose_seven_bit(requested: str | bool, *, seven: str | bool, eight: str | bool) -> SevenBitChoice:
    """Resolve ``auto`` against the host CPU; pass an explicit value through.

    Args:
        requested: ``auto`` or the library's own value.
        seven, eight: the library's values for 7-bit and for 8-bit weights.
    """
    if requested != AUTO or isinstance(requested, bool):
        return SevenBitChoice(requested=requested, seven_bit=requested == seven, applied=requested, cpu=None)
    cpu = host_cpu()
    needed = cpu.needs_seven_bit_weights
    return SevenBitChoice(requested=requested, seven_bit=needed, applied=seven if needed else eight, cpu=cpu)
