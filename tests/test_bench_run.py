"""`bench run` end to end: the dry run, and a crash then --resume that ends where an
uninterrupted run ends."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import records, runner, suites
from bench.optim import Optim
from bench.suites import ClassifierJob, Suite, Target, ThroughputJob
from models.classifier import ClassifierConfig
from tests.fixtures.bench_records import without_timings
from tests.fixtures.interrupts import interrupt_loss

REPO = Path(__file__).resolve().parent.parent

TINY = Suite(
    name="tiny", description="test suite", expected="seconds",
    jobs=(ClassifierJob(dataset="cluttered60", glimpses=(1, 2), per_step_loss=True,
                        model=ClassifierConfig(read_n=4, hidden=16), optim=Optim(batch_size=16), epochs=2,
                        train_limit=64, valid_limit=32, test_limit=32),
          ThroughputJob(model="classifier", height=60, width=60, glimpses=2, hidden=16, batch_sizes=(8,),
                        repeats=2, min_time_s=0.0)),
    targets=(Target("test_error", "<", 2.0, (("glimpses", 2),)),),
)


@pytest.fixture
def tiny(monkeypatch, tmp_path, mnist_data):
    monkeypatch.setitem(suites.SUITES, "tiny", TINY)

    def opts(name, **kw):
        return runner.RunOptions(suite="tiny", out=str(tmp_path / f"{name}.json"), threads=1, progress=False,
                                 checkpoint_dir=str(tmp_path / "ckpt"), **kw)

    return opts


def quiet(msg):
    pass


def test_dry_run_end_to_end(tmp_path, mnist_data):
    out = tmp_path / "dry.json"
    p = subprocess.run([sys.executable, "-m", "bench", "run", "--dry-run", "--threads", "1", "--no-progress",
                        "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = records.read(out)
    assert r["status"] == "complete" and r["config"]["dry_run"] and r["finished_at"]
    names = {m["name"] for m in r["metrics"]}
    assert names >= {"test_error", "valid_error", "nll_elbo", "nll_iwae", "nll_elbo_mc", "kl", "reconstruction",
                     "train_images_per_s", "eval_images_per_s"}
    # a matmul peak timed for a fraction of a second is no peak: no fraction of it either
    assert "peak_fraction" not in names and "matmul peak: not measured in a dry run" in p.stderr
    errs = [m for m in r["metrics"] if m["name"] == "test_error"]
    assert sorted(m["params"]["glimpses"] for m in errs) == [1, 2, 4, 8]
    assert all(m["params"]["protocol"] == "per-step" and 0 <= m["value"] <= 1 for m in errs)
    flops = {m["params"]["glimpses"]: m["params"]["flops_per_image"] for m in errs}  # each t's own steps
    assert flops[8] > 0 and [flops[t] * 8 / t for t in (1, 2, 4)] == [pytest.approx(flops[8], rel=1e-6)] * 3
    iw = next(m for m in r["metrics"] if m["name"] == "nll_iwae")
    assert iw["params"]["k"] == 4 and iw["params"]["binarization"] == "fixed"
    assert iw["params"]["train_binarization"] == "fresh per epoch"  # the quick DRAW trains on fresh binarizations
    assert all(j["status"] == "complete" for j in r["jobs"].values())
    assert all(len(c) == 1 for c in r["curves"].values())
    with np.load(out.with_suffix(".npz")) as z:
        samples = next(k for k in z.files if k.endswith("/samples"))
        assert z[samples].shape[0] == 16 and z[samples].dtype == np.uint8
    assert "test_error" in p.stdout and f"record: {out}" in p.stdout
    assert r["targets"] == [] and "targets are not checked" in p.stdout


def test_crash_then_resume_matches_uninterrupted(tiny, monkeypatch):
    ref, _ = runner.run(tiny("ref"), log=quiet)
    assert ref["status"] == "complete" and ref["targets"][0]["passed"]

    from bench import tasks
    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 6)  # in epoch 2 of 4 batches each
    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny("run"), log=quiet)
    path = Path(tiny("run").out)
    r = records.read(path)
    unit = next(iter(r["jobs"]))
    assert r["status"] == "incomplete" and r["error"] == "interrupted (Ctrl-C)"
    assert r["jobs"][unit]["status"] == "incomplete"
    assert (REPO / r["jobs"][unit]["checkpoint"]).exists() or Path(r["jobs"][unit]["checkpoint"]).exists()
    assert without_timings(r["curves"][unit]) == without_timings(ref["curves"][unit][:1])  # where it stood: epoch 1

    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    done, _ = runner.run(tiny("run", resume=True), log=quiet)
    assert done["status"] == "complete" and done["jobs"][unit]["resumed"] and done["resumed_at"]
    pick = lambda rec: sorted((m["name"], m["params"].get("glimpses"), m["value"])  # noqa: E731
                              for m in rec["metrics"] if m["name"] in ("test_error", "valid_error"))
    assert pick(done) == pick(ref)
    assert without_timings(done["curves"][unit]) == without_timings(ref["curves"][unit])
    # two runs of one suite name the same metrics: compare pairs every one of them
    from bench import compare
    res = compare.compare_paths(tiny("ref").out, tiny("run").out)
    assert not res.only_a and not res.only_b and len(res.rows) == len(ref["metrics"])
    assert {r.verdict for r in res.rows if r.name.endswith("error")} == {"same"}


def test_a_stop_during_the_final_evaluation_resumes_into_the_evaluation_alone(tiny, monkeypatch):
    """Stopped while scoring the test set after the last epoch (DRAW's IWAE takes most of an hour): the
    resume trains nothing more and scores what an uninterrupted run scores, with the same curve."""
    from bench import tasks

    ref, _ = runner.run(tiny("ref"), log=quiet)
    orig = tasks.ClassifierTask.evaluate

    def stopped_in_test(self, model, split, *a, **kw):
        if split == "test":
            raise KeyboardInterrupt("terminated by signal 15")
        return orig(self, model, split, *a, **kw)

    monkeypatch.setattr(tasks.ClassifierTask, "evaluate", stopped_in_test)
    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny("run"), log=quiet)
    unit = next(u for u in ref["jobs"] if u.startswith("classifier"))
    stopped = records.read(tiny("run").out)
    assert stopped["jobs"][unit]["status"] == "incomplete" and len(stopped["curves"][unit]) == 2
    monkeypatch.setattr(tasks.ClassifierTask, "evaluate", orig)
    trained = []
    real_loss = tasks.ClassifierTask.loss
    monkeypatch.setattr(tasks.ClassifierTask, "loss", lambda *a: trained.append(1) or real_loss(*a))
    done, _ = runner.run(tiny("run", resume=True), log=quiet)
    assert not trained and done["status"] == "complete"
    pick = lambda rec: sorted((m["name"], m["params"].get("glimpses"), m["value"])  # noqa: E731
                              for m in rec["metrics"] if m["name"] in ("test_error", "valid_error"))
    assert pick(done) == pick(ref)
    assert without_timings(done["curves"][unit]) == without_timings(ref["curves"][unit])


def test_a_run_with_set_keeps_its_deviation_through_resume_and_into_the_tables(tiny, monkeypatch):
    """--set hidden=24: the record keeps it (options and each unit's job), a resume given nothing
    takes it from the record (bench.cli), one given another value is refused by name, and the row
    of the full tables names the deviation."""
    from bench import cli, resume, tables, tasks

    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 3)
    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny("run", settings={"hidden": 24}), log=quiet)
    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    path = Path(tiny("run").out)
    stopped = records.read(path)
    assert stopped["config"]["options"]["settings"] == {"hidden": 24}
    assert stopped["config"]["suite"]["jobs"][0]["model"]["hidden"] == 24
    with pytest.raises(resume.RecipeChanged, match=r"hidden: record 24, given 32"):
        runner.run(tiny("run", resume=True, settings={"hidden": 32}), log=quiet)
    args = cli.build_parser().parse_args(["run", "--suite", "tiny", "--resume", "--out", str(path)])
    cli._selection_from_record(args, stopped)
    done, _ = runner.run(tiny("run", resume=True, settings=args.settings), log=quiet)
    unit = next(u for u in done["jobs"] if u.startswith("classifier"))
    assert done["status"] == "complete" and done["jobs"][unit]["job"]["model"]["hidden"] == 24
    assert tables.deviations(str(path)) == "hidden=24"
    from bench import status
    assert "(suite tiny, deviating: --set hidden=24, complete," in status.record_status(path)
    assert "**deviates: --set hidden=24**; constant lr 0.001" in tables.markdown(path.parent)


def test_resume_skips_finished_units(tiny, monkeypatch):
    def boom(self, unit):
        raise RuntimeError("throughput exploded")

    monkeypatch.setattr(runner.Runner, "run_throughput", boom)
    with pytest.raises(RuntimeError):
        runner.run(tiny("run"), log=quiet)
    r = records.read(tiny("run").out)
    assert r["status"] == "failed" and "throughput exploded" in r["error"]
    assert [j["status"] for j in r["jobs"].values()] == ["complete", "failed"]
    monkeypatch.undo()
    monkeypatch.setitem(suites.SUITES, "tiny", TINY)
    lines = []
    done, _ = runner.run(tiny("run", resume=True), log=lines.append)
    assert any("complete in the record, skipped" in line for line in lines)
    assert done["status"] == "complete" and {m["name"] for m in done["metrics"]} >= {"test_error", "train_images_per_s"}
    assert json.loads(Path(tiny("run").out).read_text())["status"] == "complete"


def test_resume_refuses_complete_or_other_suite(tiny):
    runner.run(tiny("run"), log=quiet)
    with pytest.raises(runner.RunError, match="is complete; nothing to resume"):
        runner.run(tiny("run", resume=True), log=quiet)
    r = records.read(tiny("run").out)
    r["status"] = "incomplete"
    records.write(r, tiny("run").out)
    with pytest.raises(runner.RunError, match="resume with --suite tiny"):
        runner.run(replace(tiny("run", resume=True), suite="quick"), log=quiet)


def test_eval_checkpoint_on_other_test_clutter(tiny, tmp_path, capsys):
    from bench.cli import main

    rec, _ = runner.run(tiny("run"), log=quiet)
    unit, job = next(iter(rec["jobs"].items()))
    ckpt = Path(job["checkpoint"]) if Path(job["checkpoint"]).is_absolute() else REPO / job["checkpoint"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--seed", "1", "--limit", "32", "--device", "cpu",
                 "--out", str(out)]) == 0
    r = records.read(out)
    assert r["suite"] == "eval" and r["status"] == "complete" and r["config"]["data_seed"] == 1
    errs = {m["params"]["glimpses"]: m["value"] for m in r["metrics"] if m["name"] == "test_error"}
    assert set(errs) == {1, 2} and all(0 <= v <= 1 for v in errs.values())
    assert all(m["params"]["data_seed"] == 1 and m["params"]["test_images"] == 32 for m in r["metrics"])
    # the same checkpoint on the fixed test split (seed 0) reproduces the run's own test errors
    fixed = tmp_path / "eval-fixed.json"  # an evaluation never writes over a record
    assert main(["eval", "--checkpoint", str(ckpt), "--limit", "32", "--device", "cpu", "--out", str(fixed)]) == 0
    again = {m["params"]["glimpses"]: m["value"] for m in records.read(fixed)["metrics"]}
    ran = {m["params"]["glimpses"]: m["value"] for m in rec["metrics"] if m["name"] == "test_error"}
    assert again == ran
    assert main(["eval", "--checkpoint", str(ckpt), "--dataset", "binarized", "--out", str(tmp_path / "x.json")]) == 2
    assert "has 28x28 images but the model was trained on 60x60" in capsys.readouterr().err


def test_exported_reference_checkpoint_evaluates_like_the_full_one(tiny, tmp_path, capsys):
    from bench import checkpoint_bytes, checkpoints
    from bench.cli import main

    rec, _ = runner.run(tiny("run"), log=quiet)
    job = next(iter(rec["jobs"].values()))
    ckpt = Path(job["checkpoint"]) if Path(job["checkpoint"]).is_absolute() else REPO / job["checkpoint"]
    ref = tmp_path / "ref" / "model.pt"
    assert main(["export", str(ckpt), str(ref)]) == 0
    slim = checkpoints.load(ref)
    assert "optimizer" not in slim and "rng" not in slim and ref.stat().st_size < ckpt.stat().st_size
    assert checkpoint_bytes.is_compressed(ref.read_bytes())
    outs = {}
    for name, path in (("full", ckpt), ("ref", ref)):
        out = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(path), "--limit", "32", "--device", "cpu", "--out", str(out)]) == 0
        outs[name] = [(m["params"]["glimpses"], m["value"]) for m in records.read(out)["metrics"]]
    assert outs["full"] == outs["ref"]
    assert main(["export", str(tmp_path / "missing.pt"), str(tmp_path / "x.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_resume_finds_the_latest_unfinished_record(tiny, monkeypatch, tmp_path):
    monkeypatch.setattr(records, "RUNS", tmp_path / "runs")

    def boom(self, unit):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runner.Runner, "run_throughput", boom)
        with pytest.raises(KeyboardInterrupt):
            runner.run(replace(tiny("x"), out=None), log=quiet)
    [path] = (tmp_path / "runs" / "records").rglob("*.json")
    index = (tmp_path / "runs" / "index.csv").read_text()
    assert path.parent.name == records.machine_info("cpu")["id"] and ",incomplete," in index
    done, again = runner.run(replace(tiny("x"), out=None, resume=True), log=quiet)
    assert again == path and done["status"] == "complete"
    assert ",complete," in (tmp_path / "runs" / "index.csv").read_text()
    with pytest.raises(runner.RunError, match="no unfinished record of suite 'tiny'"):
        runner.run(replace(tiny("x"), out=None, resume=True), log=quiet)


def test_a_resume_without_out_takes_the_latest_records_selection(tiny, monkeypatch, tmp_path):
    """`bench run --suite S --resume` continues this machine's latest unfinished record with what it was
    made with (here --jobs 0), as a resume with --out does: it neither refuses it nor adds units to it."""
    from bench import cli, tasks

    monkeypatch.setattr(records, "RUNS", tmp_path / "runs")
    interrupt_loss(monkeypatch, tasks.ClassifierTask, 3)
    argv = ["run", "--suite", "tiny", "--threads", "1", "--no-progress", "--checkpoint-dir", str(tmp_path / "ckpt")]
    assert cli.main([*argv, "--jobs", "0"]) == 130
    [path] = (tmp_path / "runs" / "records").rglob("*.json")
    assert records.read(path)["config"]["options"]["jobs"] == [0]
    assert cli.main([*argv, "--resume"]) == 0
    done = records.read(path)
    assert done["status"] == "complete" and all(u.startswith("classifier") for u in done["jobs"])

def test_a_run_left_on_the_plateau_says_so(tiny):
    """The tiny suite trains 8 batches: its classifier cannot leave chance level, and the record,
    its metrics and the log say so instead of passing the figure off as a result."""
    lines = []
    rec, _ = runner.run(tiny("run"), log=lines.append)
    unit = next(u for u in rec["jobs"] if u.startswith("classifier"))
    assert rec["jobs"][unit]["plateau"]["on_plateau"]
    assert all(m["params"].get("on_plateau") for m in rec["metrics"] if m["name"] == "test_error")
    assert any(n.startswith(f"{unit}: WARNING: never left") for n in rec["notes"])
    assert any("WARNING: never left" in line for line in lines)
    assert rec["jobs"][unit]["convergence"]["status"] == "short"  # 2 epochs: too few to judge
    assert any(f"{unit}: at the end of training, validation was too few epochs" in line for line in lines)


def test_resume_refuses_a_changed_recipe_and_runs_jobs_the_suite_gained(tiny, monkeypatch):
    from bench import resume

    runner.run(tiny("run"), log=quiet)
    clf = TINY.jobs[0]
    faster = suites.with_settings(clf, lr=0.002)
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=(faster,) + TINY.jobs[1:]))
    with pytest.raises(resume.RecipeChanged, match=r"classifier lr: record 0\.001, given 0\.002"):
        runner.run(tiny("run", resume=True), log=quiet)
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=TINY.jobs[:1]))
    with pytest.raises(resume.RecipeChanged, match="the record has 2 jobs, the suite now has 1"):
        runner.run(tiny("run", resume=True), log=quiet)
    extra = replace(clf, dataset="translated60", glimpses=(1,), per_step_loss=False)
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=TINY.jobs + (extra,)))
    lines = []
    rec, _ = runner.run(tiny("run", resume=True), log=lines.append)
    assert any("gained 1 job(s)" in line for line in lines)
    assert sum("complete in the record, skipped" in line for line in lines) == 2
    assert rec["status"] == "complete" and rec["jobs"]["classifier-translated60-T1-s0"]["status"] == "complete"
    assert len(rec["segments"]) == 2


def test_checkpoints_moved_elsewhere_are_found_and_remembered(tiny, monkeypatch, tmp_path):
    from bench import tasks
    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 3, 6)  # once in each of the first two sittings
    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny("run"), log=quiet)
    moved = tmp_path / "kept"
    (tmp_path / "ckpt").rename(moved)
    opts = tiny("run", resume=True)
    opts.checkpoint_dir = str(moved)
    with pytest.raises(KeyboardInterrupt):
        runner.run(opts, log=quiet)
    r = records.read(tiny("run").out)
    assert r["config"]["options"]["checkpoint_dir"] == str(moved)
    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    again = tiny("run", resume=True)
    again.checkpoint_dir = None  # the record says where
    done, _ = runner.run(again, log=quiet)
    unit = next(iter(done["jobs"]))
    assert done["status"] == "complete" and done["jobs"][unit]["resumed"]
    assert done["jobs"][unit]["checkpoint"].startswith(str(moved)) and not (tmp_path / "ckpt").exists()


def test_units_trains_some_units_and_leaves_the_rest_for_a_later_sitting(tiny):
    lines = []
    rec, _ = runner.run(tiny("run", units=("throughput-*",)), log=lines.append)
    assert rec["status"] == "incomplete" and "units left for another sitting" in rec["error"]
    clf = runner.units(TINY, None)[0].id
    assert rec["jobs"]["throughput-classifier"]["status"] == "complete" and clf not in rec["jobs"]
    assert any(f"{clf}: not in --units, left for another sitting" in line for line in lines)
    assert not rec.get("targets")  # targets are checked on the whole record only
    with pytest.raises(runner.ResumeError, match=f"no unfinished unit matches --units other-\\*; .* {clf}"):
        runner.run(tiny("run", resume=True, units=("other-*",)), log=quiet)
    done, _ = runner.run(tiny("run", resume=True), log=quiet)
    assert done["status"] == "complete" and done["jobs"][clf]["status"] == "complete" and done["targets"]
    assert len(done["segments"]) == 2


def test_a_job_with_no_unit_in_the_record_may_change_its_recipe(tiny, monkeypatch):
    """A record trained only job 0 so far (--units): job 1 takes the suite's new settings on resume, and
    the record says so; job 0's recipe stays locked, also when --seeds leaves its units out."""
    from bench import resume

    first = replace(TINY.jobs[0], per_step_loss=False, glimpses=(1,))
    second = replace(first, dataset="translated60")
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=(first, second)))
    rec, _ = runner.run(tiny("run", units=("classifier-cluttered60-*",)), log=quiet)
    assert set(rec["jobs"]) == {"classifier-cluttered60-T1-s0"} and rec["status"] != "complete"
    for seeds in (None, (1,)):
        changed_first = (suites.with_settings(first, lr=0.002), second)
        monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=changed_first))
        with pytest.raises(resume.RecipeChanged, match=r"classifier lr: record 0\.001, given 0\.002"):
            runner.run(tiny("run", resume=True, seeds=seeds), log=quiet)
    renewed = suites.with_settings(second, lr=0.002)
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=(first, renewed)))
    lines = []
    rec, _ = runner.run(tiny("run", resume=True), log=lines.append)
    assert any(line.startswith("job 1 has no unit in the record yet") and "lr: record 0.001, given 0.002" in line
               for line in lines)
    assert rec["status"] == "complete" and rec["jobs"]["classifier-translated60-T1-s0"]["status"] == "complete"
    assert rec["config"]["suite"]["jobs"][1]["optim"]["lr"] == 0.002
    assert [(r["job"], r["changes"]) for r in rec["recipe_renewed"]] == \
        [(1, ["classifier lr: record 0.001, given 0.002"])]
    assert rec["jobs"]["classifier-translated60-T1-s0"]["job"]["optim"]["lr"] == 0.002


