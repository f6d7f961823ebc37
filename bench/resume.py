"""What `bench run --resume` may change, and the record's sittings.

A resumed record keeps its recipe: every model and optimiser field of every job that has begun
must match the record (a job none of whose units has begun takes the suite's settings); only the
budget (``BUDGET_FIELDS``) may change, and a larger budget extends units that had finished. Each
sitting (one process that worked on the record) is kept as a segment: machine, commit, start and
end, images trained, wall and CPU seconds.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Collection

from bench import records, suites

BUDGET_FIELDS = ("epochs", "time_budget_min")


class RecipeChanged(ValueError):
    pass


def _same(a, b) -> bool:
    # JSON has no tuples: compare containers as lists
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return norm(a) == norm(b)


def recipe_changes(recorded: dict, job) -> list[str]:
    """Every setting of ``job`` that differs from its record ``recorded``, budget excluded, by name."""
    was = {**suites.settings(type(job)()), **suites.flat(recorded)}
    return [f"{job.kind} {name}: record {was.get(name)!r}, given {given!r}"
            for name, given in suites.settings(job).items()
            if name not in BUDGET_FIELDS and not _same(was.get(name), given)]


def check_recipe(recorded_jobs: list[dict], jobs: tuple, unstarted: Collection[int] = ()) -> int:
    """Raise RecipeChanged naming every setting that differs from the record, budget excluded.

    Settings are compared by the names a user sets them by (lr, read_n, ...: `suites.settings`), so
    a record that keeps its jobs flat (made before jobs held a model and an optimiser config) and
    one that keeps them nested are checked alike. Settings a record predates count as their default.
    The jobs numbered in ``unstarted`` have no unit in the record yet, so nothing was trained with
    their recipe: they may change (`recipe_changes` says how). A suite that gained jobs after the
    record began keeps the record's jobs first: returns how many jobs were added (their units run
    after the record's)."""
    if len(jobs) < len(recorded_jobs):
        raise RecipeChanged(f"the record has {len(recorded_jobs)} jobs, the suite now has {len(jobs)}")
    diffs = [d for i, (old, job) in enumerate(zip(recorded_jobs, jobs)) if i not in unstarted
             for d in recipe_changes(old, job)]
    if diffs:
        raise RecipeChanged("; ".join(diffs) + ". Only the budget (--epochs, --time-budget) may change on resume; "
                                               "start a new record for another recipe")
    return len(jobs) - len(recorded_jobs)


def budget(job) -> dict:
    return {k: getattr(job, k, None) for k in BUDGET_FIELDS}


def finished_budget(entry: dict, current: dict) -> dict:
    """The budget a finished unit's record ``entry`` finished under. Units that finished before records
    kept their budget lack one: when the epoch budget stopped them it was their epochs, whatever the
    record's config says since a longer sitting rewrote it; otherwise the ``current`` budget stands."""
    if entry.get("budget"):
        return entry["budget"]
    if entry.get("stopped_by") == "epochs" and entry.get("epochs"):
        return {**current, "epochs": entry["epochs"]}
    return dict(current)


def covers(budget_a: dict, budget_b: dict) -> bool:
    """Whether a run under ``budget_a`` trains at least as far as one under ``budget_b`` (a missing
    epoch count or time budget is no limit)."""
    for field in BUDGET_FIELDS:
        a, b = budget_a.get(field), budget_b.get(field)
        if a is not None and (b is None or a < b):
            return False
    return True


def describe_budget(budget: dict) -> str:
    parts = [f"{budget['epochs']} epochs"] if budget.get("epochs") else []
    parts += [f"{budget['time_budget_min']:g} min"] if budget.get("time_budget_min") else []
    return " / ".join(parts) or "no limit"


def budget_options(budget: dict) -> str:
    """The `bench run` options that give ``budget``."""
    parts = [f"--epochs {budget['epochs']}"] if budget.get("epochs") else []
    parts += [f"--time-budget {budget['time_budget_min']:g}"] if budget.get("time_budget_min") else []
    return " ".join(parts)


def training_budget(entry: dict) -> dict | None:
    """The budget a unit not complete was last being trained to (the job its latest sitting gave it);
    None for a record entry that does not say."""
    job = entry.get("job") or {}
    if entry.get("status") == "complete" or not any(job.get(f) is not None for f in BUDGET_FIELDS):
        return None
    return {f: job.get(f) for f in BUDGET_FIELDS}


