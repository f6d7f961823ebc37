"""Whether DRAW's training gradient survives bf16 products, measured beside the loss surface's own roughness.

    python -m bench.gradient_sensitivity CHECKPOINT [--batches 8] [--scales 1e-4 1e-3 4e-3] [--json OUT]

At the weights a harness checkpoint of DRAW holds (its last weights: where training stands, not its best
valid ones), for each of the first ``--batches`` training batches of the epoch it is in, with each batch's
own posterior noise, the float32 gradient g (the path training takes) is compared, by cosine and by norm
ratio, with:

- the float64 gradient: what float32's own rounding changes;
- the gradient with bf16 products (``bench run --training-products bfloat16``), where this CPU has them;
- float32 gradients at weights moved by a relative ``s`` (every weight times 1 + s N(0, 1), one draw per
  scale): how rough the loss surface is at that scale. bf16 keeps 8 significant bits, so it moves each
  operand by up to 2^-9 (about 2e-3) of itself;
- the next batch's float32 gradient: the minibatch noise that training lives with anyway.

Also |g| against the run's clipping norm (a step's gradient is scaled by min(1, clip / |g|), so a spread
of |g| over batches is a spread of step sizes) and each parameter's share of |g|^2.

A bf16 gradient that parts from g no more than float32 gradients do at weights moved by 1e-3 is no fault
of bf16: the surface is that rough there. Every figure is per batch, with medians and IQRs over batches.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

from bench import records
from bench.checkpoints import CheckpointError
from bench.stats import median_iqr
from datasets.cliargs import UsageError
from datasets.fileio import atomic_write_bytes
from models.fast import products

DEFAULT_SCALES = (1e-4, 1e-3, 4e-3)


def _stat(values: list[float]) -> dict:
    return {**median_iqr(values), "min": min(values), "max": max(values)}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def gradient(task, model, batch, dtype: torch.dtype | None = None,
             precision: torch.dtype = torch.float32) -> tuple[float, torch.Tensor, list[float]]:
    """(loss, the flat float64 gradient, each parameter's |grad|) of one training batch: products in
    ``dtype`` (None: the model's own), the model and its inputs in ``precision``."""
    model.zero_grad(set_to_none=True)
    x, _, where = batch
    noise = task.noise(where)
    with products.training(dtype):
        loss = model.loss(x.to(precision), noise.to(precision))[0]
        loss.backward()
    grads = [p.grad.detach().double().flatten() if p.grad is not None else torch.zeros(p.numel(), dtype=torch.float64)
             for p in model.parameters()]
    return float(loss.detach()), torch.cat(grads), [float(g.norm()) for g in grads]


def moved(model, scale: float, seed: int) -> torch.nn.Module:
    """A copy of ``model`` with every weight w replaced by w (1 + scale N(0, 1)), seeded."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(1 + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return out


def measure(task, model, epoch: int, batches: int, scales=DEFAULT_SCALES, bf16: bool | None = None,
            seed: int = 0) -> dict:
    """The comparisons of the module docstring over the first ``batches`` batches of ``epoch`` (one more
    is read for the last batch's minibatch-noise figure). ``bf16`` None: where the CPU has bf16 products."""
    if bf16 is None:
        bf16 = products.bf16_supported()
    model.train()
    wide = copy.deepcopy(model).double()
    near = {s: moved(model, s, seed + k) for k, s in enumerate(scales)}
    names = [n for n, _ in model.named_parameters()]
    rows, shares = [], {n: [] for n in names}
    it = iter(task.batches(epoch))
    nxt = next(it, None)
    if nxt is None:
        raise UsageError(f"epoch {epoch} of this task has no training batches")
    loss_next, g_next, norms_next = gradient(task, model, nxt)
    for i in range(batches):
        batch, loss, g, norms = nxt, loss_next, g_next, norms_next
        nxt = next(it, None)
        if nxt is None:
            raise UsageError(f"--batches {batches}: an epoch here has only {i + 1} batches; ask for at most {i}")
        loss_next, g_next, norms_next = gradient(task, model, nxt)
        norm = float(g.norm())
        _, g64, _ = gradient(task, wide, batch, precision=torch.float64)
        row = {"batch": i, "loss": loss, "norm": norm, "cos_float64": _cos(g, g64),
               "cos_next_batch": _cos(g, g_next), "moved": {}}
        for s, m in near.items():
            _, gs, _ = gradient(task, m, batch)
            row["moved"][f"{s:g}"] = {"cos": _cos(g, gs), "norm_ratio": float(gs.norm()) / norm}
        if bf16:
            _, gb, _ = gradient(task, model, batch, torch.bfloat16)
            row["bf16"] = {"cos": _cos(g, gb), "norm_ratio": float(gb.norm()) / norm}
        for n, v in zip(names, norms):
            shares[n].append(v * v / max(norm * norm, 1e-300))
        rows.append(row)
    summary = {"norm": _stat([r["norm"] for r in rows]), "cos_float64": _stat([r["cos_float64"] for r in rows]),
               "cos_next_batch": _stat([r["cos_next_batch"] for r in rows]),
               "moved": {k: {f: _stat([r["moved"][k][f] for r in rows]) for f in ("cos", "norm_ratio")}
                         for k in rows[0]["moved"]}}
    if bf16:
        summary["bf16"] = {f: _stat([r["bf16"][f] for r in rows]) for f in ("cos", "norm_ratio")}
    return {"batches": rows, "summary": summary, "bf16_measured": bool(bf16),
            "grad_share": {n: statistics.median(v) for n, v in shares.items()}}


def load(path: str | Path):
    """(rebuilt, state) for a DRAW checkpoint, its model holding the checkpoint's last weights."""
    from bench import evaluate

    built = evaluate.rebuild(path, device="cpu")
    if built.task_desc["task"] != "draw":
        raise UsageError(f"{path}: a {built.task_desc['task']} checkpoint; this study is of DRAW, whose training "
                         "products can be bf16")
    if "model" in built.state:
        built.model.load_state_dict(built.state["model"])
    return built


def format_result(r: dict) -> str:
    s = r["summary"]
    f = lambda st: f"{st['median']:.3f} (IQR {st['iqr']:.3f}, {st['min']:.3f} to {st['max']:.3f})"  # noqa: E731
    lines = [f"{r['checkpoint']}: {r['dataset']}, epoch {r['epoch']}, {len(r['batches'])} batches of "
             f"{r['batch_size']}; |g| {f(s['norm'])} against clipping norm {r['clip_norm']}",
             f"  cos(g, float64 gradient)        {f(s['cos_float64'])}",
             f"  cos(g, next batch's gradient)   {f(s['cos_next_batch'])}"]
    if "bf16" in s:
        lines.append(f"  cos(g, bf16-products gradient)  {f(s['bf16']['cos'])}; norm ratio "
                     f"{s['bf16']['norm_ratio']['median']:.2f}")
    else:
        lines.append("  bf16 products: not measured (this CPU has no native bf16 products)")
    for k, v in s["moved"].items():
        lines.append(f"  cos(g, gradient at w moved {k:>6}) {f(v['cos'])}; norm ratio {v['norm_ratio']['median']:.2f}")
    top = sorted(r["grad_share"].items(), key=lambda kv: -kv[1])[:4]
    lines.append("  largest shares of |g|^2 (median): " + ", ".join(f"{n} {v:.2f}" for n, v in top))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gradient_sensitivity", description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help="a DRAW checkpoint written by bench run (results/checkpoints/...)")
    ap.add_argument("--batches", type=int, default=8, help="training batches compared (default 8)")
    ap.add_argument("--scales", type=float, nargs="+", default=list(DEFAULT_SCALES),
                    help="relative moves of the weights (default 1e-4 1e-3 4e-3)")
    ap.add_argument("--seed", type=int, default=0, help="of the moves")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = ap.parse_args(argv)
    try:
        if args.batches < 1 or any(not 0 < s < 1 for s in args.scales):
            raise UsageError("--batches must be at least 1 and every --scales value between 0 and 1")
        torch.set_num_threads(args.threads)
        built = load(args.checkpoint)
        epoch = int(built.state.get("epoch", 0))
        res = {"checkpoint": str(args.checkpoint), "dataset": built.dataset, "epoch": epoch,
               "batch_size": built.job.optim.batch_size, "clip_norm": (built.state.get("loop") or {}).get("clip_norm"),
               "scales": args.scales, "seed": args.seed, "started": records.utc_now(), "commit": records.commit_info(),
               "machine": records.machine_info(threads=args.threads)}
        res.update(measure(built.task, built.model, epoch, args.batches, tuple(args.scales), seed=args.seed))
    except (UsageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_result(res))
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
