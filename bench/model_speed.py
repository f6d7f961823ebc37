"""Training-step speed of the models against their naive references, per thread count.

    python -m bench.model_speed [--model classifier draw] [--threads 1 2] [--rounds 5] [--json out.json]

For each model and thread count, the fast model (with and without the native loops) and the naive
reference (models/reference/naive_*.py) with the same weights take turns, round by round, each doing one
training step (forward, backward, Adam) on the same batch; the medians of wall-clock seconds are
reported with the speed-ups over the naive step. Wall time, not CPU time: with two threads CPU time
adds both up. Shapes are the benchmark's: classifier T = 8, B = 128, 100 x 100; DRAW T = 64, B = 100,
28 x 28 with attention.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time

import torch

from bench import records
from datasets.fileio import atomic_write_bytes
from models.fast import native
from models.classifier import ClassifierConfig, GlimpseClassifier
from models.draw import DRAW, DRAWConfig
from models.reference.naive_classifier import NaiveGlimpseClassifier
from models.reference.naive_draw import NaiveDRAW


def _pair(model: str):
    """(fast, naive, loss_fn(m) -> scalar) for one model at the benchmark shapes, same weights."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if model == "classifier":
        cfg = ClassifierConfig()
        fast, naive = GlimpseClassifier(cfg), NaiveGlimpseClassifier(cfg)
        x = torch.rand(128, 1, 100, 100, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
        loss = lambda m: m.loss(x, y)[0]  # noqa: E731
    elif model == "draw":
        cfg = DRAWConfig()
        fast, naive = DRAW(cfg), NaiveDRAW(cfg)
        x = (torch.rand(100, 1, 28, 28, generator=g) < 0.3).float()
        loss = lambda m: (lambda out: out[0] if isinstance(out, tuple) else out)(m.loss(x))  # noqa: E731
    else:
        raise ValueError(f"model must be 'classifier' or 'draw', got {model!r}")
    naive.load_state_dict(fast.state_dict())
    return fast, naive, loss


def _stepper(model, loss, disable_native: bool = False):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    path = native.disabled if disable_native else contextlib.nullcontext

    def step():
        with path():
            value = loss(model)
            opt.zero_grad(set_to_none=True)
            value.backward()
        opt.step()
    return step


def measure(model: str, threads: int, rounds: int = 5) -> dict:
    """Median wall seconds per training step of fast (native), fast (PyTorch path) and naive."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast, naive, loss = _pair(model)
        steps = {"fast": _stepper(fast, loss), "naive": _stepper(naive, loss)}
        if native.library() is not None:
            steps["fast_torch_path"] = _stepper(fast, loss, disable_native=True)
        for s in steps.values():
            s()
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(rounds):
            for k, s in steps.items():
                t0 = time.perf_counter()
                s()
                times[k].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out.update({f"{k}_speedup": out["naive_s"] / out[f"{k}_s"] for k in steps if k != "naive"})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.model_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["classifier", "draw"], choices=["classifier", "draw"])
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = ap.parse_args(argv)
    res: dict = {"started": records.utc_now(), "commit": records.commit_info(), "machine": records.machine_info(),
                 "load_average_1min": os.getloadavg()[0], "native": native.library() is not None,
                 "rounds": args.rounds, "results": {}}
    for model in args.model:
        for th in args.threads:
            r = measure(model, th, args.rounds)
            res["results"][f"{model}-threads{th}"] = r
            extra = "".join(f", {k} {v:.2f}x" for k, v in r.items() if k.endswith("_speedup"))
            print(f"{model}, {th} thread(s): fast {r['fast_s']:.3f} s, naive {r['naive_s']:.3f} s{extra}", flush=True)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())


if __name__ == "__main__":
    main()