def stamp_budgets(record: dict, current_of) -> None:
    """Write into each finished trained unit lacking one the budget it finished under (``current_of(unit)``:
    the budget its job has now, or None for a unit not trained), so that a longer budget given later
    extends it instead of taking it for finished, and its table row shows its own budget."""
    for unit, entry in record.get("jobs", {}).items():
        current = current_of(unit)
        if current is not None and entry.get("status") == "complete" and not entry.get("budget"):
            entry["budget"] = finished_budget(entry, current)


class Sitting:
    """One process's work on a record: appended to ``record["segments"]`` and kept up to date."""

    def __init__(self, record: dict, machine: dict, training_products: str = "float32"):
        self.wall0, self.cpu0 = time.time(), time.process_time()
        self.progress: list[dict] = []  # the training loop's status of each unit run in this sitting
        self.entry = {"id": uuid.uuid4().hex[:12], "machine": machine, "commit": records.commit_info(),
                      "started_at": records.utc_now(),
                      "finished_at": None, "images_seen": 0, "wall_s": 0.0, "cpu_s": 0.0, "status": "running",
                      "training_products": training_products}
        record.setdefault("segments", []).append(self.entry)

    def track(self, progress: dict) -> dict:
        """Count the images of a unit's training status dict (updated by the loop) in this sitting."""
        self.progress.append(progress)
        return progress

    def update(self, status: str | None = None) -> None:
        e = self.entry
        e["images_seen"] = int(sum(p.get("images_this_sitting", 0) for p in self.progress))
        e["wall_s"] = round(time.time() - self.wall0, 1)
        e["cpu_s"] = round(time.process_time() - self.cpu0, 1)
        e["finished_at"] = records.utc_now()
        if status is not None:
            e["status"] = status


# ---------------------------------------------------------------- sittings side by side on one record

def sitting_key(segment: dict) -> tuple:
    """What tells one sitting's segment from another's (``id`` since sittings could share a record)."""
    return segment.get("id") or (segment.get("started_at"), segment.get("machine", {}).get("id"))


def merge_other_sittings(record: dict, disk: dict, mine, own_segment: dict | None) -> None:
    """Take into ``record`` what other sittings on the same record file (``disk``, as read now) wrote
    for the units this one does not train (``mine(unit)`` false): their jobs, curves, metrics and notes,
    every segment but this sitting's own, and every sitting's resume and recipe stamps. Two sittings with disjoint ``--units`` can so train one
    record side by side, each writing the whole file under a lock without undoing the other's work."""
    for section in ("jobs", "curves"):
        theirs = {u: v for u, v in disk.get(section, {}).items() if not mine(u)}
        record[section] = {**{u: v for u, v in record.get(section, {}).items() if mine(u)}, **theirs}
    job_of = lambda m: m.get("params", {}).get("job")  # noqa: E731
    record["metrics"] = ([m for m in record.get("metrics", []) if job_of(m) is None or mine(job_of(m))]
                         + [m for m in disk.get("metrics", []) if job_of(m) is not None and not mine(job_of(m))])
    # notes are "UNIT: ..." lines: the other sittings' for their units; this sitting's for its own and the rest
    unit_of = lambda note: note.split(":", 1)[0]  # noqa: E731
    theirs = lambda note: unit_of(note) in record["jobs"] and not mine(unit_of(note))  # noqa: E731
    notes = [n for n in record.get("notes", []) if not theirs(n)] + [n for n in disk.get("notes", []) if theirs(n)]
    if notes or "notes" in record:
        record["notes"] = list(dict.fromkeys(notes))
    for key in ("resumed_at", "recipe_renewed"):  # each sitting's stamps, kept whichever sitting writes
        both = record.get(key, []) + [e for e in disk.get(key, []) if e not in record.get(key, [])]
        if both:
            record[key] = sorted(both, key=lambda e: e if isinstance(e, str) else e.get("at") or "")
    own = sitting_key(own_segment) if own_segment is not None else None
    others = [s for s in disk.get("segments", []) if sitting_key(s) != own]
    record["segments"] = sorted(others + ([own_segment] if own_segment is not None else []),
                                key=lambda s: s.get("started_at") or "")
