"""`bench run`: expand a suite into units (one model x seed, or one throughput job), train and
evaluate each, and keep the run record up to date after every unit.

The record is written at the start (status incomplete), after each unit, and at the end. Ctrl-C
or a crash leaves the record (incomplete / failed) and every unit's checkpoint; `--resume` reruns
the same record: finished units are kept, unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import fnmatch
import io
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from bench import closing, records, resume, suites
from bench.targets import check_targets
from bench.unit_runs import DRY_EVAL_IMAGES, UnitRuns
from datasets.cliargs import UsageError

CHECKPOINTS = records.RUNS / "checkpoints"
DRY_RUNS = records.RUNS / "dry-run"


ANOTHER_SITTINGS = "not in --units, left for another sitting"


class RunError(RuntimeError):
    """A run that cannot start or go on; the message says what to do."""


class ResumeError(RunError, UsageError):
    """--resume given a record that cannot be resumed (bad input: exit status 2)."""


class SettingError(RunError, UsageError):
    """An option this machine or suite cannot honour (bad input: exit status 2)."""


@dataclass
class RunOptions:
    suite: str = "quick"
    glimpses: tuple[int, ...] | None = None
    jobs: tuple[int, ...] | None = None  # the suite's jobs to run, by index (suites.listing); None = all
    units: tuple[str, ...] | None = None  # this sitting trains only the units matching these globs; others wait
    seeds: tuple[int, ...] | None = None
    device: str = "auto"
    epochs: int | None = None
    time_budget_min: float | None = None
    on_relapse: str | None = None  # a recipe setting (bench/optim.py); None = the suite's
    settings: dict | None = None  # --set: deviations from the suite's recipe, by setting name (suites.with_deviations)
    data_dir: str | None = None
    out: str | None = None
    resume: bool = False
    dry_run: bool = False
    reference: bool = False  # the record goes to the committed reference results (results/runs/)
    threads: int | None = None
    checkpoint_dir: str | None = None
    model: str | None = None  # a plug-in glimpse model (bench/plugins.py) in place of the suite's glimpse jobs
    checkpoint_every_s: float = 300.0
    compact_checkpoints: bool = False
    training_products: str = "float32"  # DRAW's training products on CPU (models/fast/products.py); per sitting
    progress: bool | None = None
    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    sweep_rank: int = 0  # --sweep-parallel: this process runs units sweep_rank, + sweep_world, ... alone
    sweep_world: int = 1


@dataclass
class Unit:
    id: str
    job: object
    seed: int
    glimpses: int | None = None  # classifier: steps of the trained model
    eval_glimpses: tuple[int, ...] = ()


def _tag(job) -> str:
    return f"-{job.variant}" if getattr(job, "variant", "") else ""


def units(suite: suites.Suite, seeds: tuple[int, ...] | None) -> list[Unit]:
    out = []
    for job in suite.jobs:
        job_seeds = getattr(job, "seeds", None)
        run_seeds = tuple(seeds) if seeds is not None else (job_seeds or suite.seeds)
        if job.kind == "classifier":
            if job.per_step_loss:
                t = max(job.glimpses)
                for s in run_seeds:
                    out.append(Unit(f"classifier-{job.dataset}-T{t}-perstep{_tag(job)}-s{s}", job, s, t,
                                    tuple(job.glimpses)))
            else:
                by_t = dict(job.seeds_by_glimpses)
                for t in job.glimpses:
                    for s in (run_seeds if seeds is not None else by_t.get(t, run_seeds)):
                        out.append(Unit(f"classifier-{job.dataset}-T{t}{_tag(job)}-s{s}", job, s, t, (t,)))
        elif job.kind in ("ram", "plugin"):
            out += glimpse_model_units(job, run_seeds, seeds)
        elif job.kind == "draw":
            att = "attn" if job.model.attention else "noattn"
            for s in run_seeds:
                out.append(Unit(f"draw-{job.dataset}-{att}-T{job.model.steps}{_tag(job)}-s{s}", job, s))
        elif job.kind == "baseline":
            for s in run_seeds:
                out.append(Unit(f"baseline-{job.model}-{job.dataset}-s{s}", job, s))
        elif job.kind == "throughput":
            out.append(Unit(f"throughput-{job.model}", job, 0))
    return out


def _dry(job):
    """One batch of everything: one epoch of one batch, tiny evaluation sets, small k."""
    if job.kind in TRAINED_KINDS:
        job = replace(job, epochs=1, time_budget_min=None, valid_limit=DRY_EVAL_IMAGES, test_limit=DRY_EVAL_IMAGES)
    if job.kind == "draw":
        job = replace(job, iwae_k=4, iwae_limit=8, samples=2)
    if job.kind == "baseline":
        job = replace(job, epochs=1, train_limit=256)
    if job.kind == "throughput":
        job = replace(job, batch_sizes=job.batch_sizes[:1], repeats=1, min_time_s=0.0)
    return job


class Runner(UnitRuns):
    def __init__(self, opts: RunOptions, log: Callable[[str], None] = print, argv: list[str] | None = None):
        self.opts, self.log = opts, log
        try:
            self.suite = suites.for_run(opts.suite, model=opts.model, glimpses=opts.glimpses, epochs=opts.epochs,
                                        time_budget_min=opts.time_budget_min, on_relapse=opts.on_relapse,
                                        jobs=opts.jobs, settings=opts.settings)
        except suites.SuiteError as e:
            raise SettingError(str(e)) from None
        if opts.dry_run:
            self.suite = replace(self.suite, jobs=tuple(_dry(j) for j in self.suite.jobs))
        self.units = units(self.suite, opts.seeds)
        from bench import distributed

        if opts.sweep_world > 1:
            self.units = distributed.assign(self.units, opts.sweep_rank, opts.sweep_world)
        from models.training import pick_device

        self.device = str(pick_device(opts.device))
        if opts.threads:
            import torch

            torch.set_num_threads(opts.threads)
        self.machine = records.machine_info(self.device, opts.threads, opts.world_size, opts.backend)
        self.products = self._training_products()
        self.ctx = distributed.DistContext(opts.rank, opts.world_size, 0, opts.backend, self.device)
        self.argv = argv or []
        self.peak: float | None = None
        self.artifacts: dict[str, np.ndarray] = {}
        self.sitting: resume.Sitting | None = None  # set when the record is opened
        self.skipped: set[str] = set()  # units complete when the record was opened: other sittings may extend them
        self.stamp_budgets: Callable[[dict], None] | None = None  # a resume's, for units taken in from the disk

    def _training_products(self):
        """--training-products checked against this machine and the suite's DRAW jobs: the operand dtype
        of DRAW's training products (None: float32), set for the run by ``run``. ``auto`` becomes
        bfloat16 where it would be accepted, else float32 (``opts.training_products`` says which)."""
        from models.fast import products

        name = self.opts.training_products
        if name == "auto":
            ok = products.bf16_supported() and self._why_not_low_precision() is None
            name = self.opts.training_products = "bfloat16" if ok else "float32"
        try:
            dtype = products.check(name)
        except ValueError as e:
            raise SettingError(f"--training-products: {e}") from None
        if dtype is None:
            return None
        problem = self._why_not_low_precision()
        if problem:
            raise SettingError(f"--training-products {name}: {problem}; train with float32 products")
        return dtype

    def _why_not_low_precision(self) -> str | None:
        from models.fast import native

        if self.device != "cpu":
            return f"it applies to DRAW's CPU sequence path, not {self.device}"
        if native.library() is None:
            return "it needs the native CPU loops, which did not build here (see the warning above)"
        per_step = [j for j in self.suite.jobs if j.kind == "draw" and j.model.initial_state != "zero"]
        if per_step:
            return (f"DRAW with initial_state {per_step[0].model.initial_state!r} trains on the per-step path, "
                    "which has no such products")
        return None

    # ------------------------------------------------------------ record bookkeeping
    def config(self) -> dict:
        o = self.opts
        return {"suite": suites.as_record(self.suite), "options": {k: v for k, v in asdict(o).items()},
                "dry_run": o.dry_run, "device": self.device}

    def open_record(self) -> tuple[dict, Path]:
        """The record this sitting writes and its path: a new one, or with --resume the one it continues."""
        o = self.opts
        if o.resume:
            return self._reopen(self._sweep_path(Path(o.out)) if o.out else self._latest_unfinished())
        seeds = sorted({u.seed for u in self.units if u.job.kind != "throughput"}) or [0]
        record = records.new_record(self.suite.name, self.config(), seeds, self.machine, self.argv)
        self.sitting = resume.Sitting(record, self.machine, training_products=o.training_products)
        if o.out:
            path = Path(o.out)
        elif o.dry_run:
            path = DRY_RUNS / records.default_path(record).name
        else:
            path = records.default_path(record, records.records_dir(o.reference))
        path = self._sweep_path(path)
        if not o.dry_run:  # a dry run's checkpoints go to a place of their own (checkpoint_path)
            self._check_no_checkpoint_in_the_way(path)
        return record, path

    def _reopen(self, path: Path) -> tuple[dict, Path]:
        """The record at ``path``, checked to be one this sitting can continue and stamped for it."""
        o = self.opts
        record = records.read(path)
        self._check_same_selection(path, record)
        added = self._check_recipe(path, record)
        pending = self._pending(record)
        self._check_something_to_do(path, record, pending)
        if o.checkpoint_dir is None:  # where the record's checkpoints were written
            o.checkpoint_dir = record["config"].get("options", {}).get("checkpoint_dir")
        else:  # moved there: later resumes look there too
            record["config"].setdefault("options", {})["checkpoint_dir"] = o.checkpoint_dir
        self._check_no_shortening(path, pending)
        record["status"] = "incomplete"
        trained = {u.id: u.job for u in self.units if is_trained(u.job)}
        self.stamp_budgets = lambda rec: resume.stamp_budgets(
            rec, lambda u: resume.budget(trained[u]) if u in trained else None)
        self.stamp_budgets(record)
        record["config"]["suite"] = suites.as_record(self.suite)  # the budget applied from now on
        record.setdefault("resumed_at", []).append(records.utc_now())
        record["machine_resumed"] = self.machine
        self._load_artifacts(path)
        self.log(f"resuming {path}" + (f"; the suite gained {added} job(s) since, whose units run after the "
                                       "record's" if added else ""))
        self.sitting = resume.Sitting(record, self.machine, training_products=o.training_products)
        return record, path

    def _check_same_selection(self, path: Path, record: dict) -> None:
        """The suite and the --jobs the record was made with."""
        if record["suite"] != self.suite.name:
            raise ResumeError(f"{path} is a record of suite {record['suite']!r}, not {self.suite.name!r}; "
                              f"resume with --suite {record['suite']}")
        made_with = record["config"].get("options", {}).get("jobs")
        if made_with is not None and list(made_with) != list(self.opts.jobs or ()):
            raise ResumeError(f"{path} was made with --jobs {','.join(map(str, made_with))} (only those jobs of "
                              f"suite {self.suite.name}); resume it with the same --jobs")

    def _check_recipe(self, path: Path, record: dict) -> int:
        """The recipe of every job the record has begun is unchanged (bench/resume.py); a job it has not
        begun takes the suite's settings, noted in the record. Returns how many jobs the suite gained."""
        recorded_jobs = record["config"]["suite"]["jobs"]
        unstarted = self._unstarted_jobs(record)
        try:
            added = resume.check_recipe(recorded_jobs, self.suite.jobs, unstarted)
        except resume.RecipeChanged as e:
            raise resume.RecipeChanged(f"cannot resume {path}: {e}") from None
        for i in sorted(unstarted & set(range(len(recorded_jobs)))):
            changes = resume.recipe_changes(recorded_jobs[i], self.suite.jobs[i])
            if not changes:
                continue
            self.log(f"job {i} has no unit in the record yet: it takes the suite's settings ({'; '.join(changes)})")
            record.setdefault("recipe_renewed", []).append({"at": records.utc_now(), "job": i, "changes": changes})
        return added

    def _check_something_to_do(self, path: Path, record: dict, pending: list[Unit]) -> None:
        """A unit left to train, and one that --units selects."""
        closed = closing.closed(record)
        if not pending:
            shut = f"; {len(closed)} unit(s) closed (bench close --reopen)" if closed else ""
            raise ResumeError(f"{path} is complete; nothing to resume{shut} (give a larger --epochs or "
                              "--time-budget to extend it, or start a new run without --resume)")
        if not any(self._mine(u.id) for u in pending):
            shut = [u for u in closed if self._mine(u)]
            raise ResumeError(f"{path}: no unfinished unit matches --units {' '.join(self.opts.units)}; its unfinished "
                              f"units are {', '.join(u.id for u in pending)}"
                              + (f"; closed (bench close --reopen): {', '.join(shut)}" if shut else ""))

    def _check_no_checkpoint_in_the_way(self, path: Path) -> None:
        """A new run writes its checkpoints under --checkpoint-dir/<record name>/: refuse one that would
        write over another run's there (a record of the same name elsewhere, or one since removed)."""
        ours = [self.checkpoint_path(path, u) for u in self.units if is_trained(u.job) and self._mine(u.id)]
        taken = [c.name for c in ours if c.exists()]
        if taken:
            raise SettingError(f"{ours[0].parent} already holds checkpoints of another run ({', '.join(taken)}), "
                               "which this run would write over: give this run another record name (--out) or "
                               "--checkpoint-dir, or continue that run with --resume --out ITS_RECORD")

    def _unstarted_jobs(self, record: dict) -> set[int]:
        """Indices of the suite's jobs none of whose units is in the record (begun, finished or failed).
        A job's units are counted over every seed the record, the suite or --seeds names, whatever this
        sitting trains, so a job is never taken for unstarted because --seeds left its units out."""
        begun = set(record.get("jobs", {})) | set(record.get("curves", {}))
        every_seed = tuple(sorted({*record.get("seeds", ()), *self.suite.seeds, *(self.opts.seeds or ())}))
        candidates = units(self.suite, None) + units(self.suite, every_seed)
        return {i for i, job in enumerate(self.suite.jobs)
                if not any(u.id in begun for u in candidates if u.job is job)}

    def _finished(self, record: dict, unit: Unit) -> bool:
        """Complete in the record under the budget given now or a larger one (a larger one given now
        extends the unit; a smaller one leaves it as it is)."""
        if unit.id in closing.closed(record):  # bench close: not to be trained here
            return True
        done = record["jobs"].get(unit.id, {})
        if done.get("status") != "complete":
            return False
        return not is_trained(unit.job) or \
            resume.covers(resume.finished_budget(done, resume.budget(unit.job)), resume.budget(unit.job))

    def _check_no_shortening(self, path: Path, pending: list[Unit]) -> None:
        """Refuse, before anything is trained, a sitting whose budget would end a unit past the point where
        the schedule it was being trained to parts from this sitting's (an extension in progress, say):
        see training_loop.cannot_shorten. One that has not got that far may go on under the smaller one."""
        from bench import checkpoints
        from bench.training_loop import cannot_shorten

        refused = []
        for u in pending:
            ckpt = self.checkpoint_path(path, u)
            if not is_trained(u.job) or not self._mine(u.id) or not ckpt.is_file() or not u.job.epochs:
                continue
            try:
                why = cannot_shorten(checkpoints.load(ckpt), u.job.epochs)
            except checkpoints.CheckpointError:
                continue  # the training loop names what is wrong with it
            if why:
                refused.append(f"{u.id} has {why} --units {u.id}")
        if refused:
            raise ResumeError(f"{path}: this sitting's budget would end units before their own: {'; '.join(refused)}"
                              " (a sitting for the other units names them with --units)")

    def _pending(self, record: dict) -> list[Unit]:
        return [u for u in self.units if not self._finished(record, u)]

    def _sweep_path(self, path: Path) -> Path:
        return sweep_record_path(path, self.opts.sweep_rank, self.opts.sweep_world)

    def _latest_unfinished(self) -> Path:
        o = self.opts
        found = latest_unfinished(self.suite.name, o.reference, self.machine["id"], (o.sweep_rank, o.sweep_world))
        if found is None:
            folder = records.records_dir(o.reference) / self.machine["id"]
            raise ResumeError(f"no unfinished record of suite {self.suite.name!r} under {folder}; "
                              "pass the record to resume with --out PATH")
        return found

    def _artifact_path(self, path: Path) -> Path:
        return path.with_suffix(".npz")

    def _load_artifacts(self, path: Path) -> None:
        a = self._artifact_path(path)
        if a.exists():
            try:
                with np.load(a) as z:
                    self.artifacts = {k: z[k] for k in z.files}
            except Exception as e:  # noqa: BLE001 - truncated, corrupt or not an npz
                raise ResumeError(f"{a}: damaged artifacts file ({type(e).__name__}); move it aside to resume "
                                  "without the finished units' samples and glimpse paths") from None

    def _mine(self, unit_id: str) -> bool:
        """Whether this sitting trains the unit ``unit_id`` (--units; every unit without it)."""
        return self.opts.units is None or any(fnmatch.fnmatchcase(unit_id, p) for p in self.opts.units)

    def _ours(self, unit_id: str) -> bool:
        """Whether this sitting writes the unit's entry: one it trains, not one it found complete and
        skipped (another sitting may be extending that one with --units: its entry is taken from the disk)."""
        return self._mine(unit_id) and unit_id not in self.skipped

    def save(self, record: dict, path: Path, settle=None) -> None:
        """Write the record (and its artifacts). A sitting on some units (--units) first takes in what
        other sittings on the same file wrote for the other units, under a lock: sittings with disjoint
        --units can train one record side by side (bench/resume.py: merge_other_sittings). ``settle``,
        the last write's, sets the record's status from what it holds then, under the same lock, and
        the index follows: of two sittings that end together, the later always sees the other's units."""
        if self.opts.rank != 0:  # rank 0 writes
            if settle is not None:
                settle(record)
            return
        if self.sitting is not None:
            self.sitting.update()
        from datasets.fileio import file_lock

        with file_lock(records.lock_path(path)):
            if (self.opts.units is not None or self.skipped) and path.exists():
                resume.merge_other_sittings(record, records.read(path), self._ours,
                                            self.sitting.entry if self.sitting is not None else None)
                self._merge_artifacts(path)
                if self.stamp_budgets is not None:
                    self.stamp_budgets(record)
            if settle is not None:
                settle(record)
            if self.artifacts:
                from datasets.fileio import atomic_write_bytes

                buf = io.BytesIO()
                np.savez_compressed(buf, **self.artifacts)
                atomic_write_bytes(self._artifact_path(path), buf.getvalue())
                os.chmod(self._artifact_path(path), 0o644)
                record["artifacts"] = self._artifact_path(path).name
            records.write(record, path)
            if settle is not None and not self.opts.dry_run:
                records.update_index(path, record)

    def _merge_artifacts(self, path: Path) -> None:
        """The other sittings' units' arrays (keys "<unit>/...") as they are on disk now."""
        a = self._artifact_path(path)
        if not a.exists():
            return
        with np.load(a) as z:
            theirs = {k: z[k] for k in z.files if not self._ours(k.split("/", 1)[0])}
        self.artifacts = {**{k: v for k, v in self.artifacts.items() if self._ours(k.split("/", 1)[0])}, **theirs}

    def checkpoint_path(self, path: Path, unit: Unit) -> Path:
        """Where ``unit``'s checkpoint goes. A dry run's (one batch) go under the dry-run folder whatever
        --checkpoint-dir says: they never mix with, or write over, a run's."""
        if self.opts.dry_run:
            return DRY_RUNS / "checkpoints" / path.stem / f"{unit.id}.pt"
        root = Path(self.opts.checkpoint_dir) if self.opts.checkpoint_dir else CHECKPOINTS
        return root / path.stem / f"{unit.id}.pt"

    # ------------------------------------------------------------ running
    def run(self) -> tuple[dict, Path]:
        record, path = self.open_record()
        from datasets import mnist

        mnist.fetch(self.opts.data_dir, log=self.log)
        if not self.opts.out and not self.opts.resume and self.opts.rank == 0:
            path = records.claim(record, path)  # a default name: another run may have started in the same second
        from bench import distributed

        path = Path(distributed.broadcast_object(str(path)))  # DDP: rank 0's record and checkpoint paths
        self._announce(path)
        self.skipped = {u.id for u in self.units if self._finished(record, u)}
        self.save(record, path)
        waiting = []  # units of this suite that other sittings train (not in --units)
        try:
            for i, unit in enumerate(self.units):
                head = f"[{i + 1}/{len(self.units)}] {unit.id}"
                skip = self._why_skipped(record, unit)
                if skip:
                    self.log(f"{head}: {skip}")
                    if skip == ANOTHER_SITTINGS:
                        waiting.append(unit.id)
                    continue
                self._train_unit(head, unit, record, path)
        except KeyboardInterrupt as e:
            self._stop(record, path, "incomplete", f"interrupted ({str(e) or 'Ctrl-C'})")
            raise
        except BaseException as e:
            self._stop(record, path, "failed", f"{type(e).__name__}: {e}")
            raise
        left = self._close_sitting(record, path, waiting)
        if left:
            self.log(f"{len(left)} unit(s) not in --units wait for another sitting: {', '.join(left)}")
        return record, path

    def _announce(self, path: Path) -> None:
        commit = self.sitting.entry["commit"]  # this sitting's: a resumed record began at another
        self.log(f"suite {self.suite.name}{' (dry run)' if self.opts.dry_run else ''}: {len(self.units)} units on "
                 f"{self.device} ({self.machine['device_name']}{records.cpu_label(self.machine)}, "
                 f"{self.machine['threads']} threads); "
                 f"commit {commit['short']}{' (dirty)' if commit['dirty'] else ''}; record {path}")
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if self.device == "cpu" and not self.opts.threads and load > self.machine["cores"]:
            self.log(f"note: this CPU is busy (load {load:.1f} on {self.machine['cores']} cores); with other work "
                     "running, --threads 1 is often several times faster than the default")

    def _why_skipped(self, record: dict, unit: Unit) -> str | None:
        """Why this sitting does not train ``unit`` (closed, complete, or another sitting's), or None."""
        if unit.id in closing.closed(record):
            return f"closed ({closing.closed(record)[unit.id]['reason']}), skipped"
        if unit.id in self.skipped:
            done = resume.finished_budget(record["jobs"][unit.id], resume.budget(unit.job))
            larger = is_trained(unit.job) and done != resume.budget(unit.job)
            return ("complete in the record"
                    + (f" (under a larger budget, {resume.describe_budget(done)})" if larger else "") + ", skipped")
        if not self._mine(unit.id):
            return ANOTHER_SITTINGS
        return None

    def _train_unit(self, head: str, unit: Unit, record: dict, path: Path) -> None:
        """Train and score ``unit``, its figures replacing any earlier ones in the record, which is saved."""
        extending = record["jobs"].get(unit.id, {}).get("status") == "complete"
        self.log(head + (" (extending its budget)" if extending else ""))
        if extending:  # kept until the extension ends, across sittings: then moved under "earlier"
            record["jobs"][unit.id]["extending_from"] = earlier_run(record, unit.id)
        t0 = time.time()
        record["jobs"][unit.id] = {**record["jobs"].get(unit.id, {}), "status": "running",
                                   "kind": unit.job.kind, "seed": unit.seed,
                                   "job": suites.as_record(unit.job)}
        metrics, info = self.run_unit(unit, record, path)
        if is_trained(unit.job):
            info["budget"] = resume.budget(unit.job)
        if "extending_from" in record["jobs"][unit.id]:  # the run it extended stays, under its own budget
            finished_run = record["jobs"][unit.id].pop("extending_from")
            info["earlier"] = record["jobs"][unit.id].get("earlier", []) + [finished_run]
        record["metrics"] = [m for m in record["metrics"] if m["params"].get("job") != unit.id]
        for m in metrics:
            m["params"]["job"] = unit.id
        record["metrics"] += metrics
        record["jobs"][unit.id] = {**record["jobs"][unit.id], **info, "status": "complete",
                                   "wall_s": round(time.time() - t0, 1)}
        self.save(record, path)
        self._keep_for_evaluation(unit, path)

    def _close_sitting(self, record: dict, path: Path, waiting: list[str]) -> list[str]:
        """Save the record at the sitting's end: complete, with its targets checked, or incomplete while
        units of other sittings are left. Returns those units."""
        left = []

        def settle(rec: dict) -> None:  # under the record's lock, after taking in the other sittings' units
            from bench import status

            # units of other sittings: not in --units, or complete when this one began and extended since,
            # or units of the record this sitting's selection left out (a resume with fewer --seeds)
            ours = {u.id for u in self.units}
            planned = status.planned_units(rec)
            if planned is not None and self.opts.sweep_world > 1:  # this rank's record holds its share only
                from bench import distributed

                planned = distributed.assign(planned, self.opts.sweep_rank, self.opts.sweep_world)
            outside = [u for u in (list(rec["jobs"]) if planned is None else planned) if u not in ours]
            left[:] = [u for u in dict.fromkeys(waiting + sorted(self.skipped) + outside)
                       if rec["jobs"].get(u, {}).get("status") != "complete" and u not in closing.closed(rec)]
            rec["finished_at"] = records.utc_now()
            if left:  # the record goes on in another sitting
                rec["status"], rec["error"] = "incomplete", f"units left for another sitting (--units): {len(left)}"
            else:
                rec["status"], rec["error"] = "complete", None
                # one batch of training reaches nothing: a dry run checks that everything runs, not the targets
                rec["targets"] = [] if self.opts.dry_run else check_targets(self.suite, rec["metrics"])
            if self.sitting is not None:
                self.sitting.update(rec["status"])

        self.save(record, path, settle=settle)
        return left

    def _keep_for_evaluation(self, unit: Unit, path: Path) -> None:
        """Once a unit's test figures are in its record, its checkpoint becomes the evaluation-only export
        where a longer budget would continue from the state kept at the start of its decay instead."""
        from bench import checkpoints

        ckpt = self.checkpoint_path(path, unit)
        if self.opts.rank != 0 or not is_trained(unit.job) or not ckpt.is_file():
            return
        full = ckpt.stat().st_size
        if checkpoints.keep_for_evaluation(ckpt):
            self.log(f"  {unit.id}: kept as an evaluation-only export ({ckpt.stat().st_size / 1e6:.1f} MB of "
                     f"{full / 1e6:.1f}); a longer budget goes on from {checkpoints.stable_path(ckpt).name}")

    def _stop(self, record: dict, path: Path, status: str, why: str) -> None:
        def settle(rec: dict) -> None:
            for unit_id, j in rec["jobs"].items():
                if j.get("status") == "running" and self._ours(unit_id):  # not another sitting's units
                    j["status"] = status
            rec["status"], rec["error"], rec["finished_at"] = status, why, records.utc_now()
            if self.sitting is not None:
                self.sitting.update(status)

        self.save(record, path, settle=settle)


