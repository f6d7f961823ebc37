"""The named suites: small declarative configs that say what runs, what it should reach and how long
it takes. `python -m bench run --list` prints them.

A suite is a tuple of jobs (classifier, DRAW, RAM, baseline, throughput) plus targets that the run
checks at the end. A training job is the data and protocol (dataset, glimpse counts, seeds,
evaluation sizes), the budget (epochs, time), ``model``: the model's own config (models/), and
``optim``: one `Optim` (bench/optim.py; batch, lr, betas, clipping, schedule). Time budgets are
training time per model; the totals in `expected` include data generation, evaluation and
throughput.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, field, fields, replace

from bench.optim import Optim
from models.classifier import ClassifierConfig
from models.draw import DRAWConfig
from models.ram import RamConfig

# Model-config fields that a job does not set: the task fills them in from the dataset (image size,
# channels) and from the unit (its glimpse count, the loss protocol), so one job's model config
# serves every glimpse count and every variant of the same architecture.
FROM_DATA = ("height", "width", "channels", "glimpses", "per_step_loss")


@dataclass(frozen=True)
class ClassifierJob:
    """The glimpse classifier ``model`` trained with ``optim`` on ``dataset``. ``per_step_loss``: one
    model at max(glimpses) trained with the loss at every step, evaluated at each T ("per-step"
    protocol); otherwise one model per T ("separate")."""

    dataset: str = "cluttered60"
    glimpses: tuple[int, ...] = (1, 2, 4, 8)
    per_step_loss: bool = True
    model: ClassifierConfig = field(default_factory=ClassifierConfig)  # read_n, hidden, window_init, ...
    optim: Optim = Optim()
    epochs: int = 100
    time_budget_min: float | None = None  # training time per model
    train_limit: int | None = None  # train images per epoch; None = the 50,000 of the split
    valid_limit: int | None = None  # valid images scored each epoch; None = all 10,000
    test_limit: int | None = None  # None = the whole fixed test split
    seeds_by_glimpses: tuple[tuple[int, tuple[int, ...]], ...] = ()  # ((T, seeds), ...) overrides
    seeds: tuple[int, ...] | None = None  # None = the suite's seeds; --seeds overrides both
    variant: str = ""  # a recipe study's label for this job, part of its unit ids (bench/recipe_study.py)
    kind: str = "classifier"


@dataclass(frozen=True)
class DrawJob:
    """DRAW ``model`` trained with ``optim`` on ``dataset``, scored by the ELBO and the IWAE bound."""

    dataset: str = "binarized"
    model: DRAWConfig = field(default_factory=DRAWConfig)  # steps, read_n, write_n, z_size, attention, ...
    optim: Optim = Optim()
    epochs: int = 100
    time_budget_min: float | None = None
    train_limit: int | None = None
    valid_limit: int | None = 2000
    test_limit: int | None = None  # ELBO on the whole fixed binarized test split
    iwae_k: int = 1000
    iwae_limit: int | None = 1000  # test images for the importance-weighted bound
    samples: int = 8  # generated images kept (every step) for the report
    variant: str = ""  # a recipe study's label for this job, part of its unit ids (bench/recipe_study.py)
    kind: str = "draw"


@dataclass(frozen=True)
class BaselineJob:
    model: str = "conv"  # "conv" (2-layer conv net) or "sklearn"
    dataset: str = "cluttered100"
    epochs: int = 20
    time_budget_min: float | None = None
    train_limit: int | None = None
    seeds: tuple[int, ...] | None = None  # None = the suite's seeds; --seeds overrides both
    kind: str = "baseline"


@dataclass(frozen=True)
class ThroughputJob:
    model: str = "classifier"  # "classifier" or "draw"
    height: int = 100
    width: int = 100
    glimpses: int = 8  # classifier
    steps: int = 64  # DRAW
    hidden: int = 256
    z_size: int = 100
    attention: bool = True  # DRAW
    batch_sizes: tuple[int, ...] = (64,)
    repeats: int = 7
    min_time_s: float = 0.3  # each repeat runs at least this long
    kind: str = "throughput"


@dataclass(frozen=True)
class Target:
    """What the suite should reach: metric ``op`` value, on the mean over seeds; ``falling``
    checks that the metric decreases with the glimpse count."""

    metric: str
    op: str  # "<", "<=", ">", "falling"
    value: float | None = None
    where: tuple[tuple[str, object], ...] = ()  # params that select the metric rows
    note: str = ""

    def describe(self) -> str:
        sel = ", ".join(f"{k}={v}" for k, v in self.where)
        sel = f"[{sel}]" if sel else ""
        if self.op == "falling":
            return f"{self.metric}{sel} falls with glimpses"
        return f"{self.metric}{sel} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    expected: str  # how long it takes, on what
    jobs: tuple
    targets: tuple[Target, ...] = ()
    seeds: tuple[int, ...] = (0,)
    notes: tuple[str, ...] = field(default=())


QUICK = Suite(
    name="quick",
    description="Smoke-sized benchmark of everything: classifier on cluttered60 at T = 1, 2, 4, 8 (one "
                "per-step-loss model), a small DRAW (16 steps, no attention) on binarized MNIST with ELBO and "
                "IWAE bounds, throughput of the classifier and of a 16-step DRAW with attention.",
    expected="<= 10 min on a 2-core CPU",
    jobs=(
        # lr 2e-3 sometimes stays on the ~2.2-loss plateau (not yet looking at the digit) for a whole
        # epoch, or falls back onto it; 1e-3 left it within 500 batches for every seed tried (0, 2).
        ClassifierJob(dataset="cluttered60", glimpses=(1, 2, 4, 8), per_step_loss=True, optim=Optim(lr=1e-3),
                      epochs=50, time_budget_min=3.5, valid_limit=1000),
        # Without attention: with a 2x2 read, DRAW sits on the ~200-nat "mean digit" plateau for its
        # first tens of thousands of images (measured), longer than this suite's budget.
        DrawJob(dataset="binarized",
                model=DRAWConfig(steps=16, enc_hidden=128, dec_hidden=128, z_size=20, attention=False),
                optim=Optim(lr=3e-3), epochs=50, time_budget_min=2.5, valid_limit=1000, iwae_k=50, iwae_limit=500),
        ThroughputJob(model="classifier", height=60, width=60, glimpses=8, batch_sizes=(64,), repeats=5,
                      min_time_s=0.3),
        ThroughputJob(model="draw", height=28, width=28, steps=16, hidden=128, z_size=20, batch_sizes=(64,),
                      repeats=5, min_time_s=0.3, attention=True),
    ),
    targets=(
        Target("test_error", "<", 0.5, (("glimpses", 8),), "chance is 0.9"),
        Target("test_error", "falling", None, (), "more glimpses, lower error"),
        Target("nll_elbo", "<", 160.0, (), "an untrained model scores 543 nats"),
        Target("nll_iwae", "<", 160.0, ()),
    ),
)

# Warm-up, stable, decay (bench/schedule.py): constant 1e-3 flattened near 8% by epoch 22; a cosine
# decay over 60 epochs reached 4.5% (3,000 test images, T = 8). The decay comes last, so a run
# extended to more epochs restarts its decay from the stable phase.
TABLE1_OPTIM = Optim(lr=1e-3, schedule="wsd", warmup_epochs=1.0, decay_epochs=40.0)

TABLE1 = Suite(
    name="table1",
    description="Table 1: the glimpse classifier on 100x100 cluttered MNIST, T = 1, 2, 4, 8 trained separately "
                "(3 seeds at T = 4, 8), the per-step-loss model, the 2-layer conv net and the sklearn baseline.",
    expected="days on a 2-core CPU; on a GPU each model trains about as fast as on one CPU core "
             "(batch 64), so run its models side by side (scripts/parallel_runs.sh)",
    jobs=(
        ClassifierJob(dataset="cluttered100", glimpses=(1, 2, 4, 8), per_step_loss=False, optim=TABLE1_OPTIM,
                      epochs=100, seeds_by_glimpses=((1, (0,)), (2, (0,)), (4, (0, 1, 2)), (8, (0, 1, 2)))),
        ClassifierJob(dataset="cluttered100", glimpses=(1, 2, 3, 4, 5, 6, 7, 8), per_step_loss=True,
                      optim=TABLE1_OPTIM, epochs=100, seeds=(0,)),
        BaselineJob(model="conv", dataset="cluttered100", epochs=20, seeds=(0,)),
        BaselineJob(model="sklearn", dataset="cluttered100", train_limit=20000, seeds=(0,)),
    ),
    targets=(
        Target("test_error", "<", 0.0336, (("glimpses", 8), ("protocol", "separate")), "paper: 3.36%"),
        Target("test_error", "<", 0.0418, (("glimpses", 4), ("protocol", "separate")), "paper: 4.18%"),
        Target("test_error", "falling", None, (("protocol", "separate"),)),
    ),
    seeds=(0, 1, 2),
)

# Warm-up, stable, decay as in table1: a longer budget later restarts the decay from the stable
# phase, so 100 epochs can be extended if the bound is still falling.
TABLE2_OPTIM = Optim(lr=1e-3, schedule="wsd", warmup_epochs=1.0, decay_epochs=30.0)

TABLE2 = Suite(
    name="table2",
    description="Table 2: DRAW (64 steps, read 2x2, write 5x5, LSTM 256, z 100) with and without attention "
                "on binarized MNIST (fresh binarization per epoch); ELBO and IWAE (K = 1000) on the test split.",
    expected="many hours on a 2-core CPU (resumable): 100 epochs took 8.2 core-hours with attention on one "
             "AMD EPYC core (bf16 products); on an NVIDIA H200, about 430 images/s without attention (batch 64)",
    jobs=(
        # K = 1000 costs 1000 DRAW passes per image (about 3 s of one CPU core each, so about an hour
        # for the 1,000 test images of the importance bound); the ELBO covers all 10,000.
        DrawJob(dataset="binarized", model=DRAWConfig(attention=True), optim=TABLE2_OPTIM, epochs=100,
                iwae_k=1000, iwae_limit=1000),
        DrawJob(dataset="binarized", model=DRAWConfig(attention=False), optim=TABLE2_OPTIM, epochs=100,
                iwae_k=1000, iwae_limit=1000),
    ),
    targets=(
        # the paper reports the variational bound; the importance-weighted bound is recorded beside it
        Target("nll_elbo", "<=", 80.97, (("attention", True),), "paper: <= 80.97"),
        Target("nll_elbo", "<=", 87.40, (("attention", False),), "paper: <= 87.40"),
    ),
)

TWODIGIT = Suite(
    name="twodigit",
    description="DRAW with attention on two-digit 60x60 MNIST; samples and drawing sequences for the report.",
    expected="about 13 core-hours for 100 epochs (about 108 images/s on one AMD EPYC Zen 4 core with bf16 "
             "products; resumable); not measured on a GPU",
    jobs=(
        # table2's schedule, so a long run can be extended past 100 epochs
        DrawJob(dataset="twodigit60", model=DRAWConfig(steps=64, read_n=12, write_n=12), optim=TABLE2_OPTIM,
                epochs=100, iwae_k=100, iwae_limit=100, samples=16),
    ),
    targets=(),
)

THROUGHPUT = Suite(
    name="throughput",
    description="Training and evaluation images/s of the paper-sized classifier (100x100, T = 8) and DRAW "
                "(64 steps) at several batch sizes, median and IQR over repeats, fraction of matmul peak.",
    expected="about 2-3 min on a 2-core CPU",
    jobs=(
        ThroughputJob(model="classifier", height=100, width=100, glimpses=8, batch_sizes=(16, 64, 256)),
        ThroughputJob(model="draw", height=28, width=28, steps=64, batch_sizes=(16, 64, 256)),
    ),
)


# ---------------------------------------------------------------- hard attention (RAM) and plug-in glimpse models

@dataclass(frozen=True)
class RamJob:
    """RAM ``model`` (models/ram.py) trained with ``optim``, one model per glimpse count ("separate"
    protocol). Evaluation takes the location policy's mean (no sampling); the record says so
    (``location: mean``)."""

    dataset: str = "cluttered100"
    glimpses: tuple[int, ...] = (4, 8)
    model: RamConfig = field(default_factory=RamConfig)  # patch, scales, layer sizes, location_std
    optim: Optim = Optim()
    epochs: int = 100
    time_budget_min: float | None = None
    train_limit: int | None = None
    valid_limit: int | None = None
    test_limit: int | None = None
    seeds_by_glimpses: tuple[tuple[int, tuple[int, ...]], ...] = ()
    seeds: tuple[int, ...] | None = None
    variant: str = ""  # a recipe study's label for this job, part of its unit ids (bench/recipe_study.py)
    kind: str = "ram"


@dataclass(frozen=True)
class PluginJob:
    """A user's glimpse model (bench/plugins.py, docs/plugins.md) in place of a suite's glimpse jobs:
    same data, glimpse counts, protocol, seeds, optimiser and budget."""

    model: str = ""  # module.path:build or a glimpse.models entry-point name
    dataset: str = "cluttered60"
    glimpses: tuple[int, ...] = (8,)
    per_step_loss: bool = False
    optim: Optim = Optim()
    epochs: int = 100
    time_budget_min: float | None = None
    train_limit: int | None = None
    valid_limit: int | None = None
    test_limit: int | None = None
    seeds_by_glimpses: tuple[tuple[int, tuple[int, ...]], ...] = ()
    seeds: tuple[int, ...] | None = None
    kind: str = "plugin"


GLIMPSE_KINDS = ("classifier", "ram", "plugin")

# RAM's recipe in the suites (docs/models.md; results/studies/ram-*.json; T = 8 on 100x100, 10 epochs on
# the same images, one seed). A share of REINFORCE_CORE_SCALE of the REINFORCE gradient reaches the core
# (the paper: all of it): valid error 31.2% with 0.3, 29.7% with 0.5, 39.3% with 0.1, 49.1% with 0.03,
# 51.5% with none and 78.5% with all of it; 0.3 keeps a margin from that stall. Without it the core keeps
# little of where the digit is (a linear readout of its state: R^2 0.32, against 0.72 with 0.3), so the
# policy that reads the core cannot find the digit.
# Location std 0.3 (0.2: 50.7%, 0.1: 61.6%, with none into the core). The classifier's schedule, so a
# long run can be extended (not studied for RAM).
REINFORCE_CORE_SCALE = 0.3
RAM_OPTIM = TABLE1_OPTIM


def ram_model(**settings) -> RamConfig:
    return RamConfig(patch=12, reinforce_into_core=True, reinforce_core_scale=REINFORCE_CORE_SCALE, location_std=0.3,
                     **settings)


# Table 1's RAM rows: 12 x 12 patches at 4 scales, T = 4 and 8, three seeds each. The soft-attention
# targets now select the classifier's rows, so RAM's never count towards them.
TABLE1 = replace(
    TABLE1,
    description=TABLE1.description + " RAM (hard attention, 12x12, 4 scales) at T = 4, 8 (3 seeds).",
    jobs=TABLE1.jobs + (RamJob(dataset="cluttered100", glimpses=(4, 8), model=ram_model(scales=4), optim=RAM_OPTIM,
                               seeds_by_glimpses=((4, (0, 1, 2)), (8, (0, 1, 2)))),),
    targets=tuple(replace(t, where=t.where + (("model", "classifier"),)) for t in TABLE1.targets) + (
        Target("test_error", "<", 0.0811, (("glimpses", 8), ("model", "ram")), "RAM paper: 8.11%"),
        Target("test_error", "<", 0.0941, (("glimpses", 4), ("model", "ram")), "RAM paper: 9.41%"),
    ),
)

RAM60 = Suite(
    name="ram60",
    description="RAM (hard attention) on 60x60 cluttered MNIST at T = 4, 6, 8, one model per T, beside the "
                "RAM paper's 4.96 / 4.08 / 4.04%; evaluated with the location policy's mean.",
    expected="0.4-0.75 core-hours per model for 100 epochs (one thread on an Intel Xeon with AMX, family 6 "
             "model 207), so the 9 models about 3 hours on 2 cores; on an H200 about 1,450 images/s per model "
             "at batch 64 (an hour per model), models side by side",
    jobs=(
        # 3 scales: the largest patch (48 px) covers most of the 60 px canvas; ANCHORS.md does not give
        # the RAM paper's retina for this variant.
        RamJob(dataset="cluttered60", glimpses=(4, 6, 8), model=ram_model(scales=3), optim=RAM_OPTIM),
    ),
    targets=(
        Target("test_error", "<", 0.0496, (("glimpses", 4), ("model", "ram")), "RAM paper: 4.96%"),
        Target("test_error", "<", 0.0408, (("glimpses", 6), ("model", "ram")), "RAM paper: 4.08%"),
        Target("test_error", "<", 0.0404, (("glimpses", 8), ("model", "ram")), "RAM paper: 4.04%"),
        Target("test_error", "falling", None, (("model", "ram"),)),
    ),
    seeds=(0, 1, 2),
)


def with_plugin(suite: Suite, spec: str) -> Suite:
    """The suite's glimpse-classifier jobs (else its RAM jobs) run with the user's model instead, so
    that each glimpse count and seed is trained once; its other jobs (DRAW, baselines, throughput)
    are left out. Each plug-in job keeps its source's data, protocol, seeds, optimiser and budget."""
    jobs = []
    sources = [j for j in suite.jobs if j.kind == "classifier"] or [j for j in suite.jobs if j.kind == "ram"]
    carried = [f.name for f in fields(PluginJob) if f.name not in ("model", "kind")]
    for source in sources:
        job = PluginJob(model=spec, **{k: getattr(source, k) for k in carried if hasattr(source, k)})
        if job not in jobs:
            jobs.append(job)
    if not jobs:
        raise SuiteError(f"suite {suite.name!r} has no glimpse-model jobs for --model to replace; "
                         "use quick, table1 or ram60")
    # a plug-in records test errors only; the built-in models' own targets (model=...) are not its
    return replace(suite, jobs=tuple(jobs), targets=tuple(t for t in suite.targets
                                                          if t.metric == "test_error" and "model" not in dict(t.where)))