def test_an_extended_unit_keeps_the_run_it_extended(tiny, monkeypatch):
    """2 epochs, then extended to 4, stopped mid-way and resumed in another sitting: the record's unit ends
    with the 4-epoch figures and, under `earlier`, the 2-epoch run's budget, training, metrics and curve,
    so that its figure stays in the 2-epoch row. While the extension is unfinished the record holds that
    run under `extending_from`."""
    from bench import tasks

    first, _ = runner.run(tiny("run"), log=quiet)
    unit = next(u for u in first["jobs"] if u.startswith("classifier"))
    before = [m for m in first["metrics"] if m["params"].get("job") == unit]
    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 2)  # early in the extension
    with pytest.raises(KeyboardInterrupt):
        runner.run(replace(tiny("run", resume=True), epochs=4), log=quiet)
    stopped = records.read(tiny("run").out)["jobs"][unit]
    assert stopped["status"] == "incomplete" and stopped["extending_from"]["metrics"] == before
    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    extended, _ = runner.run(replace(tiny("run", resume=True), epochs=4), log=quiet)
    entry = extended["jobs"][unit]
    assert entry["status"] == "complete" and entry["epochs"] == 4 and entry["budget"]["epochs"] == 4
    assert "extending_from" not in entry
    (earlier,) = entry["earlier"]
    assert earlier["info"]["budget"]["epochs"] == 2 and earlier["info"]["epochs"] == 2
    assert earlier["metrics"] == before and [e["epoch"] for e in earlier["curve"]] == [1, 2]
    assert [e["epoch"] for e in extended["curves"][unit]] == [1, 2, 3, 4]


