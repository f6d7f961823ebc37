"""`bench status`: where each model of a long run stands, read from its checkpoint while it trains and
from the record otherwise, with the core-hours still to go and the command that continues the run."""

from __future__ import annotations

import copy

import pytest
import torch

from bench import cli, records, status
from bench.records import metric
from tests.fixtures.bench_records import make_record

FALLING = [{"epoch": e, "images_seen": 50_000 * e, "valid_error": 0.30 - 0.01 * e} for e in range(1, 21)]


def long_record(tmp_path, checkpoint_state=None):
    """A table1-like record of a suite of its own (2 threads per model): one unit complete, one in
    training (its checkpoint, when given, is fresher than the record), one never started."""
    rec = copy.deepcopy(make_record())
    rec["suite"], rec["status"] = "longtest", "incomplete"
    job = {"kind": "classifier", "dataset": "cluttered100", "epochs": 40, "time_budget_min": None}
    rec["config"] = {"suite": {"name": "longtest", "jobs": [job]}}
    done, going, idle = "clf-T8-s0", "clf-T8-s1", "clf-T8-s2"
    rec["metrics"] = [metric("test_error", 0.05, "fraction", True, 0, glimpses=8, job=done)]
    rec["curves"] = {done: FALLING, going: FALLING[:5]}
    rec["jobs"] = {
        done: {"status": "complete", "job": job, "epochs": 20, "images_seen": 1_000_000, "train_time_s": 1800.0},
        going: {"status": "running", "job": job, "checkpoint": str(tmp_path / "going.pt"),
                "progress": {"epoch": 5, "images_seen": 250_000}},
        idle: {"status": "pending", "job": job},
    }
    if checkpoint_state is not None:
        torch.save(checkpoint_state, tmp_path / "going.pt")
    return records.write(rec, tmp_path / "runs" / "long.json")


def checkpoint(epoch=10, curve=None):
    """What the training loop saves: 781 batches of 64 per epoch, 100 s of training per epoch."""
    return {"epoch": epoch, "images_seen": 49_984 * epoch, "train_time_s": 100.0 * epoch, "finished": False,
            "curve": FALLING[:epoch] if curve is None else curve, "loop": {"epochs": 60, "batches_per_epoch": 781},
            "task": {"batch_size": 64}}


def test_a_unit_in_training_is_read_from_its_checkpoint_with_the_hours_to_go(tmp_path):
    path = long_record(tmp_path, checkpoint())
    s = status.unit_status(records.read(path), "clf-T8-s1")
    assert (s.state, s.epochs, s.budget_epochs, s.images_seen) == ("in training", 10, 60, 499_840)
    assert s.hours == {"core-h": pytest.approx(1000 * 2 / 3600)}  # wall time x 2 threads: kept before bench/cost.py
    assert s.to_go_hours == pytest.approx(50 * 100 * 2 / 3600)  # 50 epochs at 100 s each, 2 threads
    assert s.best_valid == (pytest.approx(0.20), 10) and s.last_valid == pytest.approx(0.20)
    line = status.describe(s)
    assert line.startswith("in training; epoch 10 of 60; 0.50 M images; 0.56 core-h; valid 20.00% (best 20.00% at "
                           "epoch 10)")
    assert line.endswith("; about 2.8 core-h of training to go at its overall rate")


def test_a_loop_that_does_not_count_its_batches_is_timed_by_its_images_so_far(tmp_path):
    """The conv baseline's loop saves batches_per_epoch None: an epoch's images come from the progress."""
    state = checkpoint()
    state["loop"]["batches_per_epoch"] = None
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.to_go_hours == pytest.approx(50 * 100 * 2 / 3600)


def test_the_hours_to_go_take_the_latest_sitting_s_rate_when_it_was_long_enough(tmp_path):
    """Epochs 1-8 took 100 s each on one machine; epochs 9-10 took 400 s each on a slower one: the 50
    epochs to go are timed at 400 s. A sitting under 5 minutes is too short to time: the overall rate."""
    state = checkpoint()
    state.update(train_time_s=800.0 + 800.0, sitting_start={"images_seen": 49_984 * 8, "train_time_s": 800.0})
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.to_go_hours == pytest.approx(50 * 400 * 2 / 3600) and s.to_go_rate == "its last sitting's"
    state.update(train_time_s=800.0 + 200.0, sitting_start={"images_seen": 49_984 * 8, "train_time_s": 800.0})
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.to_go_hours == pytest.approx(50 * 100 * 2 / 3600) and s.to_go_rate == "its overall"