SUITES = {s.name: s for s in (QUICK, TABLE1, TABLE2, TWODIGIT, THROUGHPUT)}
SUITES[RAM60.name] = RAM60


class SuiteError(ValueError):
    pass


def get(name: str) -> Suite:
    if name not in SUITES:
        raise SuiteError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)} (see --list)")
    return SUITES[name]


def override(suite: Suite, glimpses: tuple[int, ...] | None = None, epochs: int | None = None,
             time_budget_min: float | None = None, on_relapse: str | None = None,
             job_indices: tuple[int, ...] | None = None) -> Suite:
    """The suite with command-line overrides applied to every job they concern, and with only the
    jobs ``job_indices`` names (as ``listing`` numbers them; SuiteError for one it has not).
    ``on_relapse`` is part of the recipe: a record resumed with another value is refused."""
    picked = suite.jobs
    if job_indices is not None:
        bad = [i for i in job_indices if not 0 <= i < len(suite.jobs)]
        if bad:
            raise SuiteError(f"--jobs: suite {suite.name} has no job {bad[0]}; its jobs are "
                             + "; ".join(f"{i}: {describe_job(j)}" for i, j in enumerate(suite.jobs)))
        picked = tuple(suite.jobs[i] for i in sorted(set(job_indices)))
    jobs = []
    for job in picked:
        if job.kind in GLIMPSE_KINDS and glimpses is not None:
            job = replace(job, glimpses=tuple(glimpses), seeds_by_glimpses=tuple(
                (t, s) for t, s in job.seeds_by_glimpses if t in glimpses))
        if job.kind in ("classifier", "draw", "baseline") + GLIMPSE_KINDS:
            if epochs is not None:
                job = replace(job, epochs=epochs)
            if time_budget_min is not None:
                job = replace(job, time_budget_min=time_budget_min)
        if on_relapse is not None and hasattr(job, "optim"):
            job = replace(job, optim=replace(job.optim, on_relapse=on_relapse))
        jobs.append(job)
    return replace(suite, jobs=tuple(jobs))


