"""The epoch loop every long run shares: fresh data each epoch, Adam, gradient clipping, model
selection on `valid`, learning curves, and checkpoints that resume exactly.

The loop knows nothing about the model: a `Task` builds it, yields the epoch's batches, computes
the loss and evaluates. Nothing here assumes one process: `rank` and `world_size` are parameters,
rank 0 alone writes checkpoints, and `wrap` lets a caller put the model in DistributedDataParallel.

Exact resume: a checkpoint stores the position (epoch, batches done in it), model, optimiser,
best-so-far, curve and the RNG states taken at that position. Batches are a pure function of
(seed, epoch), so resuming regenerates the epoch, skips the batches already done and continues
with the same random numbers an uninterrupted run would have drawn.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from bench import checkpoints, cost, distributed, plateau
from bench.optim import ON_RELAPSE
from bench.schedule import Schedule
from bench.signal_hold import uninterrupted
from models.fast import products

CHECKPOINT_FORMAT = "glimpse-train-1"


@dataclass
class LoopConfig:
    epochs: int = 10
    time_budget_s: float | None = None  # training time (valid/test excluded); None = epochs only
    lr: float = 1e-3  # Adam's base rate (a job's Optim gives lr, betas, clip_norm and the schedule)
    betas: tuple[float, float] = (0.9, 0.999)
    clip_norm: float = 10.0
    checkpoint_every_s: float = 300.0
    max_batches: int | None = None  # per epoch; the dry run uses 1
    max_bad_steps: int = 20  # consecutive non-finite losses or gradients before giving up
    progress: bool | None = None  # tqdm bars; None = only when stderr is a terminal
    log_every_s: float = 30.0  # plain progress lines when there are no bars
    schedule: Schedule = field(default_factory=Schedule)  # learning-rate schedule over the epoch budget
    batches_per_epoch: int | None = None  # needed by a schedule other than "constant"
    compact_checkpoints: bool = False  # Adam's moments in bfloat16 on disk (bench/checkpoints.py pack)
    on_relapse: str = "continue"  # or "rollback": see _Loop.relapse (a job's Optim.on_relapse)
    relapse_rule: plateau.Plateau | None = None  # the relapse rule; None: the one of the task's select metric
    policy_lr_scale: float = 1.0  # the location policy's rate / lr (a job's Optim.policy_lr_scale): see adam()


class Task(Protocol):
    select: str  # the valid metric that picks the best epoch; lower is better

    def describe(self) -> dict: ...  # flat config, stored in checkpoints and checked on resume
    def build(self) -> nn.Module: ...
    def batches(self, epoch: int) -> Iterable[tuple]: ...  # deterministic in (seed, epoch)
    def batch_images(self, batch: tuple) -> int: ...
    def loss(self, model: nn.Module, batch: tuple) -> torch.Tensor: ...
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]: ...  # no_grad inside


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, bad checkpoint); the message says why and what to do."""


class ResumeMismatch(TrainingError, checkpoints.CheckpointError):
    """The checkpoint to resume from is not one of this task (bad input: exit status 2)."""


@dataclass
class LoopResult:
    model: nn.Module  # holds the best-valid state
    curve: list[dict]
    best: dict  # {"epoch", "value", "metrics"}
    step: int
    images_seen: int
    train_time_s: float  # wall seconds in training steps, all sittings
    epochs_done: int
    stopped_by: str  # "epochs" | "time_budget"
    resumed: bool = False
    extra: dict = field(default_factory=dict)
    rollbacks: list[dict] = field(default_factory=list)  # on_relapse="rollback": each relapse undone
    lr_scale: float = 1.0  # the multiplier of the schedule the rollbacks left
    images_by_products: dict = field(default_factory=dict)  # images trained with each training-products setting
    train_cost: dict = field(default_factory=dict)  # seconds by where they ran (bench/cost.py)


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _state_to_cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) if torch.is_tensor(v) else copy.deepcopy(v) for k, v in state.items()}


