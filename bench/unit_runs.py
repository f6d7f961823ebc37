"""How a sitting trains and scores each kind of unit (bench/runner.py runs the sitting): the glimpse
models and DRAW through the training loop, then their test metrics, glimpse paths and samples; the
conv-net baseline through the same loop; the pixel baseline in one go; throughput measurements.
Each returns the unit's metrics and what its record entry keeps."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import records, suites
from bench.records import metric

if TYPE_CHECKING:
    from bench.runner import Unit

DRY_EVAL_IMAGES = 64  # test and validation images of a dry run
_PEAKS: dict = {}  # the matmul peak per (device, threads), measured once per process


def at_glimpses(params: dict, t: int, trained: int | None) -> dict:
    """A glimpse model's metric params for its answer after ``t`` of its ``trained`` glimpses: the
    forward FLOPs of those t steps, the whole model's times t / trained (exact for the built-in
    models, whose steps each cost the same; plug-ins are taken to be alike)."""
    flops = params.get("flops_per_image")
    if flops is None or not trained or t == trained:
        return params
    return {**params, "flops_per_image": round(flops * t / trained)}


class UnitRuns:
    """The per-unit work of bench.runner.Runner, which it is mixed into: uses the Runner's opts, log,
    device, machine, ctx, sitting, artifacts and peak, and its save() and checkpoint_path()."""

    def run_unit(self, unit: Unit, record: dict, path: Path) -> tuple[list[dict], dict]:
        kind = unit.job.kind
        if kind == "throughput":
            return self.run_throughput(unit), {}
        if kind == "baseline" and unit.job.model == "conv":
            return self.run_conv(unit, record, path)
        if kind == "baseline":
            return self.run_baseline(unit, record)
        return self.run_training(unit, record, path)

    def _loop_config(self, job, task):
        from bench import plateau
        from bench.training_loop import LoopConfig

        budget = None if job.time_budget_min is None else job.time_budget_min * 60
        o = job.optim
        return LoopConfig(epochs=job.epochs, time_budget_s=budget, lr=o.lr, betas=o.betas, clip_norm=o.clip_norm,
                          schedule=task.schedule(), batches_per_epoch=task.batches_per_epoch(),
                          max_batches=1 if self.opts.dry_run else None, progress=self.opts.progress,
                          checkpoint_every_s=self.opts.checkpoint_every_s,
                          compact_checkpoints=self.opts.compact_checkpoints,
                          on_relapse=o.on_relapse, relapse_rule=plateau.for_task(job.kind, job.dataset),
                          policy_lr_scale=o.policy_lr_scale)

    def _task(self, unit: Unit):
        """The task that trains ``unit``: what its checkpoints describe."""
        from bench.tasks import ClassifierTask, ConvTask, DrawTask

        kw = dict(device=self.device, data_dir=self.opts.data_dir, rank=self.opts.rank,
                  world_size=self.opts.world_size)
        if unit.job.kind == "baseline" and unit.job.model == "conv":
            return ConvTask(unit.job, unit.seed, **kw)
        if unit.job.kind == "classifier":
            return ClassifierTask(unit.job, unit.glimpses, unit.seed, eval_glimpses=unit.eval_glimpses, **kw)
        if unit.job.kind in ("ram", "plugin"):
            return glimpse_model_task(unit, kw)
        return DrawTask(unit.job, unit.seed, **kw)

    def run_training(self, unit: Unit, record: dict, path: Path) -> tuple[list[dict], dict]:
        from bench import distributed
        from bench.training_loop import train

        job, task = unit.job, self._task(unit)
        ckpt = self.checkpoint_path(path, unit)
        record["jobs"][unit.id]["checkpoint"] = _rel(ckpt)
        self.save(record, path)
        progress = record["jobs"][unit.id]["progress"] = self.sitting.track({})
        with _curve_kept(record, unit):
            res = train(task, self._loop_config(job, task), ckpt, resume=self.opts.resume, rank=self.opts.rank,
                        status=progress, curve_so_far=record["curves"][unit.id],
                        world_size=self.opts.world_size, log=lambda m: self.log(f"  {unit.id}: {m}"),
                        wrap=lambda m: distributed.wrap_ddp(m, self.ctx))
        record["curves"][unit.id] = res.curve
        info = {"epochs": res.epochs_done, "steps": res.step, "images_seen": res.images_seen,
                "train_time_s": round(res.train_time_s, 1), "train_cost": _rounded(res.train_cost),
                "stopped_by": res.stopped_by, "best_epoch": res.best["epoch"], "resumed": res.resumed}
        model, seed = res.model, unit.seed
        flags = self._plateau(unit, res.curve, info, record)
        self._convergence(unit, res.curve, info)
        if job.kind == "draw":
            info["training_products"] = res.images_by_products  # images trained with each (models/fast/products.py)
        if job.optim.on_relapse != "continue" or res.rollbacks:
            info["rollbacks"] = res.rollbacks  # each relapse undone (bench/training_loop.py _Loop.relapse)
            info["lr_scale"] = res.lr_scale
        from datasets.variants import split_info

        info["data"] = {"train": {**split_info(job.dataset, "train", seed, 0), "epoch": "fresh per epoch"},
                        "valid": split_info(job.dataset, "valid", task.data_seed),
                        "test": split_info(job.dataset, "test", task.data_seed)}
        t0 = time.time()
        if job.kind in suites.GLIMPSE_KINDS:
            protocol = "per-step" if getattr(job, "per_step_loss", False) else "separate"
            test = task.evaluate(model, "test")
            common = dict(protocol=protocol, dataset=job.dataset, **task.metric_params(model), **flags)
            out = [metric("test_error", test[f"error@{t}"], "fraction", True, seed, glimpses=t,
                          test_images=test["images"], data_seed=task.data_seed, **at_glimpses(common, t, unit.glimpses))
                   for t in unit.eval_glimpses]
            best = res.best["metrics"]
            out += [metric("valid_error", best[f"error@{t}"], "fraction", True, seed, glimpses=t,
                           valid_images=best["images"], **at_glimpses(common, t, unit.glimpses))
                    for t in unit.eval_glimpses]
            for k, v in task.glimpse_paths(model).items():
                self.artifacts[f"{unit.id}/paths/{k}"] = v
            summary = ", ".join(f"T={t}: {test[f'error@{t}']:.2%}" for t in unit.eval_glimpses)
            self.log(f"  {unit.id}: test error {summary} ({test['images']} images)")
        else:
            m = job.model
            common = dict(dataset=job.dataset, attention=m.attention, steps=m.steps, read_n=m.read_n, **flags,
                          write_n=m.write_n, **task.metric_params(model))
            test = task.evaluate(model, "test")
            n = test["images"]
            out = [metric("nll_elbo", test["nll_elbo"], "nats", True, seed, test_images=n, **common),
                   metric("kl", test["kl"], "nats", None, seed, test_images=n, **common),
                   metric("reconstruction", test["reconstruction"], "nats", None, seed, test_images=n, **common)]
            iw = task.iwae(model, job.iwae_k, job.iwae_limit, progress=_show(self.opts.progress))
            out += [metric(name, iw[name], "nats", True, seed, k=job.iwae_k, test_images=iw["images"], **common)
                    for name in ("nll_iwae", "nll_elbo_mc")]
            if job.samples:  # 0: none kept (a recipe study)
                self.artifacts[f"{unit.id}/samples"] = task.samples(model, job.samples)
            self.log(f"  {unit.id}: test NLL <= {test['nll_elbo']:.2f} nats (ELBO, {n} images), "
                     f"<= {iw['nll_iwae']:.2f} (IWAE k={job.iwae_k}, {iw['images']} images, whose ELBO is "
                     f"{iw['nll_elbo_mc']:.2f})")
        info["eval_time_s"] = round(time.time() - t0, 1)
        return out, info

    def _plateau(self, unit: Unit, curve: list[dict], info: dict, record: dict) -> dict:
        """Escape point and relapses of the curve (into ``info``); a run still on its starting plateau
        is logged loudly, noted in the record, and its metrics carry ``on_plateau``."""
        from bench import plateau

        kind = plateau.for_task(unit.job.kind, unit.job.dataset)
        if kind is None or self.opts.dry_run:
            return {}
        info["plateau"] = result = plateau.analyse(curve, kind)
        line = f"{unit.id}: {plateau.describe(result, kind)}"
        self.log(f"  {line}")
        # an earlier run of the unit's note goes: an extension may have left the plateau since
        record["notes"] = [n for n in record.get("notes", []) if not n.startswith(f"{unit.id}:")]
        if not result["on_plateau"]:
            return {}
        record["notes"].append(line)
        return {"on_plateau": True}

    def _convergence(self, unit: Unit, curve: list[dict], info: dict) -> None:
        """Whether validation was still improving when training ended (bench/convergence.py), into
        ``info`` and the log."""
        from bench import convergence

        metric = convergence.metric_of(curve)
        if metric is None or self.opts.dry_run:
            return
        info["convergence"] = result = convergence.verdict(curve, metric)
        self.log(f"  {unit.id}: at the end of training, validation was {convergence.describe(result)}")

    def run_throughput(self, unit: Unit) -> list[dict]:
        from bench import throughput

        if self.peak is None and self.opts.dry_run:
            self.peak = 0.0  # a peak timed for a fraction of a second is no peak: no peak fraction either
            self.log("  matmul peak: not measured in a dry run, so no peak fraction")
        if self.peak is None:
            key = (self.device, self.machine["threads"])
            if key not in _PEAKS:  # once per process: it takes a second
                from models.flops import measure_matmul_peak

                _PEAKS[key] = measure_matmul_peak(seconds=1.0, device=self.device, size=2048)
            self.peak = _PEAKS[key]
            self.log(f"  matmul peak {self.peak:.1f} GFLOP/s on {self.device}")
        return throughput.measure(unit.job, self.device, self.peak or None, self.opts.dry_run,
                                  log=lambda m: self.log(f"  {m}"))

    def run_conv(self, unit: Unit, record: dict, path: Path) -> tuple[list[dict], dict]:
        """The conv-net baseline through the training loop: checkpoints, resume, curve, time budget and
        the best-valid weights, like the classifier; Adam 1e-3, batch 64, clip 10."""
        from bench import distributed
        from bench.tasks import ConvTask
        from bench.training_loop import LoopConfig, train

        job, dry = unit.job, self.opts.dry_run
        limit = DRY_EVAL_IMAGES if dry else None
        task = ConvTask(job, unit.seed, valid_limit=limit, test_limit=limit, device=self.device,
                        data_dir=self.opts.data_dir, rank=self.opts.rank, world_size=self.opts.world_size)
        ckpt = self.checkpoint_path(path, unit)
        record["jobs"][unit.id]["checkpoint"] = _rel(ckpt)
        self.save(record, path)
        progress = record["jobs"][unit.id]["progress"] = self.sitting.track({})
        budget = None if job.time_budget_min is None else job.time_budget_min * 60
        cfg = LoopConfig(epochs=job.epochs, time_budget_s=budget, lr=task.lr, clip_norm=10.0,
                         max_batches=1 if dry else None, progress=self.opts.progress,
                         checkpoint_every_s=self.opts.checkpoint_every_s,
                         compact_checkpoints=self.opts.compact_checkpoints)
        with _curve_kept(record, unit):
            res = train(task, cfg, ckpt, resume=self.opts.resume, rank=self.opts.rank,
                        world_size=self.opts.world_size, status=progress, curve_so_far=record["curves"][unit.id],
                        log=lambda m: self.log(f"  {unit.id}: {m}"), wrap=lambda m: distributed.wrap_ddp(m, self.ctx))
        record["curves"][unit.id] = res.curve
        test = task.evaluate(res.model, "test")
        self.log(f"  {unit.id}: test error {test['error']:.2%} ({test['images']} images)")
        out = [metric("test_error", test["error"], "fraction", True, unit.seed, glimpses=None, protocol="baseline-conv",
                      dataset=job.dataset, test_images=test["images"])]
        net = res.model
        info = {"test_images": test["images"], "model": "conv", "config": net.config.to_dict(),
                "epochs": res.epochs_done, "steps": res.step, "train_images_seen": res.images_seen,
                "train_time_s": round(res.train_time_s, 1), "train_cost": _rounded(res.train_cost),
                "stopped_by": res.stopped_by, "best_epoch": res.best["epoch"], "resumed": res.resumed,
                "batch_size": task.batch_size,
                "lr": task.lr, "params": net.param_count(), "flops_per_image": net.flops_per_image()}
        self._convergence(unit, res.curve, info)
        return out, info

    def run_baseline(self, unit: Unit, record: dict) -> tuple[list[dict], dict]:
        try:
            from models import baselines
        except ImportError as e:
            from bench.runner import RunError

            raise RunError(f"{unit.id}: models.baselines is not available ({e})") from e
        job = unit.job
        fn = getattr(baselines, "run_baseline", None)
        if fn is None:
            from bench.runner import RunError

            raise RunError(f"{unit.id}: models.baselines has no run_baseline(); baselines cannot run yet")
        res = fn(job.model, job.dataset, seed=unit.seed, epochs=job.epochs, train_limit=job.train_limit,
                 device=self.device, data_dir=self.opts.data_dir,
                 test_limit=DRY_EVAL_IMAGES if self.opts.dry_run else None, time_budget_min=job.time_budget_min,
                 log=lambda m: self.log(f"  {unit.id}: {m}"))
        out = [metric("test_error", res["test_error"], "fraction", True, unit.seed, glimpses=None,
                      protocol=f"baseline-{job.model}", dataset=job.dataset, test_images=res.get("test_images"),
                      data_seed=res.get("data_seed"), **baseline_cost(job, res))]
        return out, {k: v for k, v in res.items() if k not in ("test_error", "data_seed")}


@contextlib.contextmanager
def _curve_kept(record: dict, unit: Unit):
    """Training stopped early (Ctrl-C, SIGTERM, a crash) leaves the unit's curve so far in the record,
    which is saved next: an unfinished unit shows where it stands. Stopped before training took up
    its checkpoint, the unit keeps the curve the record had."""
    before = record["curves"].get(unit.id)
    record["curves"][unit.id] = []
    try:
        yield
    except BaseException:
        if not record["curves"][unit.id]:
            if before:
                record["curves"][unit.id] = before
            else:
                del record["curves"][unit.id]
        raise


def glimpse_model_task(unit: Unit, kw: dict):
    from bench.tasks import PluginTask, RamTask

    cls = RamTask if unit.job.kind == "ram" else PluginTask
    return cls(unit.job, unit.glimpses, unit.seed, eval_glimpses=unit.eval_glimpses, **kw)


def baseline_cost(job, res: dict) -> dict:
    """Attention type, parameters and forward FLOPs per image of a baseline, from what it reported."""
    if job.model == "conv":
        return {"attention_type": "none", "param_count": res.get("params"),
                "flops_per_image": res.get("flops_per_image")}
    from datasets.variants import get_spec

    spec = get_spec(job.dataset)
    params, flops = pixel_baseline_cost(spec.height * spec.width, res.get("components", 64))
    return {"attention_type": "none", "param_count": params, "flops_per_image": flops}


def pixel_baseline_cost(pixels: int, components: int = 64, classes: int = 10) -> tuple[int, int]:
    """(parameters, forward FLOPs per image) of PCA, standardisation and logistic regression."""
    params = pixels + pixels * components + 2 * components + components * classes + classes
    flops = pixels + 2 * pixels * components + 2 * components + 2 * components * classes + classes
    return params, flops


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in seconds.items()}


def _show(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _rel(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(records.REPO))
    except ValueError:
        return str(p)