# ---------------------------------------------------------------- hard attention (RAM) and plug-in glimpse models

TRAINED_KINDS = ("classifier", "draw", "ram", "plugin")  # the models the training loop trains and checkpoints


def sweep_record_path(path: Path, rank: int, world: int) -> Path:
    """--sweep-parallel: each rank's own record, NAME.rankR-of-W.json (``path`` itself for one rank)."""
    return path.with_name(f"{path.stem}.rank{rank}-of-{world}{path.suffix}") if world > 1 else path


def latest_unfinished(suite: str, reference: bool, machine_id: str, sweep: tuple[int, int] = (0, 1)) -> Path | None:
    """The record that `bench run --resume` without --out continues: the latest started of ``suite``'s
    unfinished records made on this machine (by this rank of a --sweep-parallel run); None if none."""
    folder = records.records_dir(reference) / machine_id
    found = []
    for p in records.find(folder) if folder.is_dir() else []:
        r = records.read(p)
        opts = r["config"].get("options", {})
        if r["suite"] == suite and r["status"] != "complete" and \
                (opts.get("sweep_rank", 0), opts.get("sweep_world", 1)) == sweep:
            found.append((r["started_at"], p))
    return max(found)[1] if found else None


def is_trained(job) -> bool:
    """Whether the training loop trains and checkpoints ``job``'s units, whose budget may then grow: the
    glimpse models, DRAW and the conv-net baseline."""
    return job.kind in TRAINED_KINDS or (job.kind == "baseline" and job.model == "conv")


