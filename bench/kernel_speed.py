"""Speed of the attention kernel as in-run ratios: `measure_kernel_speed(repeats) -> dict`.

Every candidate is timed in the same process, interleaved round by round (so a neighbour's load
hits all of them alike), and the median over rounds is kept. Ratios, not absolute times, are what
carry over between machines and runs. Shapes:
  classifier_read  B=128, 100x100, read n=12, C=1        (DRAW Table 3, 100x100 classification)
  draw_read        B=100, 28x28, read n=2 on two images   (x and x_hat as 2 channels, one read)
  draw_write       B=100, 28x28, write n=5, C=1
Per shape (times in ms, median):
  fb            window_from_params: both filterbanks from the five raw numbers
  mm            the two bare batched matmuls of the same shapes (filterbanks precomputed)
  fwd, fwdbwd   fb + read/write, forward; forward + backward (to the params and the data)
  batched_*     the straightforward version (exp of the full grid, normalise, bmm; autograd)
  loop          the float64 loop reference, timed on ONE example and multiplied by B (it is
                linear in B; a whole batch at the classifier shape takes minutes)
  fb_torch, fwdbwd_torch   fb and fwdbwd on the PyTorch path (models/fast/native.py disabled)
and ratios: fb_over_mm (target <= 1), mm_over_fwd = throughput of fb+op as a fraction of the bare
matmuls' (target >= 0.4 at the classifier shape), speedup_vs_batched_*, speedup_vs_loop,
bf16_over_f32 (fwd time in bfloat16 / float32), native_speedup_fb / _fwdbwd (what the native loops
buy: the PyTorch path's time over theirs; absent when they are not built), gflops_* (matmul FLOPs /
time) beside peak_gflops (a large float32 sgemm in the same run).

Run: `python -m bench.kernel_speed [--repeats 15] [--threads 2] [--no-loop] [--json out.json]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from bench import records
from datasets.fileio import atomic_write_bytes
from models import attention as att
from models.reference import attention_reference as ref
from models.fast import native

SHAPES = {
    # name: (op, B, C, H, W, n)
    "classifier_read": ("read", 128, 1, 100, 100, 12),
    "draw_read": ("read", 100, 2, 28, 28, 2),
    "draw_write": ("write", 100, 1, 28, 28, 5),
}


def _interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_round_s: float) -> dict[str, float]:
    """Median seconds per call of each fn; rounds alternate between fns so load hits all alike."""
    inner = {}
    for name, fn in fns.items():  # warm-up, and pick calls per round so a round lasts min_round_s
        fn()
        t0 = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_round_s / max(time.perf_counter() - t0, 1e-7)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {k: statistics.median(v) for k, v in samples.items()}


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 GFLOP/s of one large square sgemm (best of `repeats`: the machine's ceiling)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _matmul_flops(op: str, b: int, c: int, h: int, w: int, n: int) -> int:
    if op == "read":  # (n, H) @ (H, W), then (n, W) @ (W, n), per channel
        return 2 * b * c * (n * h * w + n * w * n)
    return 2 * b * c * (n * n * w + h * n * w)  # (n, n) @ (n, W), then (H, n) @ (n, W)


def _case(op, b, c, h, w, n, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = (torch.rand(b, 5, generator=gen) * 2 - 1) * torch.tensor([0.8, 0.8, 1.0, 0.5, 0.3])
    data_shape = (b, c, h, w) if op == "read" else (b, c, n, n)
    data = torch.rand(*data_shape, generator=gen)
    return params.to(dtype), data.to(dtype)


def _kernel_fns(op, b, c, h, w, n, dtype):
    params, data = _case(op, b, c, h, w, n, dtype)
    fn = getattr(att, op)
    win = att.window_from_params(params, h, w, n)
    fx, fy = win.fx, win.fy
    if op == "read":
        fyu, fxt = fy.unsqueeze(1), fx.transpose(1, 2)

        def mm():
            return torch.bmm(torch.matmul(fyu, data).view(b, c * n, w), fxt)
    else:
        fyt = fy.transpose(1, 2).unsqueeze(1)

        def mm():
            return torch.matmul(fyt, torch.bmm(data.view(b, c * n, n), fx).view(b, c, n, w))

    def fb():
        return att.window_from_params(params, h, w, n)

    def fwd():
        wn = att.window_from_params(params, h, w, n)
        return fn(data, wn.fx, wn.fy, wn.gamma)

    p_g, d_g = params.clone().requires_grad_(), data.clone().requires_grad_()

    def fwdbwd():
        wn = att.window_from_params(p_g, h, w, n)
        fn(d_g, wn.fx, wn.fy, wn.gamma).sum().backward()

    def on_torch_path(f):
        def run():
            with native.disabled():
                return f()
        return run

    return {"fb": fb, "mm": mm, "fwd": fwd, "fwdbwd": fwdbwd, "fb_torch": on_torch_path(fb),
            "fwdbwd_torch": on_torch_path(fwdbwd)}


def _batched_fns(op, b, c, h, w, n):
    params, data = _case(op, b, c, h, w, n, torch.float32)
    fn = ref.read_batched if op == "read" else ref.write_batched

    def fwd(p=params, d=data):
        gx = (w + 1) / 2 * (p[:, 0] + 1)
        gy = (h + 1) / 2 * (p[:, 1] + 1)
        sigma2, gamma = p[:, 2].exp(), p[:, 4].exp()
        delta = (max(h, w) - 1) / max(n - 1, 1) * p[:, 3].exp()
        fx = ref.filterbank_batched(gx, delta, sigma2, n, w)
        fy = ref.filterbank_batched(gy, delta, sigma2, n, h)
        return fn(d, fx, fy, gamma)

    p_g, d_g = params.clone().requires_grad_(), data.clone().requires_grad_()
    return {"batched_fwd": fwd, "batched_fwdbwd": lambda: fwd(p_g, d_g).sum().backward()}


def _loop_seconds_per_batch(op, b, c, h, w, n) -> float:
    params, data = _case(op, b, c, h, w, n, torch.float64)
    win = [ref.params_to_window_loop(params[0].tolist(), h, w, n)]
    one = data[:1]
    if op == "read":
        dt = _timed(lambda: ref.read_loop(one, win, n))
    else:
        dt = _timed(lambda: ref.write_loop(one, win, h, w))
    return dt * b


def measure_kernel_speed(repeats: int = 15, threads: int | None = None, loop: bool = True,
                         bf16: bool = True, min_round_s: float = 0.02) -> dict:
    """In-run speed ratios of the attention kernel (see the module docstring for every key)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _measure(repeats, loop, bf16, min_round_s)
    finally:
        torch.set_num_threads(before)


