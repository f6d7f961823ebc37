"""The native library's cache key names the CPU it was built for (-march=native), on x86-64 and arm64."""

from __future__ import annotations

from models.fast import native
from models.fast.native_cpu import cpu_identity

X86 = """processor	: {i}
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC 9B14
cpu MHz		: {mhz}
flags		: fpu sse2 avx avx2 avx512f avx512bw {extra}
bogomips	: 5200.00
"""

ARM = """processor	: {i}
BogoMIPS	: {mhz}
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics {extra}
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: {part}
CPU revision	: 1
"""


def _cpuinfo(template: str, extra: str = "", part: str = "0xd0c", mhz: str = "2600.000", cores: int = 2) -> str:
    return "\n".join(template.format(i=i, extra=extra, part=part, mhz=mhz) for i in range(cores))


def _key(cpuinfo: str) -> str:
    return native.library_name("cc", cpu_identity(cpuinfo))


def test_arm64_keys_differ_by_features_and_by_cpu_part():
    n1 = _key(_cpuinfo(ARM))
    assert _key(_cpuinfo(ARM, extra="sve sve2 bf16")) != n1
    assert _key(_cpuinfo(ARM, part="0xd40")) != n1
    assert "CPU part: 0xd0c" in cpu_identity(_cpuinfo(ARM)) and "sve" in cpu_identity(_cpuinfo(ARM, extra="sve"))


def test_x86_keys_differ_by_flags_and_by_model():
    epyc = _key(_cpuinfo(X86))
    assert _key(_cpuinfo(X86, extra="avx512_bf16")) != epyc
    assert _key(_cpuinfo(X86).replace("model\t\t: 17", "model\t\t: 1")) != epyc
    assert _key(_cpuinfo(ARM)) != epyc


def test_the_key_ignores_clock_speed_core_count_and_flag_order():
    """Fields that change between reads of the same machine would rebuild the library every run."""
    base = _key(_cpuinfo(X86))
    assert _key(_cpuinfo(X86, mhz="3100.512", cores=4)) == base
    assert _key(_cpuinfo(ARM, mhz="50.00")) == _key(_cpuinfo(ARM, cores=8))
    reordered = _cpuinfo(X86).replace("avx avx2", "avx2 avx")
    assert _key(reordered) == base


def test_a_big_little_arm64_keys_on_both_core_types():
    big_little = _cpuinfo(ARM, part="0xd05") + "\n" + _cpuinfo(ARM, part="0xd0b")
    identity = cpu_identity(big_little)
    assert "0xd05" in identity and "0xd0b" in identity
    assert _key(big_little) != _key(_cpuinfo(ARM, part="0xd05"))


def test_without_cpuinfo_fields_the_processor_string_stands_in(monkeypatch):
    monkeypatch.setattr("platform.processor", lambda: "Apple M2")
    m2 = _key("")
    assert cpu_identity("").endswith("Apple M2")
    assert _key("processor\t: 0\nBogoMIPS\t: 10\n") == m2  # no identifying field: the processor string
    monkeypatch.setattr("platform.processor", lambda: "Apple M3")
    assert _key("") != m2