def test_a_finished_unit_keeps_an_evaluation_export_and_a_larger_budget_extends_it(tiny, monkeypatch):
    """With a decaying schedule, a finished unit's checkpoint becomes its evaluation-only export once the
    record holds its test figures: `bench eval` scores it as the record did, and a larger budget
    restarts from the state kept where the decay began."""
    from bench import checkpoints, evaluate

    wsd = Optim(batch_size=16, schedule="wsd", warmup_epochs=0.5, decay_epochs=1.0)
    monkeypatch.setitem(suites.SUITES, "tiny", replace(TINY, jobs=(replace(TINY.jobs[0], optim=wsd),)))
    lines = []
    first, path = runner.run(tiny("run"), log=lines.append)
    (unit,) = first["jobs"]
    ckpt = Path(tiny("run").checkpoint_dir) / "run" / f"{unit}.pt"
    assert checkpoints.is_export(checkpoints.load(ckpt)) and checkpoints.stable_path(ckpt).is_file()
    assert any(f"{unit}: kept as an evaluation-only export" in m for m in lines)
    rebuilt = evaluate.rebuild(ckpt, device="cpu", limit=TINY.jobs[0].test_limit)
    scored = rebuilt.task.evaluate(rebuilt.model, "test")
    recorded = {m["params"]["glimpses"]: m["value"] for m in first["metrics"]
                if m["name"] == "test_error" and m["params"].get("job") == unit}
    assert {t: scored[f"error@{t}"] for t in recorded} == recorded
    lines.clear()
    extended, _ = runner.run(replace(tiny("run", resume=True), epochs=4), log=lines.append)
    assert extended["jobs"][unit]["status"] == "complete" and extended["jobs"][unit]["epochs"] == 4
    assert any("kept as an evaluation-only export to 4 epochs: restarting from" in m for m in lines)
    assert [e["epoch"] for e in extended["curves"][unit]] == [1, 2, 3, 4]
    assert checkpoints.is_export(checkpoints.load(ckpt))


