"""DRAW speed: training throughput against the straightforward reference, and the cost of the ELBO.

Paper-sized DRAW (T = 64, read 2x2, write 5x5, LSTMs 256, z 100), batch 100, 28 x 28, on one
thread. Both implementations run side by side in one process, interleaved, and the ratios use
the process's CPU time (time.process_time), so they hold on a CPU shared with other jobs; wall
times are printed beside them. Run ``pytest tests/benchmarks/test_bench_draw.py -s`` to see the
numbers; ``GLIMPSE_BENCH_COMPILE=1`` adds the torch.compile'd step (about 30 s of compiling).

The same run times the GEMM floor: the bare float32 matrix products of one fused training step
(every step's forward products, their input-gradient products, and the four weight-gradient
products over all steps' rows), as torch.mm on random tensors of the same shapes. naive time /
floor time is the ceiling on the speed-up of any implementation that keeps those GEMMs.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from bench.perf_gate import draw_floor
from models.fast import native
from models.bounds import elbo_bound
from models.draw import DRAW, DRAWConfig
from models.flops import measure_matmul_peak
from models.reference.naive_draw import NaiveDRAW

BATCH = 100
# The speed-up over the naive DRAW depends on the CPU: with the native loops 2.0-2.3x on one thread
# and 3.2-3.4x on two on Intel Ice Lake, 1.5-1.6x and 2.1x on AMD EPYC. The regression gate is
# bench/perf_gate.py (the step against its GEMM floor); these only check that the fast DRAW is not
# slower than the naive one on any CPU (the PyTorch path, without a C compiler, is about as fast).
MIN_SPEEDUP_NATIVE = 1.0
MIN_SPEEDUP = 0.8
ELBO_COST_BOUND = 0.5  # the ELBO over N images costs at most half a training pass over N


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def _train_step(model, opt, x):
    loss = model.loss(x)
    loss = loss[0] if isinstance(loss, tuple) else loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _interleaved(fns: dict, rounds: int) -> dict:
    """{name: (median CPU s, median wall s)} over ``rounds`` interleaved calls after one warm-up."""
    for f in fns.values():
        f()
    cpu = {k: [] for k in fns}
    wall = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            c, w = time.process_time(), time.perf_counter()
            f()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    return {k: (statistics.median(cpu[k]), statistics.median(wall[k])) for k in fns}


def _models(compile_step=False):
    torch.manual_seed(0)
    cfg = DRAWConfig()
    fast = DRAW(cfg)
    naive = NaiveDRAW(cfg)
    naive.load_state_dict(fast.state_dict())
    if compile_step:
        fast.compile_step()
    return cfg, fast, naive


def _report(name, t, speedup=None):
    cpu, wall = t
    extra = f", {speedup:.2f}x the naive DRAW" if speedup else ""
    print(f"\n{name}: {BATCH / cpu:.0f} images per CPU second ({BATCH / wall:.0f} images/s wall){extra}")


@pytest.mark.slow
def test_draw_training_throughput_vs_naive(benchmark):
    cfg, fast, naive = _models()
    x = _data(BATCH)
    noise = torch.randn(cfg.steps, BATCH, cfg.z_size)
    # Same weights, same noise: the same loss and gradients to float tolerance.
    lf, ln = fast.loss(x, noise)[0], naive.loss(x, noise)
    lf.backward()
    ln.backward()
    torch.testing.assert_close(lf, ln, rtol=1e-5, atol=1e-3)
    gn = dict(naive.named_parameters())
    for k, p in fast.named_parameters():
        assert (p.grad - gn[k].grad).norm() <= 1e-4 * gn[k].grad.norm() + 1e-6, k
    opt_f = torch.optim.Adam(fast.parameters(), lr=1e-4)
    opt_n = torch.optim.Adam(naive.parameters(), lr=1e-4)
    t = _interleaved({"fast": lambda: _train_step(fast, opt_f, x), "naive": lambda: _train_step(naive, opt_n, x),
                      "gemm": draw_floor(fast, BATCH)}, rounds=3)
    speedup = t["naive"][0] / t["fast"][0]
    ceiling = t["naive"][0] / t["gemm"][0]
    _report("naive DRAW training (T=64, B=100, 28x28, attention)", t["naive"])
    _report("fused DRAW training", t["fast"], speedup)
    print(f"GEMM floor (bare float32 products of one fused step): {1000 * t['gemm'][0]:.0f} ms CPU, "
          f"{t['gemm'][0] / t['fast'][0]:.0%} of the fused step; ceiling {ceiling:.2f}x the naive DRAW")
    peak = measure_matmul_peak(seconds=0.5, clock=time.process_time)
    achieved = fast.flops_per_image(train=True) * BATCH / t["fast"][0] / 1e9
    print(f"fused DRAW: {achieved:.1f} GFLOP/s = {achieved / peak:.3f} of the {peak:.0f} GFLOP/s one-thread "
          f"matmul peak measured in the same run ({fast.flops_per_image(train=True) / 1e6:.0f} MFLOP per image)")
    benchmark.extra_info.update(speedup_cpu=speedup, fast_images_per_cpu_s=BATCH / t["fast"][0],
                                naive_images_per_cpu_s=BATCH / t["naive"][0], gemm_floor_cpu_s=t["gemm"][0],
                                gemm_ceiling_speedup=ceiling, matmul_peak_gflops=peak, peak_fraction=achieved / peak)
    benchmark.pedantic(_train_step, args=(fast, opt_f, x), rounds=1, iterations=1)
    assert speedup >= (MIN_SPEEDUP_NATIVE if native.usable(x) else MIN_SPEEDUP)


@pytest.mark.slow
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs 2 cores")
def test_draw_training_throughput_vs_naive_two_threads(benchmark):
    """The same comparison with both implementations on 2 threads (this machine's cores), by wall
    time: the GEMMs split over both threads in either, and the sequence path's native loops split
    the batch too."""
    _, fast, naive = _models()
    x = _data(BATCH)
    opt_f = torch.optim.Adam(fast.parameters(), lr=1e-4)
    opt_n = torch.optim.Adam(naive.parameters(), lr=1e-4)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        t = _interleaved({"fast": lambda: _train_step(fast, opt_f, x),
                          "naive": lambda: _train_step(naive, opt_n, x)}, rounds=3)
        benchmark.pedantic(_train_step, args=(fast, opt_f, x), rounds=1, iterations=1)
    finally:
        torch.set_num_threads(before)
    speedup = t["naive"][1] / t["fast"][1]
    print(f"\n2 threads, wall time: naive DRAW {BATCH / t['naive'][1]:.0f} images/s, fused DRAW "
          f"{BATCH / t['fast'][1]:.0f} images/s, {speedup:.2f}x the naive DRAW")
    benchmark.extra_info.update(threads=2, speedup_wall=speedup, fast_images_per_s=BATCH / t["fast"][1],
                                naive_images_per_s=BATCH / t["naive"][1])
    assert speedup >= (MIN_SPEEDUP_NATIVE if native.usable(x) else MIN_SPEEDUP)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("GLIMPSE_BENCH_COMPILE") != "1",
                    reason="set GLIMPSE_BENCH_COMPILE=1 (compiles ~30 s)")
def test_draw_compiled_training_throughput_vs_naive():
    cfg, fast, naive = _models(compile_step=True)
    x = _data(BATCH)
    noise = torch.randn(cfg.steps, BATCH, cfg.z_size)
    c0, w0 = time.process_time(), time.perf_counter()
    lf = fast.loss(x, noise)[0]
    lf.backward()
    print(f"\ncompiling the DRAW step: {time.process_time() - c0:.1f} s CPU, {time.perf_counter() - w0:.1f} s wall")
    torch.testing.assert_close(lf, naive.loss(x, noise), rtol=1e-5, atol=1e-3)
    opt_f = torch.optim.Adam(fast.parameters(), lr=1e-4)
    opt_n = torch.optim.Adam(naive.parameters(), lr=1e-4)
    t = _interleaved({"fast": lambda: _train_step(fast, opt_f, x), "naive": lambda: _train_step(naive, opt_n, x)},
                     rounds=3)
    speedup = t["naive"][0] / t["fast"][0]
    _report("naive DRAW training", t["naive"])
    _report("compiled DRAW training", t["fast"], speedup)
    assert speedup >= MIN_SPEEDUP


@pytest.mark.slow
@pytest.mark.benchmark_gate
def test_elbo_costs_at_most_half_a_training_pass():
    """The ELBO over N images (eval batches of 500) against one training pass over the same N."""
    cfg, fast, _ = _models()
    n = 500
    x = _data(n)
    opt = torch.optim.Adam(fast.parameters(), lr=1e-4)

    def train_pass():
        for s in range(0, n, BATCH):
            _train_step(fast, opt, x[s:s + BATCH])

    t = _interleaved({"train": train_pass, "elbo": lambda: elbo_bound(fast, [x])}, rounds=1)
    ratio = t["elbo"][0] / t["train"][0]
    print(f"\nELBO over {n} images: {n / t['elbo'][0]:.0f} images per CPU second; training pass: "
          f"{n / t['train'][0]:.0f}; cost ratio {ratio:.2f} (bound {ELBO_COST_BOUND})")
    assert ratio <= ELBO_COST_BOUND
