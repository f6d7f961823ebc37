"""Training-step speed of the models against their naive references, per thread count.

    python -m bench.model_speed [--model classifier draw draw-noattn ram] [--threads 1 2] [--rounds 5]
                                [--batch B] [--variants fast naive ...] [--clock wall|cpu] [--json out.json]

For each model and thread count, the variants take turns, round by round (in reverse order every
other round), each doing one training step (forward, backward, Adam) on the same batch with the
same weights:

- ``fast``: the model as it trains by default (for DRAW on CPU: the sequence path,
  models/fast/draw_sequence.py);
- ``fast_torch_path``: the same with the native loops off (``native.disabled()``);
- ``fast_step_path`` (DRAW only): the per-step path with the native loops on (``draw_sequence.disabled()``);
- ``naive``: the reference (models/reference/naive_*.py).

Reported per variant: the median seconds per step, their interquartile range and images/s; per
variant against ``fast``, the median and IQR of the per-round ratios (its step time over fast's in
the same round, so both share that moment's load), and the speed-ups over the naive step's median.
Wall time by default (with two threads CPU time adds both up); ``--clock cpu`` takes the process's CPU
time, steadier for one thread on a shared machine. Shapes are the benchmark's: classifier T = 8,
B = 128, 100 x 100; DRAW T = 64, B = 100, 28 x 28, with attention (``draw``) or without
(``draw-noattn``); RAM (``ram``, Table 1's: T = 8, 12 x 12 at 4 scales, 100 x 100) B = 64, against
its crop-and-pool retina (models/reference/naive_ram.py) as ``naive``; ``--batch`` changes the batch.
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
from bench.stats import iqr
from datasets.fileio import atomic_write_bytes
from models.fast import draw_sequence, native
from models.classifier import ClassifierConfig, GlimpseClassifier
from models.draw import DRAW, DRAWConfig
from models.ram import RamConfig, RecurrentAttentionModel
from models.reference.naive_classifier import NaiveGlimpseClassifier
from models.reference.naive_draw import NaiveDRAW
from models.reference.naive_ram import NaiveRAM


MODELS = ("classifier", "draw", "draw-noattn", "ram")
VARIANTS = ("fast", "naive", "fast_torch_path", "fast_step_path")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _pair(model: str, batch: int | None = None):
    """(fast, naive, loss_fn(m) -> scalar, batch) for one model at the benchmark shapes, same weights."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if model == "classifier":
        batch = batch or 128
        cfg = ClassifierConfig()
        fast, naive = GlimpseClassifier(cfg), NaiveGlimpseClassifier(cfg)
        x = torch.rand(batch, 1, 100, 100, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        loss = lambda m: m.loss(x, y)[0]  # noqa: E731
    elif model in ("draw", "draw-noattn"):
        batch = batch or 100
        cfg = DRAWConfig(attention=model == "draw")
        fast, naive = DRAW(cfg), NaiveDRAW(cfg)
        x = (torch.rand(batch, 1, 28, 28, generator=g) < 0.3).float()
        loss = lambda m: (lambda out: out[0] if isinstance(out, tuple) else out)(m.loss(x))  # noqa: E731
    elif model == "ram":
        batch = batch or 64
        fast, naive = RecurrentAttentionModel(RamConfig()), NaiveRAM(RamConfig())
        x = (torch.randint(0, 256, (batch, 1, 100, 100), generator=g) / 255).float()
        y = torch.randint(0, 10, (batch,), generator=g)
        loss = lambda m: m.loss(x, y)[0]  # noqa: E731
    else:
        raise ValueError(f"model must be one of {', '.join(MODELS)}; got {model!r}")
    naive.load_state_dict(fast.state_dict())
    return fast, naive, loss, batch


def _stepper(model, loss, path=contextlib.nullcontext):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        with path():
            value = loss(model)
            opt.zero_grad(set_to_none=True)
            value.backward()
        opt.step()
    return step


def measure(model: str, threads: int, rounds: int = 5, batch: int | None = None,
            variants: tuple[str, ...] = VARIANTS, clock: str = "wall") -> dict:
    """Seconds per training step of each variant (see the module doc), rounds interleaved: medians,
    IQRs, images/s, per-round ratios against ``fast`` and speed-ups over ``naive``."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    tick = CLOCKS[clock]
    try:
        fast, naive, loss, batch = _pair(model, batch)
        steps = {"fast": _stepper(fast, loss), "naive": _stepper(naive, loss)}
        if native.library() is not None and model != "ram":  # RAM has no native loops
            steps["fast_torch_path"] = _stepper(fast, loss, native.disabled)
        if model.startswith("draw"):
            steps["fast_step_path"] = _stepper(fast, loss, draw_sequence.disabled)
        steps = {k: s for k, s in steps.items() if k in variants}
        for s in steps.values():
            s()
        times: dict[str, list[float]] = {k: [] for k in steps}
        order = list(steps.items())
        for i in range(rounds):  # the order reverses every other round, so none always runs first
            for k, s in (order if i % 2 == 0 else order[::-1]):
                t0 = tick()
                s()
                times[k].append(tick() - t0)
    finally:
        torch.set_num_threads(before)
    out: dict = {"batch": batch, "clock": clock, "rounds": rounds}
    for k, v in times.items():
        out.update({f"{k}_s": statistics.median(v), f"{k}_iqr_s": iqr(v),
                    f"{k}_images_per_s": batch / statistics.median(v)})
    if "fast" in times:
        for k in steps:
            if k != "fast":
                ratios = [a / b for a, b in zip(times[k], times["fast"])]
                out.update({f"{k}_over_fast": statistics.median(ratios), f"{k}_over_fast_iqr": iqr(ratios)})
    if "naive" in times:
        out.update({f"{k}_speedup": out["naive_s"] / out[f"{k}_s"] for k in steps if k != "naive"})
    return out


def main(argv: list[str] | None = None) -> None:
    from datasets.cliargs import integer

    ap = argparse.ArgumentParser(prog="python -m bench.model_speed", description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["classifier", "draw"], choices=MODELS)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--rounds", type=integer(1), default=5)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: 128 classifier, 100 DRAW, 64 RAM)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                    help="which steps take turns (fast_step_path: DRAW only)")
    ap.add_argument("--clock", default="wall", choices=sorted(CLOCKS), help="wall time, or the process's CPU time")
    ap.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = ap.parse_args(argv)
    res: dict = {"started": records.utc_now(), "commit": records.commit_info(), "machine": records.machine_info(),
                 "load_average_1min": os.getloadavg()[0], "native": native.library() is not None,
                 "rounds": args.rounds, "results": {}}
    for model in args.model:
        for th in args.threads:
            r = measure(model, th, args.rounds, args.batch, tuple(args.variants), args.clock)
            res["results"][f"{model}-threads{th}"] = r
            line = ", ".join(f"{k} {r[k + '_s']:.3f} s (IQR {r[k + '_iqr_s']:.3f}, "
                             f"{r[k + '_images_per_s']:.1f} images/s)" for k in args.variants if k + "_s" in r)
            extra = "".join(f"; {k[:-10]} / fast {v:.3f} (IQR {r[k + '_iqr']:.3f})"
                            for k, v in r.items() if k.endswith("_over_fast"))
            extra += "".join(f"; {k} {v:.2f}x" for k, v in r.items() if k.endswith("_speedup"))
            print(f"{model}, {th} thread(s), batch {r['batch']}, {args.clock} time: {line}{extra}", flush=True)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())


if __name__ == "__main__":
    main()
