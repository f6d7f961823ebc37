"""`bench tables`: every seed listed with mean and spread, linked to its record, paper beside."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from bench import records, tables
from bench.records import metric
from tests.fixtures.bench_records import make_record


def table_records(tmp_path):
    base = make_record()
    clf = copy.deepcopy(base)
    clf["suite"] = "table1"
    clf["metrics"] = [metric("test_error", e, "fraction", True, s, glimpses=8, protocol="separate",
                             dataset="cluttered100", test_images=10000) for s, e in ((0, 0.05), (1, 0.07), (2, 0.06))]
    clf["metrics"].append(metric("test_error", 0.30, "fraction", True, 0, protocol="baseline-conv",
                                 dataset="cluttered100"))
    draw = copy.deepcopy(base)
    draw["suite"], draw["status"] = "table2", "incomplete"
    common = dict(dataset="binarized", attention=True, steps=64, binarization="fixed")
    draw["metrics"] = [metric("nll_elbo", 120.0, "nats", True, 0, test_images=10000, **common),
                       metric("nll_iwae", 115.5, "nats", True, 0, k=1000, test_images=200, **common)]
    failed = copy.deepcopy(clf)
    failed["status"] = "failed"
    failed["metrics"] = [metric("test_error", 0.9, "fraction", True, 0, glimpses=8, protocol="separate",
                                dataset="cluttered100")]
    for name, rec in (("a", clf), ("b", draw), ("c", failed)):
        records.write(rec, tmp_path / "runs" / f"{name}.json")
    return tmp_path / "runs"


def test_tables_list_every_seed_with_spread_and_paper(tmp_path):
    text = tables.markdown(table_records(tmp_path))
    row = next(line for line in text.splitlines() if "| separate | 8 |" in line)
    assert "6.00% +- 1.00% (5.00%, 7.00%, 6.00%)" in row  # mean, std, every seed in seed order
    assert "| 0, 1, 2 |" in row and "3.36%" in row and "a.json" in row
    assert "90.00%" not in text, "a failed run's numbers are not tabled"
    conv = next(line for line in text.splitlines() if line.startswith("| 2-layer conv net"))
    assert "30.00%" in conv and "14.35%" in conv
    draw = next(line for line in text.splitlines() if line.startswith("| DRAW, 64 steps, attention"))
    assert "120.00" in draw and "115.50 (k=1000, 200 images)" in draw and "<= 80.97" in draw


def test_the_iwae_cell_gives_the_elbo_of_the_same_images_where_the_record_has_it(tmp_path):
    runs = table_records(tmp_path)
    rec = records.read(runs / "b.json")
    common = {k: v for k, v in rec["metrics"][1]["params"].items()}
    rec["metrics"].append(metric("nll_elbo_mc", 119.25, "nats", True, 0, **common))
    records.write(rec, runs / "b.json")
    draw = next(line for line in tables.markdown(runs).splitlines() if line.startswith("| DRAW, 64 steps, attention"))
    assert "| 115.50 (k=1000, 200 images; their ELBO 119.25) |" in draw
    assert "| 120.00 |" in draw  # the ELBO column stays the one over the whole test set


def test_tables_cli(tmp_path, capsys):
    from bench.cli import main

    assert main(["tables", "--records", str(table_records(tmp_path))]) == 0
    assert "### Table 1" in capsys.readouterr().out


def test_rows_never_pool_budgets_and_mark_a_run_left_on_the_plateau(tmp_path):
    """Two records of one model with other budgets give two rows, each with its recipe and the
    training behind it; a seed whose curve never left chance level is marked, not passed off."""
    base = make_record()
    for name, minutes, curve_s1 in (("short", 4, [0.85, 0.82]), ("long", None, [0.8, 0.3, 0.1])):
        rec = copy.deepcopy(base)
        rec["suite"] = "table1"
        job = {"kind": "classifier", "dataset": "cluttered100", "per_step_loss": False, "lr": 0.001,
               "batch_size": 64, "schedule": "wsd", "warmup_epochs": 1.0, "decay_epochs": 40.0,
               "window_init": "cover", "epochs": 100, "time_budget_min": minutes}
        rec["config"] = {"suite": {"name": "table1", "jobs": [job]}}
        rec["metrics"], rec["curves"], rec["jobs"] = [], {}, {}
        for s, curve in ((0, [0.8, 0.2]), (1, curve_s1)):
            unit = f"classifier-cluttered100-T8-s{s}"
            rec["metrics"].append(metric("test_error", curve[-1], "fraction", True, s, glimpses=8,
                                         protocol="separate", dataset="cluttered100", job=unit))
            rec["curves"][unit] = [{"epoch": i + 1, "images_seen": 50000 * (i + 1), "valid_error": v}
                                   for i, v in enumerate(curve)]
            rec["jobs"][unit] = {"status": "complete", "kind": "classifier", "epochs": len(curve),
                                 "images_seen": 50000 * len(curve), "train_time_s": 360.0 * len(curve)}
        records.write(rec, tmp_path / "runs" / f"{name}.json")
    rows = [line for line in tables.markdown(tmp_path / "runs").splitlines() if "| separate | 8 |" in line]
    assert len(rows) == 2
    short = next(r for r in rows if "short.json" in r)
    long = next(r for r in rows if "long.json" in r)
    assert "budget 4 min" in short and "budget 100 epochs" in long and "wsd lr 0.001, batch 64" in long
    assert "2-3 epochs, 0.10-0.15 M images, 0.40-0.60 core-h" in long  # 2 threads x 360 s per epoch
    assert "seed 1 never left the starting plateau" in short and "plateau" not in long


def test_draw_cost_counts_learned_initial_states(tmp_path):
    """DRAW's cost from its job in the suite config counts the learned c_0, h^enc_0, h^dec_0; a job
    recorded without ``initial_state`` (before it existed) starts from zeros."""
    import json

    import pandas as pd

    from models.draw import DRAW, DRAWConfig

    job = {"kind": "draw", "dataset": "binarized", "attention": True, "steps": 4, "read_n": 2, "write_n": 5,
           "enc_hidden": 8, "dec_hidden": 6, "z_size": 3}
    costs = {}
    for init in (None, "zero", "learned"):
        path = tmp_path / f"{init}.json"
        jobs = [job if init is None else dict(job, initial_state=init)]
        path.write_text(json.dumps({"config": {"suite": {"jobs": jobs}}}))
        costs[init] = tables._draw_cost(pd.DataFrame({"record": [str(path)]}), "binarized", True, 4)
    learned = DRAW(DRAWConfig(steps=4, enc_hidden=8, dec_hidden=6, z_size=3, initial_state="learned"))
    assert costs[None] == costs["zero"]
    assert costs["learned"][0] == learned.param_count() == costs["zero"][0] + 28 * 28 + 8 + 6


def test_the_recipe_column_names_the_relapse_setting_and_each_rollback(tmp_path):
    import json
    from dataclasses import replace

    from bench import suites
    from bench.optim import Optim

    job = suites.TABLE1.jobs[0]
    done = {"epochs": 100, "images_seen": 5_000_000, "train_time_s": 3600.0}
    rec = {"machine": {"threads": 1}, "jobs": {
        "u-s0": {**done, "job": suites.as_record(replace(job, optim=replace(job.optim, on_relapse="rollback"))),
                 "rollbacks": [{"epoch": 7}, {"epoch": 37}]},
        "u-s1": {**done, "job": suites.as_record(replace(job, optim=replace(job.optim, on_relapse="rollback"))),
                 "rollbacks": []},
        "v-s0": {**done, "job": suites.as_record(replace(job, optim=Optim()))}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(rec))
    def rows(*units):
        return pd.DataFrame({"record": [str(path)] * len(units), "p_job": list(units)})

    assert tables._training(rows("u-s0", "u-s1")).endswith("; on relapse: rollback (rolled back: s0 at epochs 7, 37)")
    plain = tables._training(rows("v-s0"))
    assert "relapse" not in plain and "cover init" in plain


def _one_seed_record(seed: int, error: float, lr: float = 0.001, epochs: int = 100) -> dict:
    """A record of one RAM model, as one process of a sweep run side by side writes it."""
    rec = copy.deepcopy(make_record())
    rec["suite"] = "table1"
    unit = f"ram-cluttered100-T4-s{seed}"
    job = {"kind": "ram", "dataset": "cluttered100", "glimpses": [4], "patch": 12, "scales": 4, "lr": lr,
           "batch_size": 64, "schedule": "wsd", "warmup_epochs": 1.0, "decay_epochs": 40.0, "epochs": epochs,
           "time_budget_min": None, "seeds_by_glimpses": [[4, [0, 1, 2]]], "seeds": None}
    rec["config"] = {"suite": {"name": "table1", "jobs": [job]}}
    rec["metrics"] = [metric("test_error", error, "fraction", True, seed, glimpses=4, protocol="separate",
                             dataset="cluttered100", model="ram", patch=12, scales=4, location="mean", job=unit)]
    rec["curves"] = {}
    rec["jobs"] = {unit: {"status": "complete", "kind": "ram", "job": job, "epochs": epochs,
                          "images_seen": 50000 * epochs, "train_time_s": 3600.0}}
    return rec


def test_records_of_one_recipe_trained_side_by_side_share_a_row(tmp_path):
    """Seeds trained as separate processes (one record each) pool into one row with every seed and
    every record linked; another budget or another recipe never pools."""
    runs = tmp_path / "runs"
    for seed, error in ((0, 0.10), (1, 0.12), (2, 0.11)):
        records.write(_one_seed_record(seed, error), runs / f"ram-s{seed}.json")
    records.write(_one_seed_record(0, 0.20, epochs=50), runs / "ram-short-s0.json")
    records.write(_one_seed_record(1, 0.30, lr=0.002), runs / "ram-lr-s1.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 3  # the pool, the 50-epoch budget, lr 0.002
    pooled = next(r for r in rows if "| 0, 1, 2 |" in r)
    assert "11.00% +- 1.00% (10.00%, 12.00%, 11.00%)" in pooled
    assert all(f"ram-s{s}.json" in pooled for s in range(3))
    assert "budget 100 epochs; 100 epochs, 5.00 M images, 2.00 core-h" in pooled  # 2 threads x 1 h each
    assert any("ram-short-s0.json" in r and "20.00%" in r for r in rows)
    assert any("ram-lr-s1.json" in r and "30.00%" in r for r in rows)


def test_records_that_trained_the_same_seed_never_pool(tmp_path):
    runs = tmp_path / "runs"
    for seed, error in ((0, 0.10), (1, 0.12), (2, 0.11)):
        records.write(_one_seed_record(seed, error), runs / f"ram-s{seed}.json")
    records.write(_one_seed_record(2, 0.13), runs / "ram-again-s2.json")  # which seed 2 is pooled? neither
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 4 and all(len(r.split("| 0, 1, 2 |")) == 1 for r in rows)



def test_a_record_holding_one_seed_twice_never_averages_the_two():
    rows = pd.DataFrame({"record": ["r.json"] * 3, "p_job": ["m-s0", "m-again-s0", "m-s1"], "seed": [0, 0, 1],
                         "value": [0.05, 0.07, 0.06]})
    groups = tables.runs(rows, [])  # which seed 0 would pool with seed 1? neither: a row per model
    assert sorted(list(g["value"]) for _, g in groups) == [[0.05], [0.06], [0.07]]
    unnamed = rows.drop(columns="p_job")
    assert sorted(len(g) for _, g in tables.runs(unnamed, [])) == [1, 1, 1]

def test_baseline_rows_never_pool_runs(tmp_path):
    """The conv net of a 4-minute run and of a 20-epoch run are two rows, each with its training."""
    for name, minutes, error in (("short", 4, 0.35), ("long", None, 0.05)):
        rec = copy.deepcopy(make_record())
        rec["suite"] = "table1"
        job = {"kind": "baseline", "model": "conv", "dataset": "cluttered100", "epochs": 20, "time_budget_min": minutes}
        rec["config"] = {"suite": {"name": "table1", "jobs": [job]}}
        rec["metrics"] = [metric("test_error", error, "fraction", True, 0, protocol="baseline-conv",
                                 dataset="cluttered100")]
        rec["jobs"] = {"baseline-conv-cluttered100-s0": {"status": "complete", "kind": "baseline", "job": job,
                                                         "epochs": 20, "train_images_seen": 1_000_000,
                                                         "train_time_s": 1800.0}}
        rec["curves"] = {"baseline-conv-cluttered100-s0": [{"epoch": e, "valid_error": 0.5 / e} for e in range(1, 21)]}
        records.write(rec, tmp_path / "runs" / f"{name}.json")
    rows = [line for line in tables.markdown(tmp_path / "runs").splitlines() if line.startswith("| 2-layer conv net")]
    assert len(rows) == 2 and not any("+-" in r for r in rows)
    assert any("budget 4 min" in r and "35.00%" in r and "short.json" in r for r in rows)
    assert any("budget 20 epochs; 20 epochs, 1.00 M images, 1.00 core-h; at the end: still improving" in r
               and "5.00%" in r for r in rows)


def test_each_row_says_whether_validation_was_still_improving_when_training_ended(tmp_path):
    """From each model's curve in its record (bench/convergence.py): a word per seed for a pooled row,
    a phrase for one model, and the conv net's too; a seed without a curve is left out, not guessed."""
    runs = tmp_path / "runs"
    falling = [{"epoch": e, "valid_error": 0.30 - 0.001 * e} for e in range(1, 21)]
    flat = [{"epoch": e, "valid_error": 0.2 if e != 5 else 0.1} for e in range(1, 21)]
    for seed, points in ((0, flat), (1, falling), (2, None)):
        rec = _one_seed_record(seed, 0.1)
        if points:
            rec["curves"] = {f"ram-cluttered100-T4-s{seed}": points}
        records.write(rec, runs / f"ram-s{seed}.json")
    single = _one_seed_record(0, 0.2, epochs=20)
    single["curves"] = {"ram-cluttered100-T4-s0": falling}
    records.write(single, runs / "ram-single.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    pooled = next(r for r in rows if "| 0, 1, 2 |" in r)
    assert "valid over the last 10 epochs: s0 flat, s1 improving (1.00 pts);" in pooled
    one = next(r for r in rows if "ram-single.json" in r)
    assert "at the end: still improving (best valid fell 1.00 pts in the last 10 epochs)" in one


def test_an_extended_unit_keeps_its_finished_run_in_the_row_of_that_budget(tmp_path):
    """Seed 0 finished 100 epochs, then began an extension to 150 (its unit already holds the longer job):
    its figure is the 100-epoch run's, so it stays in the 100-epoch row beside seeds 1 and 2, marked.
    Once finished under 150 epochs it has a row of its own (budgets never pool), and its 100-epoch run,
    kept in the record, stays in the 100-epoch row: an extension never drops a seed from a row."""
    runs = tmp_path / "runs"
    rec = _one_seed_record(0, 0.10)
    for seed, error in ((1, 0.12), (2, 0.11)):
        other = _one_seed_record(seed, error)
        rec["metrics"] += other["metrics"]
        rec["jobs"].update(other["jobs"])
    for entry in rec["jobs"].values():
        entry["budget"] = {"epochs": 100, "time_budget_min": None}
    unit = "ram-cluttered100-T4-s0"
    rec["jobs"][unit].update(status="incomplete", job={**rec["jobs"][unit]["job"], "epochs": 150})
    rec["curves"] = {unit: [{"epoch": e, "valid_error": 0.9} for e in range(1, 21)]}  # the extension's, so far
    records.write(rec, runs / "extending.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 1 and "| 0, 1, 2 |" in rows[0] and "budget 100 epochs; 100 epochs" in rows[0]
    assert "s0 training on under a longer budget (figure: the finished run's)" in rows[0]
    assert "never left" not in rows[0]  # the extension's curve is not the figure's

    from bench.runner import earlier_run

    rec["curves"][unit] = [{"epoch": e, "valid_error": 0.2 - 0.001 * e} for e in range(1, 101)]  # its 100 epochs
    finished = earlier_run(rec, unit)
    rec["metrics"] = [m for m in rec["metrics"] if m["params"]["job"] != unit] + [
        metric("test_error", 0.08, "fraction", True, 0, glimpses=4, protocol="separate", dataset="cluttered100",
               model="ram", patch=12, scales=4, location="mean", job=unit)]
    rec["jobs"][unit].update(status="complete", budget={"epochs": 150, "time_budget_min": None}, epochs=150,
                             images_seen=7_500_000, earlier=[finished])
    rec["curves"][unit] = [{"epoch": e, "valid_error": 0.1} for e in range(1, 151)]
    records.write(rec, runs / "extending.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 2
    longer = next(r for r in rows if "budget 150 epochs; 150 epochs, 7.50 M images" in r)
    assert "| 8.00% | 0 |" in longer and "at the end: flat" in longer
    shorter = next(r for r in rows if "budget 100 epochs; 100 epochs, 5.00 M images" in r)
    assert "| 11.00% +- 1.00% (10.00%, 12.00%, 11.00%) | 0, 1, 2 |" in shorter  # seed 0's 100-epoch figure kept
    assert "at the end: still improving (best valid fell 1.00 pts" in shorter  # the curve of its 100 epochs

    # extended again, to 200 epochs: while it trains, its 150-epoch figure stays in the 150-epoch row
    # and its 100-epoch run, in `earlier`, in the 100-epoch row
    rec["jobs"][unit].update(status="running", job={**rec["jobs"][unit]["job"], "epochs": 200})
    records.write(rec, runs / "extending.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 2
    assert "| 11.00% +- 1.00% (10.00%, 12.00%, 11.00%) | 0, 1, 2 |" in next(r for r in rows if "budget 100" in r)
    longer = next(r for r in rows if "budget 150" in r)
    assert "| 8.00% | 0 |" in longer and "s0 training on under a longer budget" in longer


def test_a_job_recorded_without_its_default_settings_shares_the_row_of_its_recipe(tmp_path):
    """Older records stored a job with only some settings; at their defaults the rest are the same recipe."""
    runs = tmp_path / "runs"
    full = _one_seed_record(0, 0.10)
    short = _one_seed_record(1, 0.12)
    unit = "ram-cluttered100-T4-s1"
    short["jobs"][unit]["job"] = {k: v for k, v in short["jobs"][unit]["job"].items() if k != "batch_size"}
    records.write(full, runs / "ram-s0.json")
    records.write(short, runs / "ram-s1.json")
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| RAM")]
    assert len(rows) == 1 and "| 0, 1 |" in rows[0]


def test_training_cost_is_shown_by_where_each_model_trained():
    cpu = {"device": "cpu", "threads": 2}
    gpu = {"device": "cuda", "device_name": "NVIDIA H200", "threads": 1}
    done = [{"train_time_s": 1800.0},  # before the cost was kept: wall time x threads on the record's machine
            {"train_time_s": 9e9, "train_cost": {"cpu": 5400.0}}]  # core-seconds, however long the wall
    assert tables.training_hours(done, [cpu, cpu]) == "1.00-1.50 core-h"
    begun_on_gpu = [{"train_time_s": 0, "train_cost": {"unattributed": 360.0, "cpu": 3600.0}},
                    {"train_time_s": 0, "train_cost": {"unattributed": 720.0, "cpu": 3960.0}}]
    assert tables.training_hours(begun_on_gpu, [gpu, gpu]) == "0.10-0.20 h on NVIDIA H200 + 1.00-1.10 core-h"


def test_a_time_budget_shows_how_much_of_its_last_epoch_ran():
    data = {"train": {"n": 50000}}
    timed = {"epochs": 26, "stopped_by": "time_budget", "images_seen": 1_286_848, "data": data}
    whole = {"epochs": 100, "stopped_by": "epochs", "images_seen": 4_998_400, "data": data}
    assert tables.epochs_and_images([timed]) == "25.7 epochs, 1.29 M images"
    assert tables.epochs_and_images([whole]) == "100 epochs, 5.00 M images"
    assert tables.epochs_and_images([{"epochs": 3, "stopped_by": "time_budget", "images_seen": 10}]) == \
        "3 epochs, 0.00 M images"  # no data size recorded: the epoch count as it stands


def test_hours_from_before_costs_were_kept_per_device_say_where_else_sittings_ran():
    cpu = {"device": "cpu", "threads": 1}
    gpu_sitting = {"machine": {"device": "cuda", "device_name": "NVIDIA H200"}}
    rec = {"segments": [{"machine": cpu}, gpu_sitting]}
    legacy = {"train_time_s": 7200.0, "train_cost": None}
    assert tables.training_hours([legacy], [cpu], [rec]) == (
        "2.00 core-h (the record has sittings on NVIDIA H200 from before costs were kept per device: their time "
        "is counted as on its first machine)")
    h100 = {"device": "cuda", "device_name": "NVIDIA H100"}
    assert "sittings on NVIDIA H200" in tables.training_hours([legacy], [h100], [rec])  # another GPU is elsewhere
    kept = {"train_time_s": 7200.0, "train_cost": {"cpu": 3600.0, "NVIDIA H200": 600.0}}
    assert tables.training_hours([kept], [cpu], [rec]) == "1.00 core-h + 0.17 h on NVIDIA H200"
    other_cpu = {"device": "cpu", "device_name": "Intel(R) Xeon(R) Processor"}
    assert tables.training_hours([legacy], [cpu], [{"segments": [{"machine": cpu}, {"machine": other_cpu}]}]) == \
        "2.00 core-h"  # a sitting on another CPU is core-hours too


def test_links_keep_a_url_root_whole():
    assert tables._link(["results/runs/long/a.json"], "https://github.com/o/r/blob/main/") == \
        "[a](https://github.com/o/r/blob/main/results/runs/long/a.json)"
    assert tables._link(["results/runs/long/a.json"], ".") == "[a](results/runs/long/a.json)"
    assert tables._link(["results/runs/long/a.json"], Path("..")) == "[a](../results/runs/long/a.json)"


def test_a_rescoring_by_bench_eval_is_not_a_run_in_the_tables(tmp_path):
    run, rescored = make_record(), make_record(errors={1: 0.9, 2: 0.9, 4: 0.9, 8: 0.5})
    for r in (run, rescored):
        r["suite"] = "table1"
        for m in r["metrics"]:
            m["params"].update(dataset="cluttered100", protocol="separate")
    rescored["suite"] = "eval"
    records.write(run, tmp_path / "run.json")
    assert "50.00%" not in tables.markdown(tmp_path)
    records.write(rescored, tmp_path / "rescored.json")
    text = tables.markdown(tmp_path)
    assert "8.00%" in text and "50.00%" not in text and "rescored" not in text