def test_a_unit_finished_before_records_kept_budgets_finished_under_its_own(tiny, monkeypatch):
    """A unit that finished before units kept their budget, in a record whose config a longer sitting
    has since rewritten (4 epochs): it finished under the 2 epochs it stopped at, so a 4-epoch resume
    extends it rather than skipping it, the resume writes that budget into it, and its table row says 2."""
    from bench import tables

    first, path = runner.run(tiny("run"), log=quiet)
    unit = next(u for u in first["jobs"] if u.startswith("classifier"))
    old = records.read(path)
    for entry in old["jobs"].values():
        entry.pop("budget", None)
        entry.pop("job", None)
    old["config"]["suite"]["jobs"][0]["epochs"] = 4
    records.write(old, path)
    assert tables.unit_job(records.read(path), unit)["epochs"] == 2
    lines = []
    calls = []
    real_run_unit = runner.Runner.run_unit

    def stop_at_start(self, u, record, p):
        calls.append(u.id)
        assert record["jobs"][unit]["extending_from"]["info"]["budget"]["epochs"] == 2
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Runner, "run_unit", stop_at_start)
    with pytest.raises(KeyboardInterrupt):
        runner.run(replace(tiny("run", resume=True), epochs=4), log=lines.append)
    assert calls == [unit] and any(f"{unit} (extending its budget)" in line for line in lines)
    monkeypatch.setattr(runner.Runner, "run_unit", real_run_unit)
    done, _ = runner.run(replace(tiny("run", resume=True), epochs=4), log=quiet)
    assert done["jobs"][unit]["budget"]["epochs"] == 4 and done["jobs"][unit]["earlier"][0]["info"]["budget"] == \
        {"epochs": 2, "time_budget_min": None}