def glimpse_model_units(job, run_seeds: tuple[int, ...], seeds: tuple[int, ...] | None) -> list[Unit]:
    """RAM: one model per glimpse count. A plug-in: the same, or with the per-step protocol one model at
    max(glimpses) scored at every count."""
    from bench.plugins import short_name

    name = "ram" if job.kind == "ram" else f"plugin-{short_name(job.model)}"
    if getattr(job, "per_step_loss", False):
        t = max(job.glimpses)
        return [Unit(f"{name}-{job.dataset}-T{t}-perstep{_tag(job)}-s{s}", job, s, t, tuple(job.glimpses))
                for s in run_seeds]
    by_t = dict(job.seeds_by_glimpses)
    return [Unit(f"{name}-{job.dataset}-T{t}{_tag(job)}-s{s}", job, s, t, (t,))
            for t in job.glimpses for s in (run_seeds if seeds is not None else by_t.get(t, run_seeds))]


# What of a unit's finished run an extension keeps (the rest, its status and live progress, moves on)
_EARLIER_FIELDS = ("budget", "job", "epochs", "steps", "images_seen", "train_images_seen", "train_time_s", "train_cost",
                   "stopped_by", "best_epoch", "rollbacks", "lr_scale", "training_products", "plateau", "convergence",
                   "eval_time_s")


def earlier_run(record: dict, unit_id: str) -> dict:
    """A finished unit's run as the record holds it, before an extension replaces it: its budget, job,
    training (epochs, images, time, rollbacks, ...), metrics and curve. `bench tables` shows it in the
    row of its budget, so a longer budget never drops a seed's figure from the shorter budget's row."""
    entry = record["jobs"][unit_id]
    return {"info": {k: entry[k] for k in _EARLIER_FIELDS if k in entry},
            "metrics": [m for m in record["metrics"] if m["params"].get("job") == unit_id],
            "curve": record["curves"].get(unit_id, [])}


def run(opts: RunOptions, log: Callable[[str], None] = print, argv: list[str] | None = None) -> tuple[dict, Path]:
    os.environ.setdefault("OMP_NUM_THREADS", str(opts.threads or os.cpu_count() or 1))
    from models.fast import products

    runner = Runner(opts, log, argv)
    with products.training(runner.products):
        return runner.run()
