"""`bench status`: where each model of a long run stands, and what it still needs.

A record is rewritten when a unit starts or ends and when a sitting stops, so for a unit in training
its checkpoint (written every few minutes) is fresher: the status reads the checkpoint when there is
one and the record otherwise. Per unit: state, epochs against the budget, images seen, core-hours
(training time x the record's threads), the last and best validation figure, whether validation was
still improving (bench/convergence.py), the test figure of a finished unit, and the core-hours still
to go at the unit's rate in its latest sitting (machines differ between sittings). Per record: the
command that continues it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bench import checkpoints, closing, convergence, cost, records
from bench.schedule import Schedule
from bench.tables import unit_job


@dataclass
class UnitStatus:
    unit: str
    state: str  # "complete", "in training" (or stopped mid-way), "not started", "closed" (bench close)
    epochs: int | None  # whole epochs done
    budget_epochs: int | None
    budget_minutes: float | None  # a time budget, when the unit has one
    images_seen: int | None
    hours: dict[str, float]  # {"core-h": ..., "h on <device>": ...}: by where it trained (bench/cost.py)
    hours_unit: str  # the time to go's: "core-h", or "h on <device>" (the latest sitting's machine)
    last_valid: float | None
    best_valid: tuple[float, int] | None  # value, epoch
    metric: str | None
    verdict: dict | None
    test: str  # the finished unit's test figure(s), "" otherwise
    to_go_hours: float | None  # in ``hours_unit``; None when unknown or done
    to_go_rate: str  # whose rate the estimate takes: "its last sitting's" or "its overall"
    closed_because: str | None = None  # the reason a closed unit was closed
    evaluation_left: bool = False  # training done (its checkpoint says finished), the test evaluation not yet
    decay_from: float | None = None  # the epoch a unit in training begins its decay, while it has not reached it


def _checkpoint(path: str | None) -> dict | None:
    """The training state (or evaluation-only export) at ``path``, relative to the repository; None
    when it is not there or does not load (a file being replaced, say): the record speaks then."""
    if not path:
        return None
    try:
        return checkpoints.load(Path(path) if Path(path).is_absolute() else records.REPO / path)
    except checkpoints.CheckpointError:
        return None


def _test_figure(record: dict, unit: str) -> str:
    parts = []
    for m in record.get("metrics", []):
        if m.get("params", {}).get("job") != unit:
            continue
        if m["name"] == "test_error":
            t = m["params"].get("glimpses")
            parts.append(f"test error {100 * m['value']:.2f}%" + (f" at T = {t}" if t else ""))
        elif m["name"] in ("nll_elbo", "nll_iwae"):
            parts.append(f"test {m['name'][4:].upper()} {m['value']:.2f}")
    return ", ".join(parts)


# A sitting shorter than this is too short to time: the estimate takes the whole run's rate instead
MIN_SITTING_S = 300.0


def _seconds_per_image(ckpt: dict, images: int, train_s: float, threads: int) -> tuple[float, str]:
    """Seconds per image at the latest sitting's rate (machines differ between sittings): its
    core-seconds on a CPU (bench/cost.py), where the checkpoint keeps them; else wall seconds x
    ``threads``; at the whole run's when that sitting was short or the checkpoint predates its start."""
    start = ckpt.get("sitting_start") or {}
    images_now = images - start.get("images_seen", images)
    seconds_now = train_s - start.get("train_time_s", train_s)
    if seconds_now >= MIN_SITTING_S and images_now > 0:
        spent, began = ckpt.get("train_cost") or {}, start.get("train_cost")
        key = max(spent, key=lambda k: spent[k] - (began or {}).get(k, 0.0), default=None)
        if began is not None and key is not None and key != cost.UNATTRIBUTED:
            return (spent[key] - began.get(key, 0.0)) / images_now, "its last sitting's"
        return seconds_now * threads / images_now, "its last sitting's"
    return train_s * threads / images, "its overall"


def _progress(record: dict, unit: str, ckpt: dict | None
              ) -> tuple[list[dict], int | None, int | None, float | None, dict | None]:
    """Curve, whole epochs, images seen, training wall seconds and cost by where it ran (bench/cost.py):
    from the checkpoint when there is one."""
    if ckpt:
        return (ckpt.get("curve") or [], ckpt.get("epoch"), ckpt.get("images_seen"), ckpt.get("train_time_s"),
                ckpt.get("train_cost"))
    entry = record.get("jobs", {}).get(unit, {})
    progress = entry.get("progress") or {}
    images = entry.get("images_seen", entry.get("train_images_seen", progress.get("images_seen")))
    return (record.get("curves", {}).get(unit) or [], entry.get("epochs", progress.get("epoch")), images,
            entry.get("train_time_s"), entry.get("train_cost"))


