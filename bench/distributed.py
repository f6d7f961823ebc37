"""Scale-out through PyTorch's own engine: torchrun starts the processes, DistributedDataParallel
averages the gradients, NCCL on GPUs and gloo on CPUs.

Data-parallel training splits each global batch of B images into W shards of B/W: rank r takes
positions r, r + W, ... of the epoch's order (``datasets.torch_data`` with ``shard=(r, W)``), so
rank r's batch k is exactly the r-th stride of the one-process batch k. Every rank builds its
share of the same fresh clutter from the same seed; no example is seen twice or skipped. DDP
averages the per-rank mean gradients, which is the gradient of the mean over all B images, so W
ranks at B/W follow the same trajectory as one process at B (up to float summation order).

Evaluation is sharded the same way and reduced with sums (error counts, images, NLL sums), so
a test error over 10,000 images is the same number on any world size.

``--sweep-parallel`` needs no process group: torchrun's RANK/WORLD_SIZE only assign sweep units
round-robin, and each rank trains its own units alone.

Measure the scaling of a classifier training step (run it once per world size):
    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 -m bench.distributed --batch 128 --glimpses 8
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import threading
import time
import zlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
import torch.distributed as dist

TIMEOUT_ENV = "GLIMPSE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


class DistError(RuntimeError):
    """A distributed launch that cannot work as configured; the message says how to fix it."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: one process, no process group
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.backend is not None and self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        return (self.rank, self.world_size) if self.distributed else None


# ---------------------------------------------------------------- launch

def env_ranks(environ: Mapping[str, str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None when not launched by it."""
    env = os.environ if environ is None else environ
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    present = [n for n in names if n in env]
    if not present:
        return None
    if "RANK" not in env or "WORLD_SIZE" not in env:
        raise DistError(f"only {', '.join(present)} set in the environment: RANK and WORLD_SIZE go together; "
                        "launch with torchrun, which sets both, or unset them for one process")
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError:
        raise DistError(f"RANK={env.get('RANK')!r}, WORLD_SIZE={env.get('WORLD_SIZE')!r}, "
                        f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: these must be integers") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise DistError(f"RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}: need WORLD_SIZE >= 1, "
                        "0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return rank, world, local


def _device_for(device: str, local_rank: int) -> str:
    from models.training import pick_device

    dev = pick_device(device)
    if dev.type == "cuda":
        if dev.index is not None and device.strip().lower() not in ("auto", "cuda"):
            raise DistError(f"--device {device} under torchrun: give cuda (or auto); each rank takes "
                            f"cuda:LOCAL_RANK itself")
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise DistError(f"LOCAL_RANK {local_rank} but only {n} GPU(s) here: use --nproc_per_node <= {n}")
        return f"cuda:{local_rank}"
    if dev.type == "mps":
        raise DistError("torch.distributed has no MPS backend: use --device cpu with torchrun")
    return str(dev)


def _timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistError(f"{TIMEOUT_ENV}={text!r}: give the collective timeout in seconds, > 0")
    return value


def stop_signals_to_interrupt() -> None:
    """SIGTERM (from `kill`, a scheduler, or torchrun ending the surviving ranks when one dies) and
    SIGINT both become KeyboardInterrupt, so the loop saves its checkpoint and the record is marked
    incomplete (resumable). SIGINT is re-armed because a shell starts background jobs with it ignored.
    After the first, both are ignored: a second signal of either kind (Ctrl-C reaches a process group
    that scripts/parallel_runs.sh then also sends SIGTERM) must not cut the checkpoint short."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # the record says "interrupted (Ctrl-C)"
        raise KeyboardInterrupt(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def init_from_env(device: str = "auto", timeout_s: float | None = None,
                  environ: Mapping[str, str] | None = None) -> DistContext:
    """Join torchrun's process group (nccl on GPUs, gloo on CPUs) and return this rank's context.

    Without torchrun's variables, or with WORLD_SIZE=1, this is one process: no process group.
    The collective timeout is ``timeout_s``, else $GLIMPSE_DIST_TIMEOUT_S, else 600 s.
    """
    ranks = env_ranks(environ)
    if ranks is None:
        from models.training import pick_device

        return DistContext(device=str(pick_device(device)))
    rank, world, local = ranks
    dev = _device_for(device, local)
    if world == 1:
        return DistContext(0, 1, local, None, dev)
    backend = "nccl" if dev.startswith("cuda") else "gloo"
    env = os.environ if environ is None else environ
    missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if n not in env]
    if missing and not dist.is_initialized():
        raise DistError(f"{' and '.join(missing)} not set: launch with torchrun (it sets them), "
                        "or set them to rank 0's address and a free port")
    if dev.startswith("cuda"):
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        seconds = _timeout_s() if timeout_s is None else timeout_s
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=seconds))
    stop_signals_to_interrupt()
    return DistContext(rank, world, local, backend, dev)