def for_run(name: str, *, model: str | None = None, glimpses: tuple[int, ...] | None = None,
            epochs: int | None = None, time_budget_min: float | None = None, on_relapse: str | None = None,
            jobs: tuple[int, ...] | None = None, settings: dict | None = None) -> Suite:
    """The suite that `bench run` trains from these options: the named suite, with the user's model in
    place of its glimpse models (--model), the command-line overrides and --jobs, then the --set
    deviations. The one place that says so, for the runner and for `bench status`; SuiteError names
    the option at fault."""
    suite = get(name)
    if model:
        suite = with_plugin(suite, model)
    suite = override(suite, glimpses, epochs, time_budget_min, on_relapse, jobs)
    return with_deviations(suite, settings) if settings else suite


def listing() -> str:
    lines = []
    for s in SUITES.values():
        default = " (default)" if s.name == "quick" else ""
        lines.append(f"{s.name}{default}: {s.description}")
        lines.append(f"    time: {s.expected}")
        if s.targets:
            lines.append("    targets: " + "; ".join(t.describe() + (f" ({t.note})" if t.note else "")
                                               for t in s.targets))
        lines.append("    jobs (--jobs): " + "; ".join(f"{i}: {describe_job(j)}" for i, j in enumerate(s.jobs)))
    return "\n".join(lines)


