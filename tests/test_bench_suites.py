"""The suites as declarative configs: every one expands into units, names metrics its jobs
produce, and the throughput suite runs (dry) end to end."""

from __future__ import annotations

import pytest

from bench import records, runner, suites

PRODUCED = {"classifier": {"test_error", "valid_error"}, "ram": {"test_error", "valid_error"},
            "plugin": {"test_error", "valid_error"}, "baseline": {"test_error"},
            "draw": {"nll_elbo", "nll_iwae", "nll_elbo_mc", "kl", "reconstruction"},
            "throughput": {"train_images_per_s", "eval_images_per_s", "peak_fraction"}}


@pytest.mark.parametrize("name", list(suites.SUITES))
def test_suite_expands_and_targets_what_it_measures(name):
    s = suites.get(name)
    units = runner.units(s, None)
    ids = [u.id for u in units]
    assert units and len(ids) == len(set(ids)), "unit ids must be unique (they name checkpoints)"
    made = set().union(*(PRODUCED[u.job.kind] for u in units))
    assert {t.metric for t in s.targets} <= made
    assert s.expected and s.description


def test_table1_protocol_and_seeds():
    units = runner.units(suites.get("table1"), None)
    separate = {}
    for u in units:
        if u.job.kind == "classifier" and not u.job.per_step_loss:
            separate.setdefault(u.glimpses, []).append(u.seed)
    assert separate == {1: [0], 2: [0], 4: [0, 1, 2], 8: [0, 1, 2]}
    per_step = [u for u in units if u.job.kind == "classifier" and u.job.per_step_loss]
    assert per_step and per_step[0].eval_glimpses == tuple(range(1, 9))
    assert runner.units(suites.get("table1"), (5,))[0].seed == 5  # --seeds overrides every job


def test_jobs_pick_a_part_of_a_suite_by_the_numbers_listing_gives():
    table2 = suites.get("table2")
    assert ("    jobs (--jobs): 0: DRAW with attention on binarized; 1: DRAW without attention on binarized"
            in suites.listing().splitlines())
    alone = suites.override(table2, job_indices=(1,))
    assert [u.id for u in runner.units(alone, None)] == ["draw-binarized-noattn-T64-s0"]
    assert suites.override(table2, job_indices=(1, 0, 1)).jobs == table2.jobs  # in the suite's order, once
    with pytest.raises(ValueError, match="suite table2 has no job 2; its jobs are 0: DRAW with attention"):
        suites.override(table2, job_indices=(2,))
    with pytest.raises(runner.SettingError, match="--jobs: suite table2 has no job 7"):
        runner.Runner(runner.RunOptions(suite="table2", jobs=(7,)))


def test_the_suite_a_run_trains_is_built_in_one_place_for_the_runner_and_for_status():
    picked = suites.for_run("table1", glimpses=(8,), epochs=150, on_relapse="rollback", jobs=(0,),
                            settings={"hidden": 512})
    assert [(j.kind, j.glimpses, j.epochs, j.optim.on_relapse, j.model.hidden) for j in picked.jobs] == [
        ("classifier", (8,), 150, "rollback", 512)]
    made = runner.Runner(runner.RunOptions(suite="table1", glimpses=(8,), epochs=150, on_relapse="rollback",
                                           jobs=(0,), settings={"hidden": 512}, threads=1), log=lambda m: None)
    assert made.suite == picked
    with pytest.raises(suites.SuiteError, match="^--jobs: suite table1 has no job 9"):
        suites.for_run("table1", jobs=(9,), settings={"hidden": 512})
    with pytest.raises(suites.SuiteError, match="^--set hidden: .*no trained job"):
        suites.for_run("table2", settings={"hidden": 512})  # DRAW jobs have no `hidden`


def test_a_record_of_some_jobs_resumes_with_the_same_jobs(tmp_path, mnist_data):
    opts = dict(suite="quick", jobs=(2,), dry_run=True, threads=1, progress=False, out=str(tmp_path / "r.json"),
                checkpoint_dir=str(tmp_path / "ckpt"))
    rec, path = runner.run(runner.RunOptions(**opts), log=lambda m: None)
    assert list(rec["jobs"]) == ["throughput-classifier"] and list(rec["config"]["options"]["jobs"]) == [2]
    rec["status"] = "incomplete"
    records.write(rec, path)
    with pytest.raises(runner.ResumeError, match="made with --jobs 2 .*resume it with the same --jobs"):
        runner.run(runner.RunOptions(**{**opts, "jobs": None, "resume": True}), log=lambda m: None)


def test_quick_fits_its_time_budget():
    budget = sum((getattr(j, "time_budget_min", None) or 0) for j in suites.QUICK.jobs)
    assert budget <= 7, "training budgets must leave room for data, evaluation and throughput within 10 min"
    assert all(j.time_budget_min for j in suites.QUICK.jobs if j.kind in ("classifier", "draw"))


def test_throughput_suite_dry_run(tmp_path, mnist_data):
    opts = runner.RunOptions(suite="throughput", dry_run=True, threads=1, progress=False,
                             out=str(tmp_path / "t.json"))
    record, path = runner.run(opts, log=lambda m: None)
    r = records.read(path)
    speeds = [m for m in r["metrics"] if m["name"] == "train_images_per_s"]
    assert {m["params"]["model"] for m in speeds} == {"classifier", "draw"}
    assert all(m["value"] > 0 and m["stats"]["q1"] <= m["value"] <= m["stats"]["q3"] for m in speeds)


def test_targets_pass_and_fail_on_the_mean_over_seeds_and_the_trend_over_glimpses():
    from bench.records import metric
    from bench.suites import Suite, Target
    from bench.targets import check_targets

    suite = Suite(name="t", description="", expected="", jobs=(), targets=(
        Target("test_error", "<", 0.05, (("glimpses", 8),)),
        Target("nll_elbo", "<=", 80.97),
        Target("test_error", "falling"),
    ))

    def run(errors_by_t, nll):
        return check_targets(suite, [metric("test_error", e, "fraction", True, s, glimpses=t)
                                     for t, es in errors_by_t.items() for s, e in enumerate(es)]
                             + [metric("nll_elbo", nll, "nats", True, 0)])

    good = run({2: [0.20, 0.22], 4: [0.08, 0.09], 8: [0.04, 0.05]}, 80.97)
    assert [t["passed"] for t in good] == [True, True, True] and good[0]["value"] == pytest.approx(0.045)
    bad = run({2: [0.20, 0.22], 4: [0.08, 0.09], 8: [0.04, 0.07]}, 80.98)  # T = 8 mean 0.055
    assert [t["passed"] for t in bad] == [False, False, True]
    rising = run({2: [0.20], 4: [0.08], 8: [0.10]}, 80.0)  # T = 8 worse than T = 4 by more than half a point
    assert rising[2]["passed"] is False and rising[2]["value"] == {"2": 0.20, "4": 0.08, "8": 0.10}
    assert run({}, 80.0)[0]["passed"] is None  # no figure: not judged