def sweep_from_env(device: str = "auto", environ: Mapping[str, str] | None = None) -> DistContext:
    """``--sweep-parallel``: this rank's place among torchrun's ranks, without a process group.
    Each rank trains alone (world_size 1 inside), on cuda:LOCAL_RANK where GPUs exist."""
    ranks = env_ranks(environ)
    if ranks is None:
        from models.training import pick_device

        return DistContext(device=str(pick_device(device)))
    rank, world, local = ranks
    return DistContext(rank, world, local, None, _device_for(device, local))


def shutdown() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------- collectives (no-ops in one process)

def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main() -> bool:
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    if _active():
        dist.barrier()


def _comm_device(t: torch.Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (a new tensor on tensor's device; the input unchanged)."""
    if not _active():
        return tensor.clone()
    t = tensor.detach().to(_comm_device(tensor), copy=True)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (so all ranks take the same branch)."""
    if not _active():
        return bool(flag)
    return bool(all_reduce_sum(torch.tensor([1.0 if flag else 0.0], dtype=torch.float64)).item() > 0)


_COMM_WORDS = re.compile(r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed out|timeout", re.I)


def peer_failure(exc: BaseException, rank: int, step: int) -> str | None:
    """A clear message when ``exc`` is a failed collective (another rank died or hung), else None."""
    if not isinstance(exc, RuntimeError):
        return None
    if not (isinstance(exc, getattr(dist, "DistError", ())) or _COMM_WORDS.search(str(exc))):
        return None
    cause = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return (f"rank {rank} lost the other ranks at step {step}: a collective failed, so another rank probably "
            f"died or hung (check its log above). Rank 0 kept a checkpoint at its last completed step; "
            f"continue with --resume, on any number of processes. Cause: {cause}")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable value)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------- data and model

def per_rank_batch(global_batch: int, world_size: int) -> int:
    """B / W, or a clear error when the global batch does not split evenly."""
    if world_size < 1:
        raise DistError(f"world size must be >= 1, got {world_size}")
    if global_batch % world_size:
        lo = global_batch - global_batch % world_size
        raise DistError(f"global batch {global_batch} does not split over {world_size} processes: "
                        f"use a batch that is a multiple of {world_size} (e.g. {lo or world_size}) "
                        f"or another --nproc_per_node")
    return global_batch // world_size


def shard_batches(name, split: str, global_batch: int, ctx: DistContext, **kw):
    """This rank's share of ``iterate_batches(name, split, global_batch, **kw)``: its batch k holds
    positions r, r + W, ... of the one-process batch k (B/W images). With ``drop_last`` every rank
    stops after the same number of full global batches."""
    from datasets.torch_data import iterate_batches

    return iterate_batches(name, split, per_rank_batch(global_batch, ctx.world_size), shard=ctx.shard, **kw)


def positions(local_start: int, count: int, ctx_or_shard) -> torch.Tensor:
    """Epoch positions of a rank's examples local_start .. local_start + count - 1 (its local index
    i is position i * W + r), so per-example randomness keyed by position ignores the world size."""
    shard = ctx_or_shard.shard if isinstance(ctx_or_shard, DistContext) else ctx_or_shard
    r, w = shard if shard is not None else (0, 1)
    return (torch.arange(local_start, local_start + count) * w + r)


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def example_noise(key: Sequence[int | str], pos: torch.Tensor, shape: tuple[int, ...],
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """(len(pos), *shape) standard normals where row i depends only on (key, pos[i]): the same
    example gets the same noise whichever rank, batch or world size it lands in."""
    h = np.zeros(1, dtype=np.uint64)
    for part in key:
        v = zlib.crc32(part.encode()) if isinstance(part, str) else int(part)
        h = _splitmix(h ^ np.uint64(v % 2**64))
    seeds = _splitmix(h ^ np.asarray(pos.cpu().numpy(), dtype=np.uint64)) >> np.uint64(1)  # manual_seed wants < 2**63
    out = torch.empty((len(seeds), *shape), device=device)
    g = torch.Generator(device=device)
    for i, s in enumerate(seeds.tolist()):
        g.manual_seed(s)
        torch.randn(shape, generator=g, device=device, out=out[i])
    return out


class _LossModule(nn.Module):
    """Routes DDP's forward to ``model.loss`` so the gradient hooks see the loss computation."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs):
        return self.model.loss(*args, **kwargs)


class LossDDP(nn.parallel.DistributedDataParallel):
    """DDP over ``_LossModule``: ``wrapped.loss(...)`` is ``model.loss(...)`` with averaged gradients."""

    def loss(self, *args, **kwargs):
        return self(*args, **kwargs)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``model`` in DistributedDataParallel when ``ctx`` is distributed, else ``model`` itself.

    The wrapper's ``loss(...)`` calls ``model.loss(...)`` through DDP's forward; checkpoints keep
    ``model.state_dict()`` (the unwrapped model), so any world size can resume them.
    """
    if not ctx.distributed:
        return model
    if not _active():
        raise DistError("wrap_ddp: no process group; call init_from_env() first (under torchrun)")
    if not hasattr(model, "loss"):
        raise DistError(f"wrap_ddp: {type(model).__name__} has no loss(...) method to route through DDP")
    ids = [torch.device(ctx.device).index] if ctx.device.startswith("cuda") else None
    return LossDDP(_LossModule(model), device_ids=ids)


def assign(items: Sequence, rank: int, world_size: int) -> list:
    """Round-robin share of rank ``rank``: items rank, rank + W, ..."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DistError(f"rank {rank} of world size {world_size}: need 0 <= rank < world size")
    return list(items)[rank::world_size]


# ---------------------------------------------------------------- scaling measurement

def measure_scaling(ctx: DistContext, batch: int = 128, glimpses: int = 8, size: int = 100, steps: int = 10,
                    repeats: int = 5, warmup: int = 3) -> dict:
    """Global images/s of DDP classifier training steps (global batch ``batch`` split over the
    ranks), per repeat of ``steps`` steps; every rank runs the same count, rank 0 times them."""
    from datasets.torch_data import iterate_batches
    from models.classifier import ClassifierConfig, GlimpseClassifier

    torch.manual_seed(0)
    model = GlimpseClassifier(ClassifierConfig(height=size, width=size, glimpses=glimpses)).to(ctx.device)
    train = wrap_ddp(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x, y = next(iter(iterate_batches(f"cluttered{size}", "test", per_rank_batch(batch, ctx.world_size),
                                     device=ctx.device, shard=ctx.shard)))

    def step():
        loss = train.loss(x, y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()

    for _ in range(warmup):
        step()
    rates = []
    for _ in range(repeats):
        barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        if ctx.device.startswith("cuda"):
            torch.cuda.synchronize()
        barrier()
        rates.append(batch * steps / (time.perf_counter() - t0))
    rates.sort()
    return {"world_size": ctx.world_size, "backend": ctx.backend, "device": ctx.device, "batch": batch,
            "glimpses": glimpses, "size": size, "threads": torch.get_num_threads(), "rates": rates,
            "median": rates[len(rates) // 2], "min": rates[0], "max": rates[-1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128, help="global batch (split over the ranks)")
    p.add_argument("--glimpses", type=int, default=8)
    p.add_argument("--size", type=int, default=100, choices=(60, 100), help="cluttered image side")
    p.add_argument("--steps", type=int, default=10, help="training steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    ctx = init_from_env(args.device)
    try:
        res = measure_scaling(ctx, args.batch, args.glimpses, args.size, args.steps, args.repeats)
    finally:
        shutdown()
    if ctx.is_main:
        import json

        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