def describe_job(job) -> str:
    """A few words naming a job: its kind, model and data."""
    if job.kind == "draw":
        return f"DRAW {'with' if job.model.attention else 'without'} attention on {job.dataset}"
    if job.kind == "throughput":
        return f"throughput of the {'DRAW' if job.model == 'draw' else job.model}"
    if job.kind == "baseline":
        return f"{job.model} baseline on {job.dataset}"
    t = ",".join(map(str, job.glimpses))
    name = {"classifier": "classifier", "ram": "RAM"}.get(job.kind, f"plug-in {getattr(job, 'model', '')}")
    per_step = " (per-step loss)" if getattr(job, "per_step_loss", False) else ""
    return f"{name}{per_step} on {job.dataset}, T = {t}"


# ---------------------------------------------------------------- settings by name, and the form records keep

def as_record(obj) -> dict:
    """A suite or a job as records keep it: plain data, a job's ``model`` and ``optim`` nested, and
    its model config without the fields the task fills in from the data (``FROM_DATA``)."""
    if isinstance(obj, Suite):
        return {**asdict(obj), "jobs": [as_record(j) for j in obj.jobs]}
    out = asdict(obj)
    if isinstance(out.get("model"), dict):
        out["model"] = {k: v for k, v in out["model"].items() if k not in FROM_DATA}
    return out