def test_sittings_with_disjoint_units_train_one_record_side_by_side(tiny, monkeypatch):
    """Sitting B (--units *-T1-*) is overtaken mid-way by sitting C (--units *-T2-*) on the same record
    file: each write takes in the other's units, so neither undoes the other's work, every segment is
    kept, and the record is complete when the last unit is."""
    separate = replace(TINY, jobs=(replace(TINY.jobs[0], per_step_loss=False), TINY.jobs[1]))
    monkeypatch.setitem(suites.SUITES, "tiny", separate)
    runner.run(tiny("run", units=("throughput-*",)), log=quiet)
    t1, t2 = (u.id for u in runner.units(separate, None)[:2])
    assert t1.endswith("-T1-s0") and t2.endswith("-T2-s0")
    real_run_unit = runner.Runner.run_unit
    overtaken = []

    def run_unit(self, unit, record, path):
        if unit.id == t1 and not overtaken:  # C starts and finishes while B trains its unit
            overtaken.append(runner.run(tiny("run", resume=True, units=("*-T2-*",)), log=quiet)[0])
        return real_run_unit(self, unit, record, path)

    monkeypatch.setattr(runner.Runner, "run_unit", run_unit)
    done, path = runner.run(tiny("run", resume=True, units=("*-T1-*",)), log=quiet)
    assert overtaken[0]["jobs"][t2]["status"] == "complete" and overtaken[0]["status"] == "incomplete"
    on_disk = records.read(path)
    for rec in (done, on_disk):
        assert {u: j["status"] for u, j in rec["jobs"].items()} == {
            t1: "complete", t2: "complete", "throughput-classifier": "complete"}
        assert rec["status"] == "complete" and rec["targets"]
        assert len(rec["segments"]) == 3 and len({s["id"] for s in rec["segments"]}) == 3
        assert {m["params"].get("job") for m in rec["metrics"] if m["name"] == "test_error"} == {t1, t2}
        assert set(rec["curves"]) >= {t1, t2}
    c_metrics = [m for m in overtaken[0]["metrics"] if m["params"].get("job") == t2]
    assert [m for m in on_disk["metrics"] if m["params"].get("job") == t2] == c_metrics  # C's work, untouched