def description_diff(task: Task, stored: dict) -> dict:
    """{key: (checkpoint's, now)} where the task differs from the description a checkpoint stored.
    A model field the checkpoint predates counts as the field's default (e.g. DRAW's initial_state)."""
    ours, theirs = task.describe(), dict(stored)
    config = getattr(task, "config", None)
    if callable(config) and isinstance(ours.get("model"), dict) and isinstance(theirs.get("model"), dict) \
            and is_dataclass(config()):  # a plug-in's config is a plain dict: no defaults to fill in
        defaults = {f.name: f.default for f in fields(type(config())) if f.default is not MISSING}
        theirs["model"] = {**{k: defaults[k] for k in ours["model"] if k not in theirs["model"] and k in defaults},
                           **theirs["model"]}
    return {k: (theirs.get(k), ours.get(k)) for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)}


def _is_terminal() -> bool:
    return sys.stderr.isatty()


def adam(model: nn.Module, cfg: LoopConfig) -> torch.optim.Adam:
    """Adam over the model's parameters at cfg.lr. With cfg.policy_lr_scale != 1 the parameters of the
    model's location policy (``model.policy_parameters()``, e.g. RAM's location network) form a group
    of their own whose rate is that multiple of the scheduled rate (its ``lr_scale``)."""
    if cfg.policy_lr_scale == 1.0:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    policy = getattr(model, "policy_parameters", None)
    if policy is None:
        raise TrainingError(f"policy_lr_scale {cfg.policy_lr_scale:g}: {type(model).__name__} has no location "
                            "policy (policy_parameters()); leave policy_lr_scale at 1")
    ids = {id(p) for p in policy()}
    params = list(model.parameters())
    groups = [{"params": [p for p in params if id(p) not in ids], "lr_scale": 1.0, "lr": cfg.lr},
              {"params": [p for p in params if id(p) in ids], "lr_scale": cfg.policy_lr_scale,
               "lr": cfg.lr * cfg.policy_lr_scale}]
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class _Loop:
    def __init__(self, task: Task, cfg: LoopConfig, ckpt: Path | None, rank: int, world_size: int,
                 log: Callable[[str], None], wrap: Callable[[nn.Module], nn.Module] | None,
                 on_step: Callable[[int], None] | None):
        self.task, self.cfg, self.ckpt = task, cfg, ckpt
        self.rank, self.world_size, self.log = rank, world_size, log
        self.on_step = on_step
        self.model = task.build()
        self.train_model = wrap(self.model) if wrap else self.model
        self.opt = adam(self.model, cfg)
        self.epoch, self.batch_in_epoch, self.step = 0, 0, 0
        self.images_seen, self.train_time_s = 0, 0.0
        self.train_cost: dict[str, float] = {}  # bench/cost.py: core-seconds on a CPU, wall seconds elsewhere
        first = next(self.model.parameters(), None)
        self.charged_to = cost.where(first.device if first is not None else "cpu")
        # the cost (bench/cost.py): CPU time on a CPU, wall time on an accelerator; summed over the ranks
        self.cost_clock = time.process_time if self.charged_to == cost.CPU else time.perf_counter
        self.cost_last = 0.0  # the cost clock at the last step (set as each epoch begins)
        self.curve: list[dict] = []
        self.best: dict = {"epoch": None, "value": math.inf, "metrics": {}}
        self.best_state: dict | None = None
        self.finished, self.stopped_by = False, "epochs"
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.safe_rng = rng_states()  # RNG at the current position; what a checkpoint stores
        self.epoch_complete = False
        self.decay_saved = False  # whether the state at the start of the decay has been kept
        self.status: dict | None = None
        self.images_at_start, self.train_time_at_start = 0, 0.0  # where this sitting began
        self.cost_at_start: dict[str, float] = {}
        self.last_save = time.monotonic()
        self.lr_scale = 1.0  # halved by each rollback; multiplies the schedule for the rest of the run
        self.rollbacks: list[dict] = []
        self.images_by_products: dict[str, int] = {}  # models/fast/products.py setting -> images trained with it
        self.relapse_rule = cfg.relapse_rule or plateau.for_metric(f"valid_{task.select}")
        if cfg.on_relapse not in ON_RELAPSE:
            raise TrainingError(f"on_relapse must be one of {', '.join(map(repr, ON_RELAPSE))}, got {cfg.on_relapse!r}")
        if cfg.on_relapse == "rollback" and self.relapse_rule is None:
            raise TrainingError(f"on_relapse='rollback' needs a plateau rule: none is known for the metric "
                                f"valid_{task.select}; give LoopConfig.relapse_rule")
        if cfg.schedule.kind != "constant" and not cfg.batches_per_epoch:
            raise TrainingError(f"schedule {cfg.schedule.kind!r} needs LoopConfig.batches_per_epoch")

    def lr_at(self, epoch: int, batches_done: int) -> float:
        """The learning rate of the step that ends after ``batches_done`` batches of ``epoch``."""
        n = self.cfg.batches_per_epoch or 1
        return self.cfg.lr * self.lr_scale * self.cfg.schedule.factor(epoch + min(batches_done, n) / n, self.cfg.epochs)

    def stable_path(self) -> Path | None:
        """Where the state at the start of the decay is kept, so that a longer run can restart its decay."""
        return None if self.ckpt is None else checkpoints.stable_path(self.ckpt)

    # ------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "task": self.task.describe(), "loop": asdict(self.cfg),
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step,
            "images_seen": self.images_seen, "train_time_s": self.train_time_s, "train_cost": self.train_cost,
            "epoch_loss": (self.epoch_loss_sum, self.epoch_loss_n),
            "curve": self.curve, "best": self.best, "best_state": self.best_state,
            "finished": self.finished, "stopped_by": self.stopped_by, "rng": self.safe_rng,
            "decay_saved": self.decay_saved, "lr_scale": self.lr_scale, "rollbacks": self.rollbacks,
            "images_by_products": self.images_by_products,
            # where this sitting began: `bench status` estimates the time to go at the latest sitting's rate
            "sitting_start": {"images_seen": self.images_at_start, "train_time_s": self.train_time_at_start,
                              "train_cost": self.cost_at_start},
        }

    def save(self, lasting: bool = False) -> None:
        """``lasting``: a state that stays (the end of the run or of the sitting), compressed losslessly;
        the periodic saves in between are not, as each is soon replaced."""
        if self.ckpt is not None and self.rank == 0:
            checkpoints.save(self.ckpt, self.state(), compact=self.cfg.compact_checkpoints, compress=lasting)
        self.last_save = time.monotonic()

    def position(self) -> float:
        return self.epoch + self.batch_in_epoch / (self.cfg.batches_per_epoch or 1)

    def extend(self) -> None:
        """Continue a run restored from its checkpoint under a larger budget than it was made with."""
        cfg = self.cfg
        more_epochs = self.epoch < cfg.epochs
        more_time = cfg.time_budget_s is None or self.train_time_s < cfg.time_budget_s
        if self.finished and more_epochs and more_time:
            self.finished = False
            self.log(f"extending a finished run to {cfg.epochs} epochs"
                     + (f" / {cfg.time_budget_s / 60:g} min" if cfg.time_budget_s else ""))
        start = cfg.schedule.decay_start(cfg.epochs)
        stable = self.stable_path()
        if self.decay_saved and start > cfg.schedule.decay_start(self.made_for_epochs):
            if stable is None or not stable.is_file():
                raise TrainingError(f"{self.ckpt}: its decay began before the new budget's decay start (epoch "
                                    f"{start:g}) and the state kept at the start of that decay ({stable}) is "
                                    "missing; keep the budget, or start afresh")
            self.restore(checkpoints.load(stable))
            self.finished, self.decay_saved = False, False
            self.log(f"the decay had begun: restarting from {stable} (epoch {self.epoch + 1}, step {self.step}), "
                     f"inside the stable phase of the {cfg.epochs}-epoch schedule")

    def export_refused(self, export: dict) -> ResumeMismatch:
        return ResumeMismatch(f"{self.ckpt}: an evaluation-only export (of {export['reference_of']}); training "
                              "goes on only from the full checkpoint: put it here, or train the model afresh")

    def from_stable(self, export: dict) -> dict:
        """The state a finished run kept only as its evaluation-only export (`checkpoints.keep_for_evaluation`)
        goes on from: the one kept where its decay began, when this budget's decay begins later."""
        stable = self.stable_path()
        if not stable.is_file():
            raise self.export_refused(export)
        state = checkpoints.load(stable)
        made_for = state["loop"]["epochs"]
        decay = self.cfg.schedule.decay_start
        if decay(self.cfg.epochs) <= decay(made_for):
            raise ResumeMismatch(f"{self.ckpt}: finished under a {made_for}-epoch budget and kept as an evaluation-"
                                 f"only export, which `bench eval` scores; a larger --epochs than {made_for} "
                                 f"continues it from {stable}")
        return state

    def report_status(self) -> None:
        if self.status is not None:
            self.status.update(epoch=self.epoch, step=self.step, images_seen=self.images_seen,
                               images_this_sitting=self.images_seen - self.images_at_start,
                               lr=self.lr_at(self.epoch, self.batch_in_epoch))

    def save_stable(self) -> None:
        """Keep the state at the start of the decay (once); a longer budget later restarts from it."""
        path = self.stable_path()
        if path is not None and self.rank == 0:
            checkpoints.save(path, self.state(), compact=self.cfg.compact_checkpoints, compress=True)
        self.decay_saved = True

    def restore(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ResumeMismatch(f"{self.ckpt}: not a training checkpoint of this harness "
                                f"(format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r})")
        if "reference_of" in state:  # bench export: weights for evaluation, no optimiser or RNG state
            raise self.export_refused(state)
        diff = description_diff(self.task, state["task"])
        if diff:
            raise ResumeMismatch(f"{self.ckpt}: checkpoint was made for another configuration "
                                f"(checkpoint vs now: {diff}); resume with the same settings or start afresh")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        for k in ("epoch", "batch_in_epoch", "step", "images_seen", "train_time_s", "curve", "best",
                  "best_state", "finished", "stopped_by"):
            setattr(self, k, state[k])
        self.epoch_loss_sum, self.epoch_loss_n = state["epoch_loss"]
        self.safe_rng = state["rng"]
        self.decay_saved = state.get("decay_saved", False)
        self.lr_scale = state.get("lr_scale", 1.0)  # checkpoints made before rollbacks existed: none
        self.rollbacks = list(state.get("rollbacks", []))
        # checkpoints made before the setting existed: every image with float32 products
        self.images_by_products = dict(state.get("images_by_products", {"float32": state["images_seen"]}))
        self.train_cost = dict(state.get("train_cost") or cost.legacy(state["train_time_s"]))  # older: unattributed
        self.made_for_epochs = state["loop"]["epochs"]  # the budget whose schedule the state followed
        set_rng_states(self.safe_rng)

    # ------------------------------------------------------------ the loop
    def over_budget(self) -> bool:
        if self.cfg.time_budget_s is None:
            return False
        # ranks' clocks differ; all must stop at the same batch (no-op in one process)
        return distributed.any_rank(self.train_time_s >= self.cfg.time_budget_s)

    def optimise(self, batch, i: int) -> tuple[bool, torch.Tensor]:
        """One step on ``batch``, the i-th of the epoch: the loss, its gradients clipped and, when every
        rank's loss and gradients are finite, Adam at the schedule's rate. Returns (stepped, loss). The
        cost since the last step and the loss are summed over the ranks in one all-reduce."""
        task, cfg = self.task, self.cfg
        loss = task.loss(self.train_model, batch)
        self.opt.zero_grad(set_to_none=True)
        finite = bool(torch.isfinite(loss))
        if finite or self.world_size > 1:  # under DDP every rank must join the gradient all-reduce
            loss.backward()
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_norm)
            finite = finite and bool(torch.isfinite(norm))
        n_img = task.batch_images(batch)
        now = self.cost_clock()
        loss_sum, n_all, failed, spent = distributed.all_reduce_sum(torch.tensor(
            [loss.item() * n_img if finite else 0.0, n_img, 0.0 if finite else 1.0, now - self.cost_last],
            dtype=torch.float64)).tolist()
        self.cost_last = now
        cost.add(self.train_cost, self.charged_to, spent)
        if failed:
            self.opt.zero_grad(set_to_none=True)
            return False, loss
        lr = self.lr_at(self.epoch, i + 1)
        for group in self.opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.opt.step()
        self.epoch_loss_sum += loss_sum
        self.epoch_loss_n += int(n_all)
        return True, loss

    def train_epoch(self) -> None:
        from tqdm import tqdm

        task, cfg, model = self.task, self.cfg, self.train_model
        model.train()
        batches = task.batches(self.epoch)
        show = _is_terminal() if cfg.progress is None else cfg.progress
        bar = tqdm(total=cfg.max_batches, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not show or self.rank != 0, unit="batch")
        bad = 0
        last_line, t_epoch, seen_epoch = time.monotonic(), self.train_time_s, 0
        self.epoch_complete = False
        t_last = time.perf_counter()  # training time includes making the batch
        self.cost_last = self.cost_clock()
        decay_start = cfg.schedule.decay_start(cfg.epochs)
        products_now = products.name_of(products.training_dtype())
        for i, batch in enumerate(batches):
            if i < self.batch_in_epoch:  # done before the interruption
                t_last, self.cost_last = time.perf_counter(), self.cost_clock()
                continue
            if self.epoch + i / (cfg.batches_per_epoch or 1) >= decay_start and not self.decay_saved:
                self.save_stable()
            if (cfg.max_batches is not None and i >= cfg.max_batches) or self.over_budget():
                break
            with uninterrupted():  # a checkpoint holds a step's weights, moments, counters and RNG, or none
                stepped, loss = self.optimise(batch, i)
                if stepped:
                    bad = 0
                else:
                    bad += 1
                    if bad >= cfg.max_bad_steps:
                        raise TrainingError(f"{bad} consecutive non-finite losses or gradients at step {self.step}: "
                                            f"training diverged; lower the learning rate (now {cfg.lr}) "
                                            f"or the clipping norm (now {cfg.clip_norm})")
                now = time.perf_counter()
                self.train_time_s += now - t_last
                t_last = now
                self.step += 1
                self.batch_in_epoch = i + 1
                images = task.batch_images(batch) * self.world_size
                self.images_seen += images
                self.images_by_products[products_now] = self.images_by_products.get(products_now, 0) + images
                self.safe_rng = rng_states()
                self.report_status()
            bar.update(1)
            seen_epoch += task.batch_images(batch)
            if stepped:
                bar.set_postfix(loss=f"{loss.item():.4g}", refresh=False)
            if bar.disable and self.rank == 0 and time.monotonic() - last_line >= cfg.log_every_s:
                last_line = time.monotonic()
                rate = seen_epoch / max(self.train_time_s - t_epoch, 1e-9)
                mean = self.epoch_loss_sum / max(self.epoch_loss_n, 1)
                self.log(f"epoch {self.epoch + 1}: batch {i + 1}, train loss {mean:.4g}, {rate:,.0f} images/s, "
                         f"{self.train_time_s:.0f} s training")
            if self.on_step is not None:
                self.on_step(self.step)
            if time.monotonic() - self.last_save >= cfg.checkpoint_every_s:
                self.save()
        else:
            self.epoch_complete = True
        bar.close()

    def validate(self) -> dict:
        """The validation metrics and the seconds they took; changes nothing that a checkpoint keeps."""
        t0 = time.perf_counter()
        metrics = self.task.evaluate(self.model, "valid")
        return {"metrics": metrics, "valid_time_s": time.perf_counter() - t0}

    def end_epoch(self, valid: dict) -> None:
        """The epoch's curve entry (or a rollback), the best state, and the counters of the next epoch."""
        self.record_valid(valid["metrics"], valid["valid_time_s"])
        self.epoch += 1
        self.batch_in_epoch = 0
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.safe_rng = rng_states()

    def record_valid(self, metrics: dict, valid_time_s: float) -> None:
        partial = not self.epoch_complete
        entry = {
            "epoch": self.epoch + 1, "step": self.step, "images_seen": self.images_seen,
            "train_loss": self.epoch_loss_sum / max(self.epoch_loss_n, 1) if self.epoch_loss_n else None,
            **{f"valid_{k}": v for k, v in metrics.items()},
            "train_time_s": round(self.train_time_s, 3),
            "train_cost": {k: round(v, 3) for k, v in self.train_cost.items()},
            "valid_time_s": round(valid_time_s, 3),
            "partial_epoch": bool(partial),
        }
        if self.relapse(entry):
            return
        value = metrics[self.task.select]
        self.curve.append(entry)
        if value < self.best["value"] or self.best_state is None:
            self.best = {"epoch": self.epoch + 1, "value": value, "metrics": metrics}
            self.best_state = _state_to_cpu(self.model.state_dict())
        loss_txt = f"{entry['train_loss']:.4g}" if entry["train_loss"] is not None else "-"
        self.log(f"epoch {self.epoch + 1}: train loss {loss_txt}, valid {self.task.select} {value:.4g} "
                 f"(best {self.best['value']:.4g} @ {self.best['epoch']}), {self.images_seen} images, "
                 f"{self.train_time_s:.0f} s training")

    def relapse(self, entry: dict) -> bool:
        """With on_relapse="rollback", undo a relapse (bench/plateau.py): load the best-valid weights,
        start Adam afresh (its moments belong to the diverged weights) and halve ``lr_scale`` for the
        rest of the run. The data position is kept: training goes on with the next fresh batches.
        Returns whether it rolled back (the entry is then in the curve, marked)."""
        rule = self.relapse_rule
        value = entry.get(rule.metric) if rule is not None else None
        if (self.cfg.on_relapse != "rollback" or self.best_state is None or value is None
                or not plateau.is_relapse(self.curve, value, rule)):
            return False
        self.lr_scale *= 0.5
        event = {"epoch": self.epoch + 1, "step": self.step, "images_seen": self.images_seen,
                 "metric": rule.metric, "value": value, "best_epoch": self.best["epoch"],
                 "best_value": self.best["value"], "lr_scale": self.lr_scale}
        self.rollbacks.append(event)
        self.curve.append({**entry, "rollback": True})
        self.model.load_state_dict(self.best_state)
        self.opt = adam(self.model, self.cfg)
        self.log(f"RELAPSE at epoch {self.epoch + 1}: {rule.metric} {value:.4g} is more than "
                 f"{rule.relapse_margin:g} above the best {self.best['value']:.4g} (epoch {self.best['epoch']}); "
                 f"ROLLED BACK to the epoch-{self.best['epoch']} weights, Adam reset, learning rate now "
                 f"x{self.lr_scale:g} of the schedule for the rest of the run (rollback {len(self.rollbacks)})")
        return True

    def run(self) -> None:
        while not self.finished:
            if self.epoch >= self.cfg.epochs or (self.over_budget() and self.batch_in_epoch == 0):
                self.stopped_by = "time_budget" if self.epoch < self.cfg.epochs else "epochs"
                self.finished = True
                break
            self.train_epoch()
            valid = self.validate()
            with uninterrupted():
                self.end_epoch(valid)
            if self.over_budget():
                self.stopped_by, self.finished = "time_budget", True
            self.save()
        self.save(lasting=True)