def flat(job: dict) -> dict:
    """A job as a record keeps it, in one flat dict of settings: ``model`` and ``optim`` nested
    (records made since jobs hold configs) are spread into it; a flat record (made before) passes
    through. Names are the ones a user sets: lr, read_n, window_init, epochs, ..."""
    out = {}
    for key, value in job.items():
        if key in ("model", "optim") and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if not (key == "model" and k in FROM_DATA)})
        else:
            out[key] = value
    return out


def settings(job) -> dict:
    """Every setting of a job by the name a user gives it: its own fields, its model's (those not
    from the data) and its optimiser's, in one flat dict."""
    return flat(as_record(job))


def with_settings(job, **changes):
    """``job`` with settings replaced by name (see `settings`), each in the part that holds it:
    ``with_settings(job, lr=2e-3, read_n=8, epochs=20)``."""
    model = getattr(job, "model", None)
    in_model = set() if model is None or isinstance(model, str) else {f.name for f in fields(model)} - set(FROM_DATA)
    in_optim = {f.name for f in fields(Optim)} if hasattr(job, "optim") else set()
    own = set(settings(job)) - in_model - in_optim
    model_changes, optim_changes, own_changes = {}, {}, {}
    for name, value in changes.items():
        if name not in own | in_model | in_optim:
            raise SuiteError(f"a {job.kind} job has no setting {name!r}; its settings: "
                             f"{', '.join(sorted(own | in_model | in_optim))}")
        (model_changes if name in in_model else optim_changes if name in in_optim else own_changes)[name] = value
    if model_changes:
        own_changes["model"] = replace(model, **model_changes)
    if optim_changes:
        own_changes["optim"] = replace(job.optim, **optim_changes)
    return replace(job, **own_changes)


