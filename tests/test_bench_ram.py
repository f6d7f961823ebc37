"""RAM and plug-in glimpse models in the harness: the suites' units and targets, a run recorded and
tabulated like the glimpse classifier (attention type, parameters, FLOPs), exact resume, the
example plug-in through `bench run --dry-run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import plugins, records, report, runner, suites, tables, targets
from bench.optim import Optim
from bench.suites import RamJob, Suite, Target
from models.ram import RamConfig
from tests.fixtures.interrupts import assert_resumed_like, interrupted_and_resumed

REPO = Path(__file__).resolve().parent.parent

TINY_RAM = Suite(
    name="tiny-ram", description="test suite", expected="seconds",
    jobs=(RamJob(dataset="cluttered60", glimpses=(2,),
                 model=RamConfig(patch=6, scales=2, glimpse_hidden=16, location_hidden=8, glimpse_size=16, hidden=16),
                 optim=Optim(batch_size=16), epochs=2, train_limit=64, valid_limit=32, test_limit=32),),
    targets=(Target("test_error", "<", 2.0, (("glimpses", 2), ("model", "ram"))),),
)


@pytest.fixture
def tiny_ram(monkeypatch, tmp_path, mnist_data):
    monkeypatch.setitem(suites.SUITES, "tiny-ram", TINY_RAM)

    def opts(name, **kw):
        return runner.RunOptions(suite="tiny-ram", out=str(tmp_path / f"{name}.json"), threads=1, progress=False,
                                 checkpoint_dir=str(tmp_path / "ckpt"), **kw)

    return opts


def quiet(msg):
    pass


def test_table1_has_ram_rows_and_ram60_covers_4_6_8():
    ram = [u for u in runner.units(suites.get("table1"), None) if u.job.kind == "ram"]
    assert sorted((u.glimpses, u.seed) for u in ram) == [(4, 0), (4, 1), (4, 2), (8, 0), (8, 1), (8, 2)]
    assert all(u.job.model.patch == 12 and u.job.model.scales == 4 and u.job.dataset == "cluttered100" for u in ram)
    ram60 = runner.units(suites.get("ram60"), None)
    assert sorted({u.glimpses for u in ram60}) == [4, 6, 8] and {u.job.dataset for u in ram60} == {"cluttered60"}
    assert {u.seed for u in ram60} == {0, 1, 2}
    assert [u.glimpses for u in runner.units(suites.override(suites.get("ram60"), glimpses=(6,)), (0,))] == [6]


def test_targets_never_pool_soft_and_hard_attention():
    from bench.records import metric

    rows = [metric("test_error", 0.03, "fraction", True, 0, glimpses=8, protocol="separate", model="classifier"),
            metric("test_error", 0.30, "fraction", True, 0, glimpses=8, protocol="separate", model="ram")]
    got = {t["target"]: t["value"] for t in targets.check_targets(suites.get("table1"), rows)}
    assert got["test_error[glimpses=8, protocol=separate, model=classifier] < 0.0336"] == 0.03
    assert got["test_error[glimpses=8, model=ram] < 0.0811"] == 0.30
    # records made before the model was recorded: their rows are the classifier's
    older = [metric("test_error", e, "fraction", True, 0, glimpses=t, protocol="separate")
             for t, e in ((1, 0.5), (2, 0.2))]
    got = {t["target"]: t["value"] for t in targets.check_targets(suites.get("table1"), rows + older)}
    assert got["test_error[protocol=separate, model=classifier] falls with glimpses"] == {"1": 0.5, "2": 0.2, "8": 0.03}
    # one glimpse count cannot say whether the error falls: not judged, rather than a MISS
    one = {t["target"]: t["passed"] for t in targets.check_targets(suites.get("ram60"), rows[1:])}
    assert one["test_error[model=ram] falls with glimpses"] is None


def test_ram_run_is_recorded_tabulated_and_plotted(tiny_ram, tmp_path):
    rec, path = runner.run(tiny_ram("run"), log=quiet)
    assert rec["status"] == "complete" and rec["targets"][0]["passed"]
    errs = [m for m in rec["metrics"] if m["name"] == "test_error"]
    assert len(errs) == 1
    p = errs[0]["params"]
    assert p["model"] == "ram" and p["attention_type"] == "hard" and p["location"] == "mean"
    from models.ram import RecurrentAttentionModel

    want = RecurrentAttentionModel(RamConfig(height=60, width=60, glimpses=2, patch=6, scales=2, glimpse_hidden=16,
                                             location_hidden=8, glimpse_size=16, hidden=16))
    assert p["param_count"] == want.param_count() and p["flops_per_image"] == want.flops_per_image()
    assert "attention_type=hard" in targets.summary_table(rec)
    text = tables.markdown(path.parent)
    row = next(line for line in text.splitlines() if line.startswith("| RAM, 6x6, 2 scales"))
    assert "location at evaluation: mean" in row and "| 4.96% |" not in row  # the paper has no T = 2
    assert "location std 0.2, REINFORCE into the core x1;" in row  # the policy's recipe (the suites' differs)
    assert f"| hard | {want.param_count():,} | {want.flops_per_image() / 1e6:.2f} |" in row
    assert "(seed 0 never left the starting plateau: not a result)" in row  # a few batches of training
    page = report.write_report(path, tmp_path / "report", log=quiet).read_text()
    # its windows are drawn; its error is not plotted against the glimpses (test_report_plots_... is)
    assert "glimpses_ram-cluttered60-T2-s0.png" in page and "error_vs_glimpses.png" not in page


def test_report_plots_soft_and_hard_attention_together(tiny_ram, tmp_path):
    from tests.fixtures.bench_records import make_record

    rec, path = runner.run(tiny_ram("ram"), log=quiet)
    import copy

    # a few batches leave the tiny model on its starting plateau: the plot leaves such seeds out
    assert report.error_series([(path, rec)]) == {}
    stuck = copy.deepcopy(rec)
    for m in stuck["metrics"]:
        m["params"]["glimpses"] = 3
    for curve in rec["curves"].values():  # as if it had left it
        for e in curve:
            e["valid_error"] = 0.3
    records.write(rec, path)
    records.write(stuck, tmp_path / "ram-stuck.json")
    assert report.error_series([(path, rec), (tmp_path / "ram-stuck.json", stuck)])["cluttered60"] == \
        {"hard attention (RAM, location at its mean), separate, run ram; 1 seed left out: plateau or "
         "relapse": {2: [next(m["value"] for m in rec["metrics"] if m["name"] == "test_error")]}}
    records.write(make_record(), tmp_path / "soft.json")  # the soft-attention classifier on cluttered60
    series = report.error_series([(path, rec), (tmp_path / "soft.json", records.read(tmp_path / "soft.json"))])
    kinds = {label.split(" (")[0] for label in series["cluttered60"]}
    assert kinds == {"soft attention", "hard attention"}
    hard = next(v for k, v in series["cluttered60"].items() if k.startswith("hard"))
    error = next(m["value"] for m in rec["metrics"] if m["name"] == "test_error")
    assert hard == {2: [error]}

    # a record of the same recipe that trained another glimpse count joins the line; one that trained
    # the same glimpse count and seed again keeps each record its own line
    other = copy.deepcopy(rec)
    for m in other["metrics"]:
        m["params"]["glimpses"] = 3
    records.write(other, tmp_path / "ram-T3.json")
    records.write(copy.deepcopy(rec), tmp_path / "ram-again.json")
    loaded = [(p, records.read(p)) for p in (path, tmp_path / "ram-T3.json")]
    lines = {k: v for k, v in report.error_series(loaded)["cluttered60"].items() if k.startswith("hard")}
    assert lines == {"hard attention (RAM, location at its mean), separate, runs ram, ram-T3": {2: [error], 3: [error]}}
    loaded.append((tmp_path / "ram-again.json", records.read(tmp_path / "ram-again.json")))
    lines = {k: v for k, v in report.error_series(loaded)["cluttered60"].items() if k.startswith("hard")}
    assert sorted(lines) == [f"hard attention (RAM, location at its mean), separate, run {r}" for r in ("ram", "ram-T3", "ram-again")]


def test_report_labels_soft_and_hard_attention():
    assert report._series_label({"model": "ram", "location": "mean", "attention_type": "hard",
                                 "protocol": "separate"}, "abc") == \
        "hard attention (RAM, location at its mean), separate, run abc"
    assert report._series_label({"protocol": "per-step"}, "abc") == "soft attention (classifier), per-step, run abc"


def test_ram_resume_matches_uninterrupted(tiny_ram, monkeypatch):
    """The location noise comes from torch's RNG, which checkpoints keep: a crash and --resume end
    where an uninterrupted run ends."""
    from bench import tasks

    ref, done = interrupted_and_resumed(monkeypatch, tiny_ram, tasks.RamTask, 6)  # in epoch 2 of 4 batches
    assert_resumed_like(done, ref)


def test_ram_checkpoint_evaluates(tiny_ram, tmp_path):
    from bench.cli import main

    rec, _ = runner.run(tiny_ram("run"), log=quiet)
    job = next(iter(rec["jobs"].values()))
    ckpt = Path(job["checkpoint"]) if Path(job["checkpoint"]).is_absolute() else REPO / job["checkpoint"]
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--limit", "32", "--device", "cpu", "--out", str(out)]) == 0
    evaluated = records.read(out)
    [m] = evaluated["metrics"]
    # the record says how it was made: the whole command, and how many test images it scored
    assert evaluated["command"][3:] == ["eval", "--checkpoint", str(ckpt), "--limit", "32", "--device", "cpu",
                                        "--out", str(out)]
    assert evaluated["config"]["limit"] == 32 and evaluated["config"]["iwae_k"] is None
    ran = next(m for m in rec["metrics"] if m["name"] == "test_error")
    assert m["value"] == ran["value"] and m["params"]["location"] == "mean"


def test_example_plugin_dry_run(tmp_path, mnist_data):
    out = tmp_path / "plugin.json"
    p = subprocess.run([sys.executable, "-m", "bench", "run", "--model", "examples.tiny_glimpse:build", "--dry-run",
                        "--threads", "1", "--no-progress", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    r = records.read(out)
    assert r["status"] == "complete" and r["config"]["options"]["model"] == "examples.tiny_glimpse:build"
    assert {j["kind"] for j in r["jobs"].values()} == {"plugin"}  # the quick suite's glimpse job, nothing else
    errs = [m for m in r["metrics"] if m["name"] == "test_error"]
    assert sorted(m["params"]["glimpses"] for m in errs) == [1, 2, 4, 8]
    assert all(m["params"]["model"] == "examples.tiny_glimpse:build" and m["params"]["attention_type"] == "none"
               and m["params"]["param_count"] > 0 for m in errs)
    import numpy as np

    with np.load(out.with_suffix(".npz")) as z:
        gx = next(k for k in z.files if k.endswith("/paths/gx"))
        assert z[gx].shape == (8, 8)  # the windows the plug-in gave, for drawing


@pytest.mark.parametrize("name", ["quick", "table1", "ram60"])
def test_plugin_takes_the_place_of_the_glimpse_models_once(name):
    suite = suites.with_plugin(suites.get(name), "examples.tiny_glimpse:build")
    units = runner.units(suite, None)
    ids = [u.id for u in units]
    assert units and len(ids) == len(set(ids)) and {u.job.kind for u in units} == {"plugin"}
    want = {(u.glimpses, u.seed, u.eval_glimpses) for u in runner.units(suites.get(name), None)
            if u.job.kind == ("ram" if name == "ram60" else "classifier")}
    assert {(u.glimpses, u.seed, u.eval_glimpses) for u in units} == want


def test_plugin_errors_are_one_clear_line(tmp_path):
    for spec, says in (("nosuch_module_xyz:build", "cannot import 'nosuch_module_xyz'"),
                       ("examples.tiny_glimpse:nothing", "has no attribute 'nothing'"),
                       ("no_such_entry_point", "no entry point of that name in group 'glimpse.models'")):
        p = subprocess.run([sys.executable, "-m", "bench", "run", "--model", spec, "--dry-run",
                            "--out", str(tmp_path / "x.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and says in p.stderr and not (tmp_path / "x.json").exists(), p.stderr
    with pytest.raises(suites.SuiteError, match="no glimpse-model jobs"):
        suites.with_plugin(suites.get("table2"), "examples.tiny_glimpse:build")


def test_plugin_contract_is_checked():
    import torch

    class WrongShape(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 10)

    model = plugins.PluginModel(WrongShape(), "m:build", {"glimpses": 3, "num_classes": 10})
    with pytest.raises(plugins.PluginError, match=r"logits \(B, T, classes\) = \(2, 3, 10\).*got \(2, 10\)"):
        model(torch.zeros(2, 1, 8, 8))
    with pytest.raises(plugins.PluginError, match="not a torch nn.Module"):
        plugins.PluginModel(object(), "m:build", {})


def test_entry_point_names_a_plugin(monkeypatch):
    from importlib import metadata

    ep = metadata.EntryPoint(name="diagonal", value="examples.tiny_glimpse:build", group=plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "_entry_points", lambda: {"diagonal": ep})
    model = plugins.build("diagonal", {"height": 28, "width": 28, "channels": 1, "num_classes": 10, "glimpses": 2,
                                       "per_step_loss": False})
    import torch

    assert model(torch.zeros(3, 1, 28, 28)).logits.shape == (3, 2, 10)
    assert model.attention_type == "none"


def test_tables_give_the_cost_of_records_that_predate_it(tmp_path):
    """A Table 1 record without attention type or cost: the classifier's row is computed from its
    read size and hidden units (README: 415,503 parameters, 8.9 MFLOP per image at T = 8)."""
    from bench.records import metric
    from tests.fixtures.bench_records import make_record

    rec = make_record(extra=[metric("test_error", 0.1, "fraction", True, 0, glimpses=8, protocol="separate",
                                    dataset="cluttered100", read_n=12, hidden=256)])
    rec["suite"] = "table1"
    records.write(rec, tmp_path / "old.json")
    row = next(line for line in tables.markdown(tmp_path).splitlines() if "| separate | 8 |" in line)
    assert row.endswith("| soft | 415,503 | 8.91 |")


@pytest.mark.parametrize("t", [1, 3, 8])
def test_a_per_step_row_carries_the_flops_of_its_own_glimpses(t):
    """A per-step model is scored after each t of its T glimpses: its row's FLOPs are those t steps',
    which for the built-in models (every step alike) is what a model built for t glimpses counts."""
    from bench.unit_runs import at_glimpses
    from models.classifier import ClassifierConfig, GlimpseClassifier
    from models.ram import RecurrentAttentionModel

    for build, config in ((GlimpseClassifier, ClassifierConfig), (RecurrentAttentionModel, RamConfig)):
        whole = {"flops_per_image": build(config(glimpses=8)).flops_per_image(), "param_count": 1}
        assert at_glimpses(whole, t, 8) == {"flops_per_image": build(config(glimpses=t)).flops_per_image(),
                                            "param_count": 1}
    assert at_glimpses({"flops_per_image": None}, t, 8) == {"flops_per_image": None}