def _hours_to_go(ckpt: dict, budget: int, epochs: int | None, images: int, train_s: float,
                 threads: int) -> tuple[float, str]:
    """Training hours (core-hours on a CPU) still to go to the end of the budget, and whose rate timed them."""
    loop, task = ckpt.get("loop", {}), ckpt.get("task", {})
    # the conv baseline's loop does not count its batches: then images per epoch from the progress so far
    per_epoch = (loop.get("batches_per_epoch") or 0) * (task.get("batch_size") or 0) or images / max(epochs or 1, 1)
    seconds_per_image, rate_of = _seconds_per_image(ckpt, images, train_s, threads)
    seconds = max(budget * per_epoch - images, 0) * seconds_per_image
    if loop.get("time_budget_s"):  # a wall-time budget
        seconds = min(seconds, max(loop["time_budget_s"] - train_s, 0) * threads)
    return seconds / 3600, rate_of


def unit_status(record: dict, unit: str) -> UnitStatus:
    entry = record.get("jobs", {}).get(unit, {})
    latest = record.get("machine_resumed") or record.get("machine", {})  # where it goes on
    hours_unit, threads = cost.label(latest)
    ckpt = _checkpoint(entry.get("checkpoint"))
    job = unit_job(record, unit)
    budget = (ckpt or {}).get("loop", {}).get("epochs") or entry.get("budget", {}).get("epochs") or job.get("epochs")
    curve, epochs, images, train_s, spent = _progress(record, unit, ckpt)
    complete = entry.get("status") == "complete" and not (ckpt and ckpt.get("finished") is False)
    state = "complete" if complete else "in training" if (images or curve) else "not started"
    closure = closing.closed(record).get(unit)
    if closure and not complete:
        state = "closed"
    metric = convergence.metric_of(curve)
    points = convergence.latest_epochs(curve, metric) if metric else []
    best = min(points, key=lambda e: e[metric]) if points else None
    to_go, rate_of = None, ""
    evaluation_left = state == "in training" and bool(ckpt and ckpt.get("finished"))
    if state == "in training" and budget and images and train_s and not evaluation_left:
        to_go, rate_of = _hours_to_go(ckpt or {}, budget, epochs, images, train_s, threads)
    decay_from = _decay_ahead(ckpt, budget, epochs) if state == "in training" else None
    return UnitStatus(
        unit=unit, state=state, epochs=epochs, budget_epochs=budget,
        budget_minutes=entry.get("budget", {}).get("time_budget_min") or job.get("time_budget_min"),
        images_seen=images, hours=cost.hours(spent, train_s, record.get("machine", {})), hours_unit=hours_unit,
        last_valid=points[-1][metric] if points else None, best_valid=(best[metric], best["epoch"]) if best else None,
        metric=metric, verdict=convergence.verdict(curve, metric) if metric else None,
        test=_test_figure(record, unit) if state == "complete" else "", to_go_hours=to_go, to_go_rate=rate_of,
        closed_because=closure["reason"] if state == "closed" else None, evaluation_left=evaluation_left,
        decay_from=decay_from)


def _decay_ahead(ckpt: dict | None, budget: int | None, epochs: int | None) -> float | None:
    """The epoch at which the checkpoint's schedule begins its decay over ``budget`` epochs, when the unit
    has not reached it yet; None without a decay or once in it."""
    loop = (ckpt or {}).get("loop", {})
    if not loop.get("schedule") or not budget or epochs is None:
        return None
    start = Schedule(**loop["schedule"]).decay_start(budget)
    return start if epochs < start < math.inf else None


def _figure(value: float, metric: str | None) -> str:
    return f"{100 * value:.2f}%" if metric and metric.endswith("error") else f"{value:.2f}"


def describe(s: UnitStatus) -> str:
    parts = [f"closed ({s.closed_because})" if s.state == "closed" else s.state]
    if s.epochs is not None:
        parts.append(f"epoch {s.epochs}" + (f" (budget {s.budget_minutes:g} min)" if s.budget_minutes else
                                            f" of {s.budget_epochs}" if s.budget_epochs else ""))
    if s.images_seen:
        parts.append(f"{s.images_seen / 1e6:.2f} M images")
    if s.hours:
        parts.append(cost.text(s.hours))
    if s.last_valid is not None:
        parts.append(f"valid {_figure(s.last_valid, s.metric)} (best {_figure(s.best_valid[0], s.metric)} "
                     f"at epoch {s.best_valid[1]})")
    if s.verdict and s.verdict["status"] != "short":
        judged = convergence.describe(s.verdict)
        if s.verdict["status"] == "flat" and s.decay_from is not None:
            judged += f", but in the stable phase, which says little: its decay begins at epoch {s.decay_from:g}"
        parts.append(judged)
    if s.test:
        parts.append(s.test)
    if s.evaluation_left:
        parts.append("training done; its test evaluation is left (a resume runs it alone)")
    if s.to_go_hours is not None:
        parts.append(f"about {s.to_go_hours:.1f} {s.hours_unit} of training to go at {s.to_go_rate} rate")
    return "; ".join(parts)


