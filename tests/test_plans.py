"""The committed plans (scripts/plans/*.txt, for scripts/parallel_runs.sh): every run in them parses, and
the plans of what is left to train agree with the committed records, so a session that starts them
continues every record and begins none twice."""

from __future__ import annotations

import fnmatch
import importlib.util
import shlex
from pathlib import Path

import pytest

from bench import cli, records, suites

REPO = Path(__file__).resolve().parent.parent
PLANS = sorted((REPO / "scripts" / "plans").glob("*.txt"))
WHAT_IS_LEFT = ("remaining-long-runs.txt", "cpu-long-runs.txt")  # the others record sittings that have run


def runs(plan: Path) -> list[list[str]]:
    """Each run of the plan as its arguments: one per line, or several on a line separated by ' ;; '."""
    lines = [line for line in plan.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return [shlex.split(run) for line in lines for run in line.split(" ;; ")]


def extends(record: dict, parsed) -> bool:
    """Whether the run's --epochs is more than some unit it selects (--units, else all) has trained."""
    if parsed.epochs is None:
        return False
    chosen = [u for u in record["jobs"]
              if not parsed.units or any(fnmatch.fnmatch(u, pattern) for pattern in parsed.units)]
    return any(record["jobs"][u].get("epochs", 0) < parsed.epochs for u in chosen)


def test_the_plans_of_what_is_left_are_there():
    assert {p.name for p in PLANS} >= set(WHAT_IS_LEFT)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_every_run_of_a_plan_parses(plan):
    for args in runs(plan):
        if args[0] == "-m":
            assert importlib.util.find_spec(args[1]) is not None, f"{plan.name}: no module {args[1]}"
            continue
        try:
            parsed = cli.build_parser().parse_args(["run", *args])
        except SystemExit:
            pytest.fail(f"{plan.name}: `bench run {' '.join(args)}` does not parse")
        suites.get(parsed.suite)


@pytest.mark.parametrize("name", WHAT_IS_LEFT)
def test_a_plan_of_what_is_left_continues_each_begun_record_and_begins_only_new_ones(name):
    for args in runs(REPO / "scripts" / "plans" / name):
        if args[0] == "-m":
            continue
        parsed = cli.build_parser().parse_args(["run", *args])
        record = REPO / parsed.out
        if parsed.resume:
            assert record.exists(), f"{name}: --resume names {parsed.out}, which is not there: drop --resume"
            done = records.read(record)
            assert done["status"] != "complete" or extends(done, parsed), \
                f"{name}: {parsed.out} is complete: drop its run, or extend it with a larger --epochs"
        else:
            assert not record.exists(), f"{name}: {parsed.out} has begun: continue it with --resume"


def test_a_finished_record_may_stay_in_a_plan_only_to_be_extended():
    record = {"jobs": {"draw-a-s0": {"epochs": 200}, "draw-b-s0": {"epochs": 100}}}

    def parse(*args):
        return cli.build_parser().parse_args(["run", "--suite", "table2", "--resume", "--out", "r.json", *args])

    assert extends(record, parse("--epochs", "250", "--units", "draw-a-*"))
    assert not extends(record, parse("--epochs", "200", "--units", "draw-a-*"))
    assert extends(record, parse("--epochs", "150"))  # draw-b has trained 100 of them
    assert not extends(record, parse())