def test_a_flat_curve_before_a_scheduled_decay_is_said_to_say_little(tmp_path):
    """Flat for 10 epochs at epoch 25 of 60, under a schedule that decays over its last 20 epochs: the line
    names the decay still ahead. Once in the decay, or without one, the verdict stands alone."""
    flat = [{"epoch": e, "images_seen": 50_000 * e, "valid_error": max(0.30 - 0.01 * e, 0.15)} for e in range(1, 26)]
    wsd = {"kind": "wsd", "warmup_epochs": 1.0, "decay_epochs": 20.0, "min_lr_ratio": 0.0}
    state = checkpoint(epoch=25, curve=flat)
    state["loop"]["schedule"] = wsd
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.verdict["status"] == "flat" and s.decay_from == 40
    assert ("flat for the last 10 epochs (best valid at epoch 15), but in the stable phase, which says little: "
            "its decay begins at epoch 40;") in status.describe(s)
    state = checkpoint(epoch=45, curve=flat + [dict(flat[-1], epoch=e) for e in range(26, 46)])
    state["loop"]["schedule"] = wsd
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.decay_from is None and "stable phase" not in status.describe(s)
    s = status.unit_status(records.read(long_record(tmp_path, checkpoint(epoch=25, curve=flat))), "clf-T8-s1")
    assert s.decay_from is None and "flat for the last 10 epochs" in status.describe(s)
    assert "stable phase" not in status.describe(s)


def test_without_a_readable_checkpoint_the_record_speaks(tmp_path):
    path = long_record(tmp_path)
    (tmp_path / "going.pt").write_bytes(b"not a checkpoint")
    s = status.unit_status(records.read(path), "clf-T8-s1")
    assert (s.state, s.epochs, s.images_seen, s.hours, s.to_go_hours) == ("in training", 5, 250_000, {}, None)


def test_finished_and_never_started_units_and_the_command_that_continues_the_record(tmp_path):
    text = status.record_status(long_record(tmp_path, checkpoint()))
    lines = text.splitlines()
    assert lines[0].endswith("(suite longtest, incomplete, 3 units, 2 thread(s) per model)")
    done = next(x for x in lines if "clf-T8-s0" in x)
    assert ("complete; epoch 20 of 40; 1.00 M images; 1.00 core-h; valid 10.00% (best 10.00% at epoch 20); "
            "still improving (best valid fell 10.00 pts in the last 10 epochs); test error 5.00% at T = 8") in done
    assert next(x for x in lines if "clf-T8-s2" in x).endswith("not started")
    assert lines[-1].strip() == f"continue with: python -m bench run --suite longtest --threads 2 --resume --out " \
                                f"{tmp_path / 'runs' / 'long.json'}"


def test_a_run_on_a_gpu_counts_its_hours_on_that_device(tmp_path):
    path = long_record(tmp_path, checkpoint())
    rec = records.read(path)
    rec["machine"].update(device="cuda", device_name="NVIDIA H200")
    s = status.unit_status(rec, "clf-T8-s1")
    assert s.hours_unit == "h on NVIDIA H200" and s.hours == {"h on NVIDIA H200": pytest.approx(1000 / 3600)}


def test_a_run_begun_on_a_gpu_and_continued_on_a_cpu_counts_each_part_where_it_ran(tmp_path):
    """1000 s on the GPU before the cost was kept, then 2 CPU epochs of 1,500 core-seconds each (wall
    time would say 400 s x 2 threads each): the hours so far and to go are in each one's unit."""
    state = checkpoint(epoch=12)
    state.update(train_time_s=1000.0 + 800.0, train_cost={"unattributed": 1000.0, "cpu": 3000.0},
                 sitting_start={"images_seen": 49_984 * 10, "train_time_s": 1000.0,
                                "train_cost": {"unattributed": 1000.0}})
    rec = records.read(long_record(tmp_path, state))
    rec["machine"].update(device="cuda", device_name="NVIDIA H200")
    rec["machine_resumed"] = {**rec["machine"], "device": "cpu", "device_name": None}
    s = status.unit_status(rec, "clf-T8-s1")
    assert s.hours == {"h on NVIDIA H200": pytest.approx(1000 / 3600), "core-h": pytest.approx(3000 / 3600)}
    assert (s.hours_unit, s.to_go_rate) == ("core-h", "its last sitting's")
    assert s.to_go_hours == pytest.approx(48 * 1500 / 3600)  # 48 epochs at its CPU sitting's 1,500 core-s each
    assert "; 0.28 h on NVIDIA H200 + 0.83 core-h; " in status.describe(s)


