"""Optim.on_relapse="rollback": a validation point that relapses (bench/plateau.py) brings the best-valid
weights back, resets Adam and halves the learning rate for the rest of the run; checkpoints keep it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench import checkpoints, plateau, resume, suites
from bench.optim import Optim
from bench.training_loop import LoopConfig, TrainingError, train
from test_bench_loop import ToyTask, params

# valid error by epoch (1-based): escapes at 1, best at 2, relapses at 3 (0.9 > 0.3 + 0.05), then 0.32
SCRIPT = {1: 0.5, 2: 0.3, 3: 0.9, 4: 0.32}


class ScriptedTask(ToyTask):
    """ToyTask whose valid error is forced by epoch; it keeps the weights each validation saw."""

    def __init__(self, script=SCRIPT, **kw):
        super().__init__(**kw)
        self.script, self.epoch, self.seen = script, None, {}

    def batches(self, epoch):
        self.epoch = epoch
        return super().batches(epoch)

    @torch.no_grad()
    def evaluate(self, model, split):
        self.seen[self.epoch + 1] = params(model).clone()
        return {"error": self.script[self.epoch + 1]}


def cfg(on_relapse, epochs=3):
    return LoopConfig(epochs=epochs, lr=0.05, progress=False, on_relapse=on_relapse)


def test_rollback_restores_best_weights_resets_adam_and_halves_the_rate(tmp_path):
    task, ck, logs, status = ScriptedTask(), tmp_path / "run.pt", [], {}
    res = train(task, cfg("rollback"), ck, log=logs.append, status=status)
    assert res.lr_scale == 0.5
    assert res.rollbacks == [{"epoch": 3, "step": 18, "images_seen": 288, "metric": "valid_error", "value": 0.9,
                              "best_epoch": 2, "best_value": 0.3, "lr_scale": 0.5}]
    assert any(m.startswith("RELAPSE at epoch 3") and "ROLLED BACK" in m for m in logs)
    assert [e.get("rollback", False) for e in res.curve] == [False, False, True]
    assert res.best["epoch"] == 2 and res.best["value"] == 0.3
    saved = checkpoints.load(ck)  # written after the rollback: the model is the epoch-2 model, Adam is fresh
    model = task.build()
    model.load_state_dict(saved["model"])
    assert torch.equal(params(model), task.seen[2])
    assert not torch.equal(task.seen[3], task.seen[2])  # the relapsed weights were not the best ones
    assert saved["optimizer"]["state"] == {}
    assert saved["lr_scale"] == 0.5 and saved["rollbacks"] == res.rollbacks

    # resume under a longer budget: the same scale and rollbacks carry on; the next epoch trains at lr/2
    task2, status2 = ScriptedTask(), {}
    res2 = train(task2, cfg("rollback", epochs=4), ck, resume=True, log=lambda m: None, status=status2)
    assert res2.resumed and res2.epochs_done == 4
    assert res2.lr_scale == 0.5 and res2.rollbacks == res.rollbacks
    assert status2["lr"] == pytest.approx(0.025)
    assert [e.get("rollback", False) for e in res2.curve] == [False, False, True, False]  # 0.32: within the margin
    assert json.loads(json.dumps(res2.rollbacks)) == res2.rollbacks  # goes into a JSON record as it is


def test_continue_changes_nothing(tmp_path):
    task, ck = ScriptedTask(), tmp_path / "run.pt"
    logs, status = [], {}
    res = train(task, cfg("continue"), ck, log=logs.append, status=status)
    assert res.lr_scale == 1.0 and res.rollbacks == []
    assert not any("RELAPSE" in m for m in logs)
    assert all("rollback" not in e for e in res.curve) and len(res.curve) == 3
    assert status["lr"] == pytest.approx(0.05)
    saved = checkpoints.load(ck)
    model = task.build()
    model.load_state_dict(saved["model"])
    assert torch.equal(params(model), task.seen[3])  # the last weights, not the best ones
    assert saved["optimizer"]["state"] != {}
    assert res.best["epoch"] == 2  # selection is unchanged: the result is still the best-valid model
    assert torch.equal(params(res.model), task.seen[2])


def test_no_rollback_before_the_curve_left_its_plateau(tmp_path):
    res = train(ScriptedTask({1: 0.8, 2: 0.75, 3: 0.9}), cfg("rollback"), tmp_path / "run.pt", log=lambda m: None)
    assert res.rollbacks == [] and res.lr_scale == 1.0


def test_a_checkpoint_made_before_rollbacks_resumes_with_none(tmp_path):
    ck = tmp_path / "run.pt"
    train(ScriptedTask({1: 0.5, 2: 0.3}), cfg("rollback", epochs=2), ck, log=lambda m: None)
    old = checkpoints.load(ck)
    del old["lr_scale"], old["rollbacks"]
    checkpoints.save(ck, old)
    res = train(ScriptedTask({1: 0.5, 2: 0.3, 3: 0.32}), cfg("rollback"), ck, resume=True, log=lambda m: None)
    assert res.resumed and res.epochs_done == 3 and res.lr_scale == 1.0 and res.rollbacks == []


def test_optim_refuses_an_unknown_on_relapse():
    assert Optim().on_relapse == "continue"
    assert Optim(on_relapse="rollback").on_relapse == "rollback"
    with pytest.raises(ValueError, match="Optim.on_relapse must be one of 'continue', 'rollback', got 'rewind'"):
        Optim(on_relapse="rewind")


def test_the_loop_refuses_rollback_without_a_rule():
    task = ScriptedTask()
    task.select = "accuracy"  # no plateau rule is known for valid_accuracy
    with pytest.raises(TrainingError, match="needs a plateau rule"):
        train(task, cfg("rollback"), None, log=lambda m: None)
    # an explicit rule (what the runner passes from the job's kind) is used as given
    assert plateau.for_metric("valid_error") is plateau.CLASSIFIER
    assert plateau.for_metric("valid_nll_elbo") is plateau.DRAW


def test_the_setting_flows_from_the_job_and_old_records_resume():
    from bench.runner import Runner

    jobs = suites.TABLE1.jobs
    old = [{k: v for k, v in suites.flat(suites.as_record(j)).items() if k != "on_relapse"} for j in jobs]
    assert resume.check_recipe(json.loads(json.dumps(old)), jobs) == 0  # missing: the default, "continue"
    rollback = (suites.with_settings(jobs[0], on_relapse="rollback"),) + jobs[1:]
    with pytest.raises(resume.RecipeChanged, match="on_relapse: record 'continue', given 'rollback'"):
        resume.check_recipe(old, rollback)

    class _Task:
        def schedule(self):
            return rollback[0].optim.lr_schedule()

        def batches_per_epoch(self):
            return 100

    runner = Runner.__new__(Runner)
    runner.opts = type("O", (), {"dry_run": False, "progress": False, "checkpoint_every_s": 300.0,
                                 "compact_checkpoints": False})()
    loop_cfg = runner._loop_config(rollback[0], _Task())
    assert loop_cfg.on_relapse == "rollback" and loop_cfg.relapse_rule is plateau.CLASSIFIER
    assert runner._loop_config(jobs[0], _Task()).on_relapse == "continue"


def test_on_relapse_from_the_command_line_is_part_of_the_recipe():
    from bench import records
    from bench.cli import build_parser

    args = build_parser().parse_args(["run", "--suite", "table1", "--on-relapse", "rollback"])
    assert args.on_relapse == "rollback"
    table1 = suites.override(suites.TABLE1, on_relapse=args.on_relapse)
    assert {j.optim.on_relapse for j in table1.jobs if hasattr(j, "optim")} == {"rollback"}
    assert [j.kind for j in table1.jobs] == [j.kind for j in suites.TABLE1.jobs]
    long_record = Path(__file__).resolve().parent.parent / "results/runs/long/table1-wsd100.json"
    recorded = records.read(long_record)["config"]["suite"]["jobs"]
    with pytest.raises(resume.RecipeChanged, match="classifier on_relapse: record 'continue', given 'rollback'"):
        resume.check_recipe(recorded, table1.jobs)