def test_of_two_sittings_that_end_together_the_later_completes_the_record(tiny, monkeypatch):
    """Sitting B (--units *-T1-*) ends while C's unit (T2) is still unfinished, and C finishes at once,
    right after B's last look at the record: C sees B's unit complete and completes the record, and
    nothing B writes afterwards marks it incomplete again, in the record or in the index."""
    separate = replace(TINY, jobs=(replace(TINY.jobs[0], per_step_loss=False), TINY.jobs[1]))
    monkeypatch.setitem(suites.SUITES, "tiny", separate)
    runner.run(tiny("run", units=("throughput-*",)), log=quiet)
    t1, t2 = (u.id for u in runner.units(separate, None)[:2])
    real_save = runner.Runner.save
    saves_after_t1 = []

    def save(self, record, path, settle=None):
        real_save(self, record, path, settle=settle)
        if self.opts.units == ("*-T1-*",) and record["jobs"].get(t1, {}).get("status") == "complete":
            saves_after_t1.append(record["status"])
            if len(saves_after_t1) == 2:  # B has looked for C's unit: C runs start to end now
                monkeypatch.setattr(runner.Runner, "save", real_save)
                runner.run(tiny("run", resume=True, units=("*-T2-*",)), log=quiet)

    monkeypatch.setattr(runner.Runner, "save", save)
    runner.run(tiny("run", resume=True, units=("*-T1-*",)), log=quiet)
    assert len(saves_after_t1) == 2
    on_disk = records.read(tiny("run").out)
    assert {u: j["status"] for u, j in on_disk["jobs"].items()} == {
        t1: "complete", t2: "complete", "throughput-classifier": "complete"}
    assert on_disk["status"] == "complete" and on_disk["error"] is None and on_disk["targets"]


