"""Hardware profile detection for the edge agent: what this device is, in the terms releases target.

The agent reports the details at enrolment (CPU architecture, ISA flags such as ``avx512_vnni`` or
``neon``, memory, onnxruntime version and execution providers) and derives a short profile label from
them (for example ``x86_64-avx512_vnni`` or ``aarch64-neon``) that releases and director assignments name.
An operator can override the label with ``--profile``. Parsing takes the text of ``/proc/cpuinfo`` as an
argument so tests can feed other machines' files.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ota.edge.errors import ProfileError

# ISA features that change which kernels ONNX Runtime picks, hence a model's speed and INT8 numerics.
INTERESTING_FLAGS = frozenset(
    {
        "sse4_1",
        "sse4_2",
        "avx",
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512vl",
        "avx512_vnni",
        "avx512_bf16",
        "avx_vnni",
        "amx_int8",
        "amx_bf16",
        "neon",
        "asimd",
        "asimddp",
        "asimdhp",
        "i8mm",
        "bf16",
        "sve",
        "sve2",
    }
)
_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8l": "aarch64"}


@dataclass(frozen=True)
class HardwareProfile:
    """What the agent knows about its hardware.

    Attributes:
        name: The profile label releases target (``LABEL_PATTERN`` of ``ota.core.manifest``).
        arch: Normalised CPU architecture (``x86_64``, ``aarch64``, …).
        isa_flags: Interesting ISA flags found, sorted.
        cpu_count: Logical CPUs.
        memory_bytes: Physical memory.
        ort_version: onnxruntime version.
        ort_providers: Available execution providers.
    """

    name: str
    arch: str
    isa_flags: tuple[str, ...] = ()
    cpu_count: int = 1
    memory_bytes: int = 0
    ort_version: str = ""
    ort_providers: tuple[str, ...] = field(default_factory=tuple)

    def with_runtime(self) -> HardwareProfile:
        """This profile with the ONNX Runtime version and providers filled in (imports onnxruntime).

        :func:`detect_profile` leaves them out unless asked: the profile's name does not depend on them,
        and an agent that only polls must not load ONNX Runtime (tens of MB of RSS) to send them once at
        enrolment.
        """
        if self.ort_version:
            return self
        import onnxruntime as ort

        return dataclasses.replace(
            self, ort_version=ort.__version__, ort_providers=tuple(ort.get_available_providers())
        )

    def to_details(self) -> dict[str, Any]:
        """Return a flat map of scalars, as the enrolment's ``hardware`` field wants."""
        return {
            "arch": self.arch,
            "isa_flags": ",".join(self.isa_flags),
            "cpu_count": self.cpu_count,
            "memory_bytes": self.memory_bytes,
            "onnxruntime": self.ort_version,
            "providers": ",".join(self.ort_providers),
        }


def parse_cpu_flags(cpuinfo: str) -> tuple[str, ...]:
    """Extract the interesting ISA flags from ``/proc/cpuinfo`` text (x86 ``flags`` or Arm ``Features``).

    Args:
        cpuinfo: The file's text.

    Returns:
        Sorted interesting flags; ``neon`` is added on 64-bit Arm when ``asimd`` is present (the kernel
        calls Advanced SIMD ``asimd`` there).
    """
    found: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in {"flags", "features"}:
            found.update(flag for flag in value.split() if flag in INTERESTING_FLAGS)
    if "asimd" in found:
        found.add("neon")
    return tuple(sorted(found))


def normalise_arch(machine: str) -> str:
    """Map ``platform.machine()`` spellings to one name per architecture."""
    lowered = machine.lower()
    return _ARCH_ALIASES.get(lowered, lowered)


def profile_name(arch: str, flags: tuple[str, ...]) -> str:
    """Derive the profile label from the architecture and the best ISA tier present.

    Args:
        arch: Normalised architecture.
        flags: Interesting ISA flags.

    Returns:
        For example ``x86_64-avx512_vnni``, ``x86_64-avx2``, ``aarch64-dotprod`` or ``aarch64-neon``.
    """
    tiers = {
        "x86_64": [
            ("amx_int8", "amx"),
            ("avx512_vnni", "avx512_vnni"),
            ("avx_vnni", "avx_vnni"),
            ("avx512f", "avx512"),
            ("avx2", "avx2"),
        ],
        "aarch64": [("i8mm", "i8mm"), ("asimddp", "dotprod"), ("neon", "neon")],
    }
    for flag, label in tiers.get(arch, []):
        if flag in flags:
            return f"{arch}-{label}"
    return arch or "unknown"


def _memory_bytes(meminfo: str | None) -> int:
    if meminfo:
        for line in meminfo.splitlines():
            if line.startswith("MemTotal:"):
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    return int(parts[1]) * 1024
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def detect_profile(
    *,
    override_name: str | None = None,
    cpuinfo_path: Path = Path("/proc/cpuinfo"),
    meminfo_path: Path = Path("/proc/meminfo"),
    machine: str | None = None,
    runtime: bool = True,
) -> HardwareProfile:
    """Detect this device's hardware profile.

    Args:
        override_name: Use this label instead of the derived one (``--profile``; ``auto`` means derive).
        cpuinfo_path: Where to read CPU flags (tests point it at a fixture).
        meminfo_path: Where to read the memory size.
        machine: Architecture override (tests); ``platform.machine()`` by default.
        runtime: Also fill in the ONNX Runtime version and providers (imports onnxruntime; see
            :meth:`HardwareProfile.with_runtime`).

    Returns:
        The profile.

    Raises:
        ProfileError: If the architecture cannot be determined and no override is given.
    """
    arch = normalise_arch(machine if machine is not None else platform.machine())
    if not arch and not override_name:
        raise ProfileError("cannot determine the CPU architecture; pass --profile")
    flags = parse_cpu_flags(_read(cpuinfo_path) or "")
    name = override_name if override_name and override_name != "auto" else profile_name(arch, flags)
    profile = HardwareProfile(
        name=name,
        arch=arch,
        isa_flags=flags,
        cpu_count=os.cpu_count() or 1,
        memory_bytes=_memory_bytes(_read(meminfo_path)),
    )
    return profile.with_runtime() if runtime else profile