def cannot_shorten(state: dict, epochs: int) -> str | None:
    """Why the run saved in ``state`` (a training checkpoint) cannot go on under a budget of ``epochs``,
    or None when it can: its budget is not larger, or the run has not reached the point where an
    ``epochs``-epoch schedule leaves its own (the start of the shorter decay, or the shorter end).
    Past that point, ending it at ``epochs`` would record as finished a run that never followed the
    schedule it is recorded under; exactly at it (stopped after the last step before the shorter decay
    or end, its validation not yet run, say), the run has followed that schedule step for step."""
    loop = state.get("loop") or {}
    made_for = loop.get("epochs")
    if made_for is None or made_for <= epochs:
        return None
    schedule = Schedule(**loop["schedule"]) if loop.get("schedule") else Schedule()
    position = state["epoch"] + state.get("batch_in_epoch", 0) / (loop.get("batches_per_epoch") or 1)
    departs = min(schedule.decay_start(epochs), float(epochs))
    if position <= departs:
        if not state.get("finished"):
            return None
        return (f"finished at epoch {position:.1f} of a {made_for}-epoch budget (stopped by its "
                f"{state.get('stopped_by') or 'budget'}); a smaller budget does not reopen it: give "
                f"--epochs {made_for}")
    at = "begins its decay" if departs < epochs else "ends"
    return (f"trained {position:.1f} epochs of a {made_for}-epoch budget, past epoch {departs:g}, where a "
            f"{epochs}-epoch schedule {at}; continue it with --epochs {made_for}")


