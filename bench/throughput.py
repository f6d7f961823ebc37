"""Throughput: images per second of a training step and of an evaluation pass, median and IQR
over repeats (after warm-up), and the fraction of this machine's measured matmul peak.

Each repeat runs the step enough times to last ``min_time_s`` (calibrated in warm-up), so the
timer's resolution and one-off hiccups matter little; the spread across repeats is the IQR.
As torch.utils.benchmark does, a spread above 10% of the median is flagged as noisy.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from bench.records import metric

NOISY_IQR = 0.10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn: Callable[[], None], images_per_call: int, device: torch.device, repeats: int = 7,
                 min_time_s: float = 0.3, warmup: int = 2) -> dict:
    """Images/s of ``fn`` over ``repeats`` timed repeats: {median, q1, q3, iqr, repeats, calls, noisy}."""
    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, int(np.ceil(min_time_s / one)))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        _sync(device)
        rates.append(images_per_call * calls / (time.perf_counter() - t0))
    q1, med, q3 = np.percentile(rates, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1), "repeats": repeats,
            "calls": calls, "noisy": bool((q3 - q1) > NOISY_IQR * med)}


def _spread(st: dict) -> str:
    return f"IQR {st['iqr']:.0f}" if st.get("repeats", 2) > 1 else "one repeat, no spread"


def build_model(job, device: torch.device):
    if job.model == "classifier":
        from models.classifier import ClassifierConfig, GlimpseClassifier

        cfg = ClassifierConfig(height=job.height, width=job.width, glimpses=job.glimpses, hidden=job.hidden)
        return GlimpseClassifier(cfg).to(device), {"glimpses": job.glimpses, "height": job.height}
    if job.model == "draw":
        from models.draw import DRAW, DRAWConfig

        cfg = DRAWConfig(height=job.height, width=job.width, steps=job.steps, enc_hidden=job.hidden,
                         dec_hidden=job.hidden, z_size=job.z_size, attention=job.attention)
        return DRAW(cfg).to(device), {"steps": job.steps, "hidden": job.hidden, "attention": job.attention}
    raise ValueError(f"throughput job model must be 'classifier' or 'draw', got {job.model!r}")


def measure(job, device: str | torch.device = "cpu", peak_gflops: float | None = None, dry_run: bool = False,
            log: Callable[[str], None] = print) -> list[dict]:
    """train_images_per_s, eval_images_per_s (and peak_fraction where the model counts its FLOPs)
    for every batch size of ``job``."""
    device = torch.device(device)
    torch.manual_seed(0)
    model, shape_params = build_model(job, device)
    repeats, min_time = (1, 0.0) if dry_run else (job.repeats, job.min_time_s)
    out = []
    for bs in job.batch_sizes:
        x = (torch.rand(bs, 1, job.height, job.width, device=device) > 0.5).float()
        y = torch.randint(0, 10, (bs,), device=device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def train_step():
            loss = model.loss(x, y)[0] if job.model == "classifier" else model.loss(x)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()

        def eval_step():
            with torch.no_grad():
                if job.model == "classifier":
                    model(x, keep_windows=False)
                else:
                    model(x, windows=False)

        params = {"model": job.model, "batch": bs, "device": str(device), **shape_params}
        model.train()
        tr = time_repeats(train_step, bs, device, repeats, min_time, warmup=1 if dry_run else 2)
        model.eval()
        ev = time_repeats(eval_step, bs, device, repeats, min_time, warmup=1 if dry_run else 2)
        out.append(metric("train_images_per_s", tr["median"], "images/s", False, stats=tr, **params))
        out.append(metric("eval_images_per_s", ev["median"], "images/s", False, stats=ev, **params))
        flops_fn = getattr(model, "flops_per_image", None)
        if peak_gflops and flops_fn is not None:
            achieved = flops_fn(train=True) * tr["median"] / 1e9
            if achieved <= peak_gflops:
                out.append(metric("peak_fraction", achieved / peak_gflops, "fraction", False, step="train",
                                  stats={"achieved_gflops": achieved, "peak_gflops": peak_gflops}, **params))
            else:  # a fraction above 1 says the peak was mismeasured, not that the model beat it
                log(f"peak fraction of {job.model} batch {bs} left out: {achieved:.1f} GFLOP/s achieved is above "
                    f"the measured matmul peak {peak_gflops:.1f} GFLOP/s, so that peak is too low")
        noisy = " (noisy: IQR > 10% of median)" if tr["noisy"] or ev["noisy"] else ""
        log(f"throughput {job.model} batch {bs} on {device}: train {tr['median']:.0f} img/s "
            f"({_spread(tr)}), eval {ev['median']:.0f} img/s ({_spread(ev)}){noisy}")
    return out