def _suite_units(record: dict, made_with_budget: bool = True) -> list | None:
    """The units of the record's suite, rebuilt from the options it was made with (``made_with_budget``
    False: without its --epochs and --time-budget, as a resume that gives none trains them); None
    where the suite is not a built-in one (studies) or no longer expands alike. A record made with
    --model expands to its plug-in's units."""
    from bench import runner, suites

    made_with = record.get("config", {}).get("options", {})
    budget = {"epochs": made_with.get("epochs"), "time_budget_min": made_with.get("time_budget_min")}
    try:
        suite = suites.for_run(record.get("suite"), model=made_with.get("model"),
                               glimpses=made_with.get("glimpses"),
                               on_relapse=made_with.get("on_relapse"), jobs=made_with.get("jobs"),
                               settings=made_with.get("settings"), **(budget if made_with_budget else {}))
        seeds = made_with.get("seeds")
        return runner.units(suite, tuple(seeds) if seeds else None)
    except (suites.SuiteError, ValueError, TypeError):
        return None


def planned_units(record: dict) -> list[str] | None:
    """The ids of every unit of the record's own selection (its suite and the options it was made
    with), or None where that cannot be rebuilt (see _suite_units)."""
    planned = _suite_units(record)
    return None if planned is None else [u.id for u in planned]


def units_to_begin(record: dict) -> list[str]:
    """Units of the record's suite it has no entry for yet (the units of a run stopped before it reached
    them, or the other seeds of a run trained one --units at a time), from its suite and the options it
    was made with; none where the suite cannot be rebuilt (see _suite_units)."""
    planned = _suite_units(record) or []
    return [u.id for u in planned if u.id not in record.get("jobs", {}) and u.id not in record.get("curves", {})]


def continue_commands(record: dict, path: Path, unfinished: list[str]) -> list[str]:
    """The `bench run` command(s) that continue the record's ``unfinished`` units. A unit trained to
    another budget than a resume without --epochs gives (one being extended, or a record made with
    --epochs) gets a command that names that budget and the unit (--units): a plain resume would
    refuse it, and --epochs alone would extend the record's finished units too."""
    from bench import resume

    plain = {u.id: resume.budget(u.job) for u in _suite_units(record, made_with_budget=False) or []}
    made_for = {u.id: resume.budget(u.job) for u in _suite_units(record) or []}
    groups: dict[str, list[str]] = {}
    for unit in unfinished:
        # being trained to, else (not begun) what the record was made for
        target = resume.training_budget(record.get("jobs", {}).get(unit, {})) or made_for.get(unit)
        differs = {k: v for k, v in (target or {}).items() if unit in plain and v != plain[unit].get(k)}
        groups.setdefault(resume.budget_options(differs), []).append(unit)
    threads = record.get("machine", {}).get("threads") or 1
    latest = (record.get("segments") or [{}])[-1]
    products = " --training-products auto" if latest.get("training_products") == "bfloat16" else ""
    base = f"python -m bench run --suite {record.get('suite')} --threads {threads}{products}"
    if list(groups) == [""]:
        return [f"{base} --resume --out {path}"]
    return [f"{base}{' ' + options if options else ''} --units {' '.join(units)} --resume --out {path}"
            for options, units in sorted(groups.items())]


def record_status(path: Path) -> str:
    record = records.read(path)
    units = list(record.get("jobs", {}))
    if record.get("status") != "complete":
        units += units_to_begin(record)
    threads = record.get("machine", {}).get("threads") or 1
    changed = records.deviations(record)  # bench run --set
    deviates = f"deviating: --set {changed}, " if changed else ""
    shut = len(set(closing.closed(record)) & set(units))
    lines = [f"{path} (suite {record.get('suite')}, {deviates}{record.get('status')}, {len(units)} units"
             f"{f', {shut} closed' if shut else ''}, {threads} thread(s) per model)"]
    width = max((len(u) for u in units), default=0)
    statuses = [unit_status(record, u) for u in units]
    lines += [f"  {s.unit:<{width}}  {describe(s)}" for s in statuses]
    to_train = [s.unit for s in statuses if s.state not in ("complete", "closed")]
    lines += [f"  continue with: {command}" for command in continue_commands(record, path, to_train)]
    return "\n".join(lines)


def unfinished(path: Path) -> bool:
    """Not complete, and (where `bench close` closed some of its units) with units still to train."""
    record = records.read(path)
    if record.get("status") == "complete" or records.is_dry_run(record):
        return False
    return not closing.closed(record) or bool(closing.open_units(record))


def report(paths: list[Path]) -> str:
    return "\n\n".join(record_status(p) for p in paths)
