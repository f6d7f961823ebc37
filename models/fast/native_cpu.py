"""What identifies this CPU to the native build: the library is compiled with -march=native, so a
build cache shared across machines (a network home directory) must key each library by the CPU it
was built for, on every architecture."""

from __future__ import annotations

import platform
from pathlib import Path

# The /proc/cpuinfo fields that decide what -march=native generates: the model (x86: vendor_id,
# cpu family, model, model name; arm64: CPU implementer .. CPU revision; POWER: cpu; RISC-V: uarch)
# and the instruction-set extensions (x86: flags; arm64: Features; RISC-V: isa). Fields that change
# from one read to the next (cpu MHz, BogoMIPS) are left out: they would rebuild on every run.
FIELDS = ("vendor_id", "cpu family", "model", "model name", "flags", "CPU implementer", "CPU architecture",
          "CPU variant", "CPU part", "CPU revision", "Features", "cpu", "uarch", "isa")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The first core's instruction-set extensions (x86: flags; arm64: Features); empty where
    /proc/cpuinfo is missing."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_identity(cpuinfo: str | None = None) -> str:
    """The machine type and, for each field of FIELDS, the distinct values over all cores (a
    big.LITTLE arm64 lists two CPU parts). ``cpuinfo``: the text of /proc/cpuinfo (read when None);
    where it is missing or names none of the fields, platform.processor() stands in."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    values: dict[str, set[str]] = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in FIELDS:
            values.setdefault(key.strip(), set()).add(" ".join(sorted(value.split())))
    lines = [f"{k}: {' | '.join(sorted(values[k]))}" for k in FIELDS if k in values]
    return "\n".join([platform.machine(), *(lines or [platform.processor()])])
