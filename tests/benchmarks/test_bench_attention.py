"""Attention kernel speed: pytest-benchmark timings per shape, and the in-run ratio gate.

The pytest-benchmark tests time fb + read/write forward and forward + backward at the classifier
and DRAW shapes (`--benchmark-enable` to time them; by default each runs once as a smoke test).
The gate (`-m benchmark_gate`) asserts the in-run ratios of `bench.kernel_speed`, which hold on any
machine, with slack for a noisy shared CPU: the issue's targets are fb <= the two matmuls it feeds
and fb + read >= 40% of the bare matmuls' throughput at the classifier shape.
"""

from __future__ import annotations

import pytest
import torch

from bench import kernel_speed as ks

SLACK = 2.0  # shared 2-core CI machine: allow a factor 2 against each target


@pytest.mark.parametrize("shape", list(ks.SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_bench_kernel(benchmark, shape, mode):
    op, b, c, h, w, n = ks.SHAPES[shape]
    fns = ks._kernel_fns(op, b, c, h, w, n, torch.float32)
    benchmark.group = f"attention-{shape}"
    benchmark(fns[mode])


@pytest.mark.parametrize("shape", list(ks.SHAPES))
def test_bench_straightforward_batched(benchmark, shape):
    op, b, c, h, w, n = ks.SHAPES[shape]
    benchmark.group = f"attention-{shape}"
    benchmark(ks._batched_fns(op, b, c, h, w, n)["batched_fwdbwd"])


@pytest.mark.benchmark_gate
def test_kernel_speed_ratios_gate():
    # one thread: with two OpenMP threads on a CPU shared with other jobs, every parallel region
    # waits for a descheduled thread, which hits the many small elementwise ops far harder than
    # the one bmm and makes the ratios measure the neighbours rather than the kernel.
    r = ks.measure_kernel_speed(repeats=9, threads=1, loop=False, bf16=False)
    cls = r["classifier_read"]
    print({k: round(v, 3) for k, v in cls.items()})
    if r["native"]:  # measured fb / mm 0.46-0.64 (classifier), 0.49-0.55 (DRAW read), 0.72-1.07 (DRAW
        # write); mm / fwd 0.52-0.58 at the classifier shape; native 2-12x on fb (README)
        assert cls["fb_over_mm"] <= 1.0 * 1.3, cls
        assert cls["mm_over_fwd"] >= 0.4 / 1.3, cls
        assert r["draw_read"]["fb_over_mm"] <= 1.0 * 1.5, r["draw_read"]
        assert r["draw_write"]["fb_over_mm"] <= 1.0 * SLACK, r["draw_write"]
        for shape in ks.SHAPES:
            assert r[shape]["native_speedup_fb"] >= 1.2, (shape, r[shape])
    assert cls["fb_over_mm"] <= 1.0 * SLACK, cls
    assert cls["mm_over_fwd"] >= 0.4 / SLACK, cls
    # measured 3-6x at the classifier shape, 1.1-2x at the DRAW shapes (where launches dominate)
    assert cls["speedup_vs_batched_fwd"] >= 2.0, cls
    for shape in ks.SHAPES:
        assert r[shape]["speedup_vs_batched_fwd"] >= 1.0 / SLACK, (shape, r[shape])
        assert r[shape]["speedup_vs_batched_fwdbwd"] >= 1.0 / SLACK, (shape, r[shape])
    assert r["peak_gflops"] > 0 and cls["gflops_fwd"] < r["peak_gflops"]


def test_kernel_speed_dict_has_every_key_quickly():
    r = ks.measure_kernel_speed(repeats=1, threads=1, loop=False, bf16=True, min_round_s=0.0)
    native_keys = ("native_speedup_fb", "native_speedup_fwdbwd") if r["native"] else ()
    for shape in ks.SHAPES:
        for key in ("fb_ms", "mm_ms", "fwd_ms", "fwdbwd_ms", "batched_fwd_ms", "fb_over_mm", "mm_over_fwd",
                    "speedup_vs_batched_fwd", "bf16_over_f32", "gflops_mm", *native_keys):
            assert r[shape][key] > 0, (shape, key)