def _measure(repeats: int, loop: bool, bf16: bool, min_round_s: float) -> dict:
    out: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
                 "native": native.library() is not None, "started": records.utc_now(),
                 "commit": records.commit_info(), "machine_info": records.machine_info(),
                 "load_average_1min": os.getloadavg()[0],
                 "cpu": platform.processor() or platform.machine(), "repeats": repeats,
                 "peak_gflops": matmul_peak_gflops()}
    for name, (op, b, c, h, w, n) in SHAPES.items():
        fns = _kernel_fns(op, b, c, h, w, n, torch.float32)
        fns.update(_batched_fns(op, b, c, h, w, n))
        if bf16:
            fns["bf16_fwd"] = _kernel_fns(op, b, c, h, w, n, torch.bfloat16)["fwd"]
        if native.library() is None:  # nothing to compare: the "torch" timings would repeat fb/fwdbwd
            del fns["fb_torch"], fns["fwdbwd_torch"]
        t = _interleaved(fns, repeats, min_round_s)
        flops = _matmul_flops(op, b, c, h, w, n)
        r = {f"{k}_ms": v * 1e3 for k, v in t.items()}
        r.update(fb_over_mm=t["fb"] / t["mm"], mm_over_fwd=t["mm"] / t["fwd"],
                 speedup_vs_batched_fwd=t["batched_fwd"] / t["fwd"],
                 speedup_vs_batched_fwdbwd=t["batched_fwdbwd"] / t["fwdbwd"],
                 gflops_mm=flops / t["mm"] / 1e9, gflops_fwd=flops / t["fwd"] / 1e9)
        if bf16:
            r["bf16_over_f32"] = t["bf16_fwd"] / t["fwd"]
        if "fb_torch" in t:
            r.update(native_speedup_fb=t["fb_torch"] / t["fb"], native_speedup_fwdbwd=t["fwdbwd_torch"] / t["fwdbwd"])
        if loop:
            r["loop_ms"] = _loop_seconds_per_batch(op, b, c, h, w, n) * 1e3
            r["speedup_vs_loop"] = r["loop_ms"] / r["fwd_ms"]
        out[name] = r
    return out


def main(argv: list[str] | None = None) -> None:
    from datasets.cliargs import integer

    ap = argparse.ArgumentParser(prog="python -m bench.kernel_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=integer(1), default=15)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own); 1 is the robust choice on a shared machine")
    ap.add_argument("--no-loop", action="store_true", help="skip the loop reference (the slow part)")
    ap.add_argument("--json", default=None, help="also write the dict here (atomically)")
    args = ap.parse_args(argv)
    res = measure_kernel_speed(args.repeats, args.threads, loop=not args.no_loop)
    text = json.dumps(res, indent=2, sort_keys=True)
    print(text)
    if args.json:
        atomic_write_bytes(args.json, (text + "\n").encode())


if __name__ == "__main__":
    main()