def train(task: Task, cfg: LoopConfig, checkpoint: str | Path | None = None, resume: bool = False,
          rank: int = 0, world_size: int = 1, log: Callable[[str], None] = print,
          wrap: Callable[[nn.Module], nn.Module] | None = None,
          on_step: Callable[[int], None] | None = None, status: dict | None = None,
          curve_so_far: list | None = None) -> LoopResult:
    """Train ``task`` under ``cfg``; return the model with its best-valid state loaded.

    With ``resume`` and an existing ``checkpoint`` the run continues from it exactly. Any
    exception, Ctrl-C included, first saves a checkpoint at the last completed step, then
    propagates. ``on_step(step)`` runs after every optimiser step (tests use it to crash).
    ``status``, when given, is kept up to date: epoch, step, images_seen, images_this_sitting, lr.
    ``curve_so_far``, when given, receives the learning curve when training stops early (the
    interrupted unit's record keeps it); a finished run returns it in the result.

    A checkpoint of a finished run continues when the budget has grown. With the "wsd" schedule,
    a run whose decay had begun under a shorter budget restarts from the state kept when that
    decay began, which lies inside the longer budget's stable phase.
    """
    path = Path(checkpoint) if checkpoint is not None else None
    loop = _Loop(task, cfg, path, rank, world_size, log, wrap, on_step)
    resumed = False
    if resume and path is not None and path.exists():
        state = checkpoints.load(path)
        kept_at_decay = checkpoints.is_export(state)
        if kept_at_decay:
            state = loop.from_stable(state)
        why = cannot_shorten(state, cfg.epochs)
        if why:
            raise ResumeMismatch(f"{path}: {why}")
        loop.restore(state)
        if loop.made_for_epochs > cfg.epochs:
            log(f"shortened: made for a {loop.made_for_epochs}-epoch budget, it goes on to {cfg.epochs} epochs "
                "(the two schedules are alike up to here)")
        resumed = True
        if kept_at_decay:
            log(f"extending a finished run kept as an evaluation-only export to {cfg.epochs} epochs: restarting "
                f"from {loop.stable_path()} (epoch {loop.epoch + 1}, step {loop.step}), where its decay began, "
                f"inside the stable phase of the {cfg.epochs}-epoch schedule")
        else:
            log(f"resumed from {path} at epoch {loop.epoch + 1}, batch {loop.batch_in_epoch}, step {loop.step}")
        loop.extend()
    loop.status = status
    loop.images_at_start, loop.train_time_at_start = loop.images_seen, loop.train_time_s
    loop.cost_at_start = dict(loop.train_cost)
    loop.report_status()
    try:
        loop.run()
    except BaseException as e:
        loop.report_status()  # a stop signal may land between a step's counters and its status update
        loop.save(lasting=True)
        if curve_so_far is not None:
            curve_so_far[:] = loop.curve
        lost = distributed.peer_failure(e, rank, loop.step) if world_size > 1 else None
        if lost:
            raise TrainingError(lost) from e
        raise
    if loop.best_state is not None:
        loop.model.load_state_dict(loop.best_state)
    return LoopResult(loop.model, loop.curve, loop.best, loop.step, loop.images_seen, loop.train_time_s,
                      loop.epoch, loop.stopped_by, resumed, rollbacks=list(loop.rollbacks), lr_scale=loop.lr_scale,
                      images_by_products=dict(loop.images_by_products), train_cost=dict(loop.train_cost))