def test_a_sitting_without_units_leaves_a_unit_it_skipped_to_the_sitting_extending_it(tiny, monkeypatch):
    """Sitting A (no --units) resumes a record whose T1 is complete and trains T2; meanwhile sitting B
    extends T1 (--epochs 4 --units *-T1-*) and is stopped mid-way. A's writes take T1 from the disk: B's
    extension (its state, its segment) survives A's end, and the record stays incomplete."""
    separate = replace(TINY, jobs=(replace(TINY.jobs[0], per_step_loss=False), TINY.jobs[1]))
    monkeypatch.setitem(suites.SUITES, "tiny", separate)
    t1, t2 = (u.id for u in runner.units(separate, None)[:2])
    runner.run(tiny("run", units=(t1, "throughput-*")), log=quiet)
    real_run_unit = runner.Runner.run_unit

    def run_unit(self, unit, record, path):
        if self.opts.units == ("*-T1-*",):  # B: stopped as it starts extending T1
            raise KeyboardInterrupt
        if unit.id == t2:  # A, training T2: B begins and is stopped
            with pytest.raises(KeyboardInterrupt):
                runner.run(replace(tiny("run", resume=True, units=("*-T1-*",)), epochs=4), log=quiet)
        return real_run_unit(self, unit, record, path)

    monkeypatch.setattr(runner.Runner, "run_unit", run_unit)
    done, path = runner.run(tiny("run", resume=True), log=quiet)
    on_disk = records.read(path)
    for rec in (done, on_disk):
        assert rec["jobs"][t2]["status"] == "complete"
        assert rec["jobs"][t1]["status"] == "incomplete" and "extending_from" in rec["jobs"][t1]
        assert rec["status"] == "incomplete" and "another sitting" in rec["error"]
        assert len(rec["segments"]) == 3
    monkeypatch.setattr(runner.Runner, "run_unit", real_run_unit)
    extended, _ = runner.run(replace(tiny("run", resume=True, units=("*-T1-*",)), epochs=4), log=quiet)
    assert extended["status"] == "complete" and extended["jobs"][t1]["budget"]["epochs"] == 4


def test_a_sitting_without_units_owns_the_whole_record(tiny, monkeypatch):
    """Without --units a sitting trains every unit: it writes the record as it holds it, reading nothing back."""
    from bench import resume

    monkeypatch.setattr(resume, "merge_other_sittings", lambda *a: pytest.fail("merged without --units"))
    rec, _ = runner.run(tiny("run"), log=quiet)
    assert rec["status"] == "complete"


def _separate_units(monkeypatch):
    """TINY with one unit per glimpse count (T1, T2) and its throughput unit."""
    separate = replace(TINY, jobs=(replace(TINY.jobs[0], per_step_loss=False), TINY.jobs[1]))
    monkeypatch.setitem(suites.SUITES, "tiny", separate)
    return [u.id for u in runner.units(separate, None)]


def test_a_sitting_at_a_smaller_budget_leaves_units_finished_under_a_larger_one_alone(tiny, monkeypatch):
    """T1 trained to 4 epochs; a resume at the suite's 2 trains T2 and skips T1, saying why, where it
    used to take the smaller budget for an extension: re-evaluate T1 and file its 4 epochs as a
    2-epoch run."""
    t1, t2, _ = _separate_units(monkeypatch)
    _, path = runner.run(replace(tiny("run", units=(t1, "throughput-*")), epochs=4), log=quiet)
    first = records.read(path)
    lines = []
    done, _ = runner.run(tiny("run", resume=True), log=lines.append)
    assert any(f"{t1}: complete in the record (under a larger budget, 4 epochs), skipped" in x for x in lines)
    assert done["jobs"][t1] == first["jobs"][t1] and "earlier" not in done["jobs"][t1]
    assert done["jobs"][t2]["status"] == "complete" and done["jobs"][t2]["budget"]["epochs"] == 2
    assert done["status"] == "complete"


def test_a_unit_being_extended_is_refused_a_sitting_at_a_smaller_budget(tiny, monkeypatch):
    """T1 (2 epochs) is being extended to 4 and stopped in its third epoch; a resume at 2 epochs would
    end it there and record it as finished: it is refused before anything trains, naming the command
    that continues T1, and the record is left as it was."""
    from bench import tasks

    t1, t2, _ = _separate_units(monkeypatch)
    runner.run(tiny("run", units=(t1, "throughput-*")), log=quiet)
    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 6)  # in the extension's third epoch
    with pytest.raises(KeyboardInterrupt):
        runner.run(replace(tiny("run", resume=True, units=(t1,)), epochs=4), log=quiet)
    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    before = Path(tiny("run").out).read_bytes()
    with pytest.raises(runner.ResumeError, match=rf"{t1} has trained 3\.\d epochs of a 4-epoch budget, .*; continue "
                                                 rf"it with --epochs 4 --units {t1}"):
        runner.run(tiny("run", resume=True), log=quiet)
    assert Path(tiny("run").out).read_bytes() == before
    runner.run(tiny("run", resume=True, units=(t2,)), log=quiet)  # the other units go on at their budget
    done, _ = runner.run(replace(tiny("run", resume=True, units=(t1,)), epochs=4), log=quiet)
    assert done["status"] == "complete" and done["jobs"][t1]["budget"]["epochs"] == done["jobs"][t1]["epochs"] == 4