def test_the_command_shows_unfinished_records_of_a_folder_and_every_record_named(tmp_path, capsys):
    long_record(tmp_path, checkpoint())
    finished = copy.deepcopy(make_record())
    records.write(finished, tmp_path / "runs" / "done.json")
    assert cli.main(["status", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "long.json" in out and "done.json" not in out
    assert cli.main(["status", "--all", str(tmp_path / "runs")]) == 0
    assert "done.json" in capsys.readouterr().out
    assert cli.main(["status", str(tmp_path / "runs" / "done.json")]) == 0
    assert "done.json (suite quick, complete" in capsys.readouterr().out
    (tmp_path / "runs" / "long.json").unlink()
    assert cli.main(["status", str(tmp_path / "runs")]) == 0
    assert "every record there is complete (1); --all shows them too" in capsys.readouterr().out
    assert cli.main(["status", str(tmp_path / "missing.json")]) == cli.EXIT_USAGE
    assert "missing.json: no such record or folder" in capsys.readouterr().err


def test_units_a_resume_would_begin_are_listed_as_not_started(tmp_path):
    """A run of table1's T = 8 classifier (--jobs 0 --glimpses 8 --set hidden=512) trained one --units
    sitting on seed 0 so far: seeds 1 and 2, which a resume would train, are listed too."""
    rec = copy.deepcopy(make_record())
    rec["suite"], rec["status"] = "table1", "incomplete"
    rec["config"] = {"options": {"jobs": [0], "glimpses": [8], "settings": {"hidden": 512}, "units": ["*-s0"]}}
    rec["curves"] = {"classifier-cluttered100-T8-s0": FALLING[:3]}
    rec["jobs"] = {"classifier-cluttered100-T8-s0": {"status": "incomplete"}}
    text = status.record_status(records.write(rec, tmp_path / "runs" / "h512.json"))
    assert "(suite table1, deviating: --set hidden=512, incomplete, 3 units," in text
    assert [line.split()[0] for line in text.splitlines()[1:4]] == [
        f"classifier-cluttered100-T8-s{s}" for s in (0, 1, 2)]
    assert text.splitlines()[2].endswith("not started") and text.splitlines()[3].endswith("not started")
    rec["config"]["options"]["settings"] = {"no_such_setting": 1}  # a suite that no longer expands alike
    assert "3 units" not in status.record_status(records.write(rec, tmp_path / "runs" / "h512.json"))


def table1_record(options=None, jobs=None, products="float32"):
    rec = copy.deepcopy(make_record())
    rec.update(suite="table1", status="incomplete", jobs=jobs or {}, segments=[{"training_products": products}])
    rec["machine"]["threads"] = 1
    rec["config"] = {"options": options or {}}
    return rec


T4, T8 = "classifier-cluttered100-T4-s0", "classifier-cluttered100-T8-s0"


def test_a_unit_being_extended_is_continued_at_its_budget_and_by_name():
    """T4 is being extended to 200 epochs (the suite's budget is 100), T8 goes on at 100: a plain resume
    would refuse T4 and --epochs 200 alone would extend the record's finished units, so each gets its
    own command. The last sitting trained on bf16 products: so do the commands."""
    job = {"kind": "classifier", "dataset": "cluttered100", "epochs": 200, "time_budget_min": None}
    rec = table1_record(jobs={T4: {"status": "incomplete", "job": job}}, products="bfloat16")
    base = "python -m bench run --suite table1 --threads 1 --training-products auto"
    assert status.continue_commands(rec, "r.json", [T4, T8]) == [
        f"{base} --units {T8} --resume --out r.json", f"{base} --epochs 200 --units {T4} --resume --out r.json"]
    assert status.continue_commands(rec, "r.json", [T8]) == [f"{base} --resume --out r.json"]


def test_a_record_made_with_epochs_is_continued_with_them():
    """Made with --epochs 150: a resume without it would train its units not begun to the suite's 100."""
    rec = table1_record(options={"epochs": 150})
    assert status.continue_commands(rec, "r.json", [T8]) == [
        f"python -m bench run --suite table1 --threads 1 --epochs 150 --units {T8} --resume --out r.json"]


def test_a_unit_whose_training_ended_before_its_evaluation_says_only_the_evaluation_is_left(tmp_path):
    state = checkpoint(epoch=60)
    state["finished"] = True
    s = status.unit_status(records.read(long_record(tmp_path, state)), "clf-T8-s1")
    assert s.state == "in training" and s.to_go_hours is None and s.evaluation_left
    assert status.describe(s).endswith("; training done; its test evaluation is left (a resume runs it alone)")


def test_a_record_made_with_a_plugin_model_expands_to_its_units():
    """Made with --model and --epochs 20: its open units are the plug-in's (not the built-in suite's),
    and the command that continues it keeps its budget."""
    from bench import closing

    unit = "plugin-tiny_glimpse-cluttered60-T8-perstep-s0"
    rec = copy.deepcopy(make_record())
    rec.update(suite="quick", status="incomplete", jobs={}, segments=[{"training_products": "float32"}])
    rec["machine"]["threads"] = 1
    rec["config"] = {"options": {"model": "examples.tiny_glimpse:build", "epochs": 20}}
    assert status.units_to_begin(rec) == [unit] and closing.open_units(rec) == [unit]
    assert status.continue_commands(rec, "r.json", [unit]) == [
        f"python -m bench run --suite quick --threads 1 --epochs 20 --units {unit} --resume --out r.json"]
