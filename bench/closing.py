"""`bench close`: retire the units of a record that no sitting is to train any more, with the reason.

A record keeps every unit its suite names. Some are never to be trained there: a run moved to a record
of its own with another recipe, the rest of a short run that long runs have replaced. Until they are
closed, `bench status` counts them as work to do and prints a command that would train them, and a
`bench run --resume` without --units trains them. A closed unit is listed under the record's
``closed`` (unit -> when and why); it keeps whatever it trained and measured, `bench status` shows it
as closed, and a resume skips it. `--reopen` takes a closure back.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

from bench import records
from datasets.cliargs import UsageError
from datasets.fileio import file_lock


class CloseError(UsageError):
    pass


def closed(record: dict) -> dict[str, dict]:
    """Unit -> {"at", "reason"} for every closed unit of ``record``."""
    return record.get("closed") or {}


def open_units(record: dict) -> list[str]:
    """The units of ``record`` not complete, begun or not, that are not closed."""
    from bench import status

    if record.get("status") == "complete":
        return []
    not_done = [u for u, e in record.get("jobs", {}).items() if e.get("status") != "complete"]
    return [u for u in not_done + status.units_to_begin(record) if u not in closed(record)]


def close(path: str | Path, reason: str, units: list[str] | None = None, reopen: bool = False,
          force: bool = False) -> list[str]:
    """Close (``reopen``: reopen) the units of the record at ``path`` that match the globs ``units``
    (default: every open unit; with ``reopen``, every closed one) and return them. Refused while a
    sitting is working on the record, which would write its own copy over the closure; ``force`` when
    the record says one is but none is (a sitting killed with kill -9 never says it stopped)."""
    if not reopen and not reason.strip():
        raise CloseError("--reason must say why the units are closed (it stays in the record)")
    path = Path(path)
    with file_lock(records.lock_path(path)):
        record = records.read(path)
        running = [s for s in record.get("segments", []) if s.get("status") == "running"]
        if running and not force:
            raise CloseError(f"{path}: a sitting is working on it (begun {running[-1].get('started_at')}); stop it "
                             "first, or give --force if none is running (one killed with kill -9 never says so)")
        pool = sorted(closed(record)) if reopen else open_units(record)
        chosen = [u for u in pool if units is None or any(fnmatch.fnmatchcase(u, g) for g in units)]
        if not chosen:
            what = "closed" if reopen else "open (not complete, not closed)"
            raise CloseError(f"{path}: no {what} unit matches {' '.join(units or ['*'])}; its {what} units: "
                             f"{', '.join(pool) or 'none'}")
        if reopen:
            record["closed"] = {u: v for u, v in closed(record).items() if u not in chosen}
        else:
            record["closed"] = {**closed(record), **{u: {"at": records.utc_now(), "reason": reason} for u in chosen}}
        records.write(record, path)
    return chosen