def test_a_new_run_never_writes_over_another_run_s_checkpoints(tiny, tmp_path):
    """Checkpoints go under --checkpoint-dir/<record name>/: a new record of the same name elsewhere (or
    after its record was removed) would train over the other run's state. It is refused before it
    starts, the checkpoints untouched; a dry run writes its own throwaway ones."""
    runner.run(tiny("run"), log=quiet)
    ckpts = sorted((tmp_path / "ckpt" / "run").glob("*.pt"))
    before = [c.read_bytes() for c in ckpts]
    elsewhere = replace(tiny("run"), out=str(tmp_path / "other" / "run.json"))
    with pytest.raises(runner.SettingError, match=r"ckpt/run already holds checkpoints of another run \(classifier-"):
        runner.run(elsewhere, log=quiet)
    assert [c.read_bytes() for c in ckpts] == before and not (tmp_path / "other" / "run.json").exists()
    runner.run(replace(tiny("run"), out=str(tmp_path / "other" / "new.json")), log=quiet)  # another name: fine


def test_closed_units_are_left_alone_by_resume_and_status_until_reopened(tiny, monkeypatch, capsys):
    """T1 trained, T2 never to be: `bench close` retires T2 with its reason; the record no longer counts as
    unfinished, its status shows T2 closed with no command to continue it, and a resume finds nothing to
    train. Closing is refused while a sitting says it is running (--force overrides); --reopen takes it
    back and a resume trains T2."""
    from bench import closing, status
    from bench.cli import main

    t1, t2, _ = _separate_units(monkeypatch)
    _, path = runner.run(tiny("run", units=(t1, "throughput-*")), log=quiet)
    assert status.unfinished(path)
    assert main(["close", str(path), "--units", "*-T1-*", "--reason", "x"]) == 2
    assert "no open (not complete, not closed) unit matches *-T1-*" in capsys.readouterr().err
    assert main(["close", str(path), "--reason", "trained in another record"]) == 0
    assert records.read(path)["closed"][t2]["reason"] == "trained in another record"
    assert not status.unfinished(path)
    text = status.record_status(path)
    assert "1 closed" in text.splitlines()[0] and "continue with" not in text
    assert next(x for x in text.splitlines() if t2 in x).endswith("closed (trained in another record)")
    with pytest.raises(runner.ResumeError, match=r"nothing to resume; 1 unit\(s\) closed"):
        runner.run(tiny("run", resume=True), log=quiet)
    with pytest.raises(runner.ResumeError, match=rf"closed \(bench close --reopen\): {t2}"):
        runner.run(replace(tiny("run", resume=True, units=(t2,)), epochs=4), log=quiet)

    rec = records.read(path)
    rec["segments"][-1]["status"] = "running"  # as a sitting killed with kill -9 leaves it
    records.write(rec, path)
    with pytest.raises(closing.CloseError, match="a sitting is working on it"):
        closing.close(path, "", reopen=True)
    assert closing.close(path, "", reopen=True, force=True) == [t2]
    done, _ = runner.run(tiny("run", resume=True), log=quiet)
    assert done["status"] == "complete" and done["jobs"][t2]["status"] == "complete" and not done["closed"]


def test_a_resume_with_fewer_seeds_leaves_the_others_for_another_sitting(tiny, monkeypatch):
    """Made with --seeds 0,1 and stopped in seed 0: a resume with --seeds 0 trains seed 0 only, and the
    record stays incomplete (seed 1 is left), so its targets are not judged on half of it."""
    from bench import tasks

    orig = interrupt_loss(monkeypatch, tasks.ClassifierTask, 3)
    with pytest.raises(KeyboardInterrupt):
        runner.run(tiny("run", seeds=(0, 1)), log=quiet)
    monkeypatch.setattr(tasks.ClassifierTask, "loss", orig)
    rec, _ = runner.run(tiny("run", resume=True, seeds=(0,)), log=quiet)
    s1 = [u for u in runner.units(TINY, (0, 1)) if u.id.endswith("-s1")]
    assert s1 and rec["status"] == "incomplete" and "units left for another sitting" in rec["error"]
    assert not rec.get("targets")
    done, _ = runner.run(tiny("run", resume=True, seeds=(0, 1)), log=quiet)  # the CLI takes them from the record
    assert done["status"] == "complete" and all(done["jobs"][u.id]["status"] == "complete" for u in s1)


def test_a_sweep_ranks_record_completes_with_its_share_of_the_units(tiny):
    """--sweep-parallel: rank 1 of 2 trains every other unit into its own record, which is complete when
    they are (the other rank's units are in the other record, not left for another sitting)."""
    rec, path = runner.run(tiny("run", sweep_rank=1, sweep_world=2), log=quiet)
    assert path.name == "run.rank1-of-2.json" and rec["status"] == "complete", rec.get("error")
    assert list(rec["jobs"]) == [u.id for u in runner.units(TINY, None)][1::2]
