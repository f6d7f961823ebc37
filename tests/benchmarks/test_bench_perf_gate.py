"""The CI performance gates (bench/perf_gate.py): each training step against its own GEMM floor,
judged against this CPU's recorded baseline, and proof that a planted 25% slowdown fails them."""

from __future__ import annotations

import pytest

from bench import perf_gate

PLANTED = 0.25


@pytest.mark.slow
@pytest.mark.benchmark_gate
@pytest.mark.parametrize("name", list(perf_gate.GATES))
def test_step_within_its_floor_gate(name, benchmark):
    ok, line, m = perf_gate.check(name)
    print("\n" + line)
    benchmark.extra_info.update(m, cpu=perf_gate.cpu_key(), bound=perf_gate.bound(name)[0])
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert ok, line


@pytest.mark.slow
@pytest.mark.parametrize("name", list(perf_gate.GATES))
def test_gate_catches_a_planted_slowdown(name):
    """Against this CPU's committed baseline (or, where there is none, the factor of the unchanged
    step measured in the same rounds as the slowed one, so that both see the same load), a step made
    25% slower fails its gate."""
    key = perf_gate.cpu_key()
    baselines = perf_gate.load_baselines()
    if name in baselines.get(key, {}):
        ok, line, _ = perf_gate.check(name, slowdown=PLANTED, baselines=baselines, key=key)
    else:
        unchanged, planted = perf_gate.measure_side_by_side(name, PLANTED)
        ok, line = perf_gate.judge(planted, {key: {name: {"factor": unchanged["factor"]}}}, key)
    print("\nplanted +25%: " + line)
    assert not ok, f"a 25% slower step passed: {line}"
