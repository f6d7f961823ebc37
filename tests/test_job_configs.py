"""A suite job is its data, protocol and budget plus a model config and an `Optim`. Records made
before (flat jobs) and since (nested `model` and `optim`) resume alike; a changed setting is refused
by the name a user sets it by; `bench eval` rebuilds a model from the config its checkpoint stores."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from bench import checkpoints, evaluate, records, resume, runner, suites
from bench.optim import Optim
from bench.training_loop import description_diff
from models.classifier import ClassifierConfig
from models.draw import DRAWConfig
from models.ram import RamConfig

REPO = Path(__file__).resolve().parent.parent
LONG = REPO / "results" / "runs" / "long"
LONG_RECORDS = sorted(LONG.glob("*.json"))


def _json(obj):
    return json.loads(json.dumps(obj))  # what a record holds after a write and a read


def _resume(path: Path, tmp_path: Path) -> tuple[runner.Runner, dict, Path]:
    """Open a copy of the record ``path`` for --resume, as `bench run --resume --out COPY` would."""
    for p in (path, path.with_suffix(".npz")):
        if p.exists():
            shutil.copy(p, tmp_path / p.name)
    rec = records.read(path)
    if rec.get("closed"):  # units retired by `bench close` are reopened in the copy: their ids and checkpoints count
        records.write({k: v for k, v in rec.items() if k != "closed"}, tmp_path / path.name)
    made = rec["config"].get("options", {})  # the overrides it was made with, given again on resume
    given = {k: tuple(made[k]) if isinstance(made.get(k), list) else made.get(k)
             for k in ("glimpses", "on_relapse", "jobs", "settings")}
    # a finished record resumes only to extend it, and a unit being extended only at its larger budget:
    # a larger budget than any opens every record the same way
    extend = 10**6
    r = runner.Runner(runner.RunOptions(suite=rec["suite"], resume=True, out=str(tmp_path / path.name), threads=1,
                                        progress=False, epochs=extend, **given), log=lambda m: None)
    record, opened = r.open_record()
    return r, record, opened


@pytest.mark.parametrize("path", LONG_RECORDS, ids=[p.stem for p in LONG_RECORDS])
def test_the_long_records_resume_with_the_same_units_and_checkpoints(path, tmp_path):
    """The committed long runs (flat jobs or nested), resumed with the overrides they were made with,
    pass the recipe check with today's suites; their units keep their ids and checkpoint files, and
    each committed checkpoint describes the task that resumes it."""
    before = records.read(path)
    r, record, opened = _resume(path, tmp_path)
    assert opened == tmp_path / path.name
    by_id = {u.id: u for u in r.units}
    assert set(before["jobs"]) <= set(by_id)
    for unit_id, done in before["jobs"].items():
        if "checkpoint" not in done:  # the pixel baseline trains in one go, with no checkpoint
            assert unit_id.startswith("baseline-sklearn-"), unit_id
            continue
        assert str(r.checkpoint_path(opened, by_id[unit_id])) == done["checkpoint"]
        ckpt = REPO / done["checkpoint"]
        if ckpt.exists():
            assert description_diff(r._task(by_id[unit_id]), checkpoints.load(ckpt)["task"]) == {}, unit_id
    # the record now keeps the suite nested; the next sitting resumes it too
    nested = _json(record["config"]["suite"]["jobs"])
    trained = [j for j in nested if j["kind"] != "baseline"]  # a baseline's model is its name ("conv")
    assert all(isinstance(j["model"], dict) and isinstance(j["optim"], dict) for j in trained)
    assert trained or all(isinstance(j["model"], str) for j in nested)
    assert resume.check_recipe(nested, r.suite.jobs) == 0
    gained = len(r.suite.jobs) - len(before["config"]["suite"]["jobs"])  # jobs the suite gained after the record began
    unstarted = r._unstarted_jobs(before)  # jobs with no unit in the record may have a newer recipe
    assert gained >= 0 and resume.check_recipe(before["config"]["suite"]["jobs"], r.suite.jobs, unstarted) == gained


FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _flat_table1() -> list[dict]:
    """table1-wsd100's jobs as its record kept them in the flat form of older code (at commit 122d26b,
    without the RAM job a later sitting recorded when the suite had gained it: no unit of it ever
    trained there). Frozen here: a later sitting rewrites the record's config in today's form."""
    return json.loads((FIXTURES / "table1_flat_jobs.json").read_text())


@pytest.mark.parametrize("form", ["flat", "nested"])
def test_a_changed_setting_is_refused_by_its_name(form):
    jobs = suites.TABLE1.jobs
    recorded = _flat_table1() if form == "flat" else _json(suites.as_record(suites.TABLE1)["jobs"])
    assert isinstance(recorded[0].get("model"), dict) == (form == "nested")
    assert resume.check_recipe(recorded, jobs) == len(jobs) - len(recorded)
    for change, says in ((dict(lr=0.002), r"classifier lr: record 0\.001, given 0\.002"),
                         (dict(read_n=8), "classifier read_n: record 12, given 8"),
                         (dict(window_init="default"), "classifier window_init: record 'cover', given 'default'"),
                         (dict(betas=(0.9, 0.99)), r"classifier betas: record .0\.9, 0\.999., given \(0\.9, 0\.99\)"),
                         (dict(decay_epochs=30.0), "classifier decay_epochs: record 40.0, given 30.0"),
                         (dict(valid_limit=100), "classifier valid_limit: record None, given 100")):
        changed = (suites.with_settings(jobs[0], **change),) + jobs[1:]
        with pytest.raises(resume.RecipeChanged, match=says):
            resume.check_recipe(recorded, changed)
    longer = tuple(replace(j, epochs=200, time_budget_min=30.0) if hasattr(j, "epochs") else j for j in jobs)
    assert resume.check_recipe(recorded, longer) == len(jobs) - len(recorded)  # the budget may change


def test_draw_settings_are_checked_in_both_forms():
    jobs = suites.TABLE2.jobs
    flat = json.loads((FIXTURES / "table2_flat_jobs.json").read_text())  # table2-wsd100's, at commit 8085e5c
    assert not isinstance(flat[0].get("model"), dict)
    for recorded in (flat, _json(suites.as_record(suites.TABLE2)["jobs"])):
        assert resume.check_recipe(recorded, jobs) == 0
        with pytest.raises(resume.RecipeChanged, match="draw z_size: record 100, given 50; draw batch_size: "
                                                       "record 64, given 32"):
            resume.check_recipe(recorded, (suites.with_settings(jobs[0], z_size=50, batch_size=32),) + jobs[1:])


def test_a_setting_a_record_predates_counts_as_its_default():
    old = [{k: v for k, v in j.items() if k not in ("window_init", "variant", "clip_norm")} for j in _flat_table1()]
    assert resume.check_recipe(old, suites.TABLE1.jobs) == len(suites.TABLE1.jobs) - len(old)
    with pytest.raises(resume.RecipeChanged, match="classifier clip_norm: record 10.0, given 5.0"):
        resume.check_recipe(old, (suites.with_settings(suites.TABLE1.jobs[0], clip_norm=5.0),) + suites.TABLE1.jobs[1:])


def test_settings_are_named_once_and_set_in_their_part():
    job = suites.TABLE1.jobs[0]
    s = suites.settings(job)
    assert s["lr"] == 1e-3 and s["read_n"] == 12 and s["glimpses"] == (1, 2, 4, 8) and "height" not in s
    v = suites.with_settings(job, lr=2e-3, hidden=128, epochs=5)
    assert (v.optim.lr, v.model.hidden, v.epochs) == (2e-3, 128, 5) and v.optim.schedule == "wsd"
    with pytest.raises(suites.SuiteError, match="no setting 'height'"):
        suites.with_settings(job, height=60)  # the dataset decides the image size
    assert suites.flat(_flat_table1()[0]) == _flat_table1()[0]  # a flat record passes through


def test_jobs_share_an_optimiser_and_the_plugin_carries_it():
    t1 = suites.TABLE1.jobs
    assert t1[0].optim is t1[1].optim and t1[0].optim == Optim(schedule="wsd", warmup_epochs=1.0, decay_epochs=40.0)
    plug = suites.with_plugin(suites.TABLE1, "examples.tiny_glimpse:build").jobs
    assert [(j.dataset, j.glimpses, j.per_step_loss, j.optim, j.epochs, j.seeds, j.seeds_by_glimpses) for j in plug] \
        == [(j.dataset, j.glimpses, j.per_step_loss, j.optim, j.epochs, j.seeds, j.seeds_by_glimpses) for j in t1[:2]]
    with pytest.raises(ValueError, match="unknown schedule"):
        Optim(schedule="cosine")


@pytest.mark.parametrize("kind, cfg, dataset", [
    ("classifier", ClassifierConfig(height=60, width=60, glimpses=3, read_n=5, hidden=24, per_step_loss=True,
                                    window_init="default"), "cluttered60"),
    ("ram", RamConfig(height=60, width=60, glimpses=2, patch=6, scales=2, hidden=16, location_std=0.3), "cluttered60"),
    ("draw", DRAWConfig(height=60, width=60, steps=5, read_n=3, write_n=4, z_size=7, attention=True), "twodigit60"),
])
def test_eval_rebuilds_the_model_from_the_stored_config(kind, cfg, dataset):
    stored = _json(cfg.to_dict())
    job, task = evaluate._job_and_task(kind, stored, dataset, 0, 16, 3, dict(device="cpu"))
    assert task.config() == type(cfg)(**stored)
    if kind == "classifier":
        assert task.eval_glimpses == (1, 2, 3) and job.per_step_loss
    legacy = {k: v for k, v in stored.items() if k != "window_init"}  # checkpoints made before window_init
    if kind != "ram":
        assert evaluate._job_and_task(kind, legacy, dataset, 0, 16, 3, dict(device="cpu"))[1].config().window_init \
            == "cover"


def test_tables_read_the_recipe_of_nested_and_flat_jobs():
    from bench import tables

    for job in (_json(suites.as_record(suites.TABLE1.jobs[0])), _flat_table1()[0]):
        got = tables.unit_job({"jobs": {"u": {"job": job}}}, "u")
        assert (got["lr"], got["batch_size"], got["schedule"], got["window_init"]) == (0.001, 64, "wsd", "cover")



def test_a_checkpoint_that_predates_a_model_field_matches_its_default_only():
    from bench.tasks import DrawTask

    task = DrawTask(suites.TABLE2.jobs[0], 0)
    stored = task.describe()
    del stored["model"]["initial_state"]  # a checkpoint written before the field existed
    assert description_diff(task, stored) == {}
    learned = DrawTask(suites.with_settings(suites.TABLE2.jobs[0], initial_state="learned"), 0)
    assert set(description_diff(learned, stored)) == {"model"}
    stored["lr"] = 2e-3
    assert set(description_diff(task, stored)) == {"lr"}