# Settings that `--set` leaves to other options or that would make another benchmark of a suite
NOT_SETTABLE = {"kind": "", "variant": "", "seeds": "--seeds", "seeds_by_glimpses": "--seeds",
                "glimpses": "--glimpses", "epochs": "--epochs", "time_budget_min": "--time-budget",
                "dataset": "another suite", "attention": "--jobs (the suite's jobs say which)",
                "per_step_loss": "--jobs (the suite's jobs say which)", "num_classes": ""}


def parse_settings(text: str, where: str = "--set") -> dict:
    """'name=value,name=value' -> {name: value}: Python literals where they parse (512, 5e-4,
    (0.5, 0.999), True), else the text; commas inside brackets stay in their value."""
    out = {}
    for item in filter(None, (i.strip() for i in _split_top_level(text))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip().isidentifier():
            raise SuiteError(f"{where}: {item!r} is not name=value (e.g. hidden=512,lr=5e-4)")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


def _split_top_level(body: str) -> list[str]:
    """Split at commas outside brackets, so that a tuple value (betas=(0.5,0.999)) stays whole."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return items


def _same_kind(value, like) -> bool:
    """Whether ``value`` can stand where the suite has ``like``: a number for a number (an int for an
    int), a flag for a flag, a sequence for a sequence, text for text; anything where it has None."""
    if like is None:
        return True
    if isinstance(like, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(like, bool)
    if isinstance(like, int):
        return isinstance(value, int)
    if isinstance(like, float):
        return isinstance(value, (int, float))
    if isinstance(like, (tuple, list)):
        return isinstance(value, (tuple, list))
    return isinstance(value, type(like))


def with_deviations(suite: Suite, changes: dict) -> Suite:
    """The suite with ``changes`` (name -> value, `bench run --set`) made in every trained job that has
    the setting: a deviation from the suite's recipe, which the record keeps and the tables name. A
    setting no job of the suite has, or one another option sets, is refused with what there is."""
    for name in changes:
        if name in NOT_SETTABLE:
            other = NOT_SETTABLE[name]
            raise SuiteError(f"--set {name}: " + (f"give it with {other}" if other else "not a setting to change"))
    trained = [j for j in suite.jobs if hasattr(j, "optim")]
    unused = set(changes)
    jobs = []
    for job in suite.jobs:
        if job in trained:
            current = settings(job)
            mine = {k: v for k, v in changes.items() if k in current}
            unused -= set(mine)
            for name, value in mine.items():
                if not _same_kind(value, current[name]):
                    raise SuiteError(f"--set {name}={value!r}: the {describe_job(job)} has {name}="
                                     f"{current[name]!r}; give a value of that kind")
            try:
                job = with_settings(job, **mine)
            except (TypeError, ValueError) as e:  # a value the model or optimiser config refuses
                raise SuiteError(f"--set on {describe_job(job)}: {e}") from None
        jobs.append(job)
    if unused and not trained:
        raise SuiteError(f"--set {', '.join(sorted(unused))}: the jobs of suite {suite.name} chosen here ("
                         f"{'; '.join(describe_job(j) for j in suite.jobs)}) take no --set settings; --set changes "
                         "the recipe of the glimpse, RAM and DRAW models")
    if unused:
        known = sorted({k for j in trained for k in settings(j)} - set(NOT_SETTABLE))
        raise SuiteError(f"--set {', '.join(sorted(unused))}: no trained job of suite {suite.name} has "
                         f"{'this setting' if len(unused) == 1 else 'these settings'}; theirs: {', '.join(known)}")
    return replace(suite, jobs=tuple(jobs))
