"""bench/headline.py: each published figure beside our most-trained finished run, every seed shown."""

from __future__ import annotations

import copy

from bench import headline, records, tables
from bench.records import metric
from tests.fixtures.bench_records import make_record


def _classifier_record(errors: dict[int, float], epochs: int) -> dict:
    """One record of the T = 8 classifier: a finished unit per seed, ``epochs`` of 50,000 images each."""
    rec = copy.deepcopy(make_record())
    rec["suite"] = "table1"
    job = {"kind": "classifier", "dataset": "cluttered100", "glimpses": [8], "per_step_loss": False, "lr": 0.001,
           "batch_size": 64, "schedule": "wsd", "warmup_epochs": 1.0, "decay_epochs": 40.0, "epochs": epochs,
           "time_budget_min": None, "window_init": "cover", "seeds_by_glimpses": [[8, [0, 1, 2]]], "seeds": None}
    rec["config"] = {"suite": {"name": "table1", "jobs": [job]}}
    rec["metrics"], rec["jobs"], rec["curves"] = [], {}, {}
    for seed, error in errors.items():
        unit = f"classifier-cluttered100-T8-s{seed}"
        rec["metrics"].append(metric("test_error", error, "fraction", True, seed, glimpses=8, protocol="separate",
                                     dataset="cluttered100", job=unit))
        rec["jobs"][unit] = {"status": "complete", "kind": "classifier", "job": job, "epochs": epochs,
                             "images_seen": 50000 * epochs, "train_time_s": 3600.0}
    return rec


def _draw_record(elbo: float, iwae: float, epochs: int) -> dict:
    rec = copy.deepcopy(make_record())
    rec["suite"] = "table2"
    unit = "draw-binarized-attn-T64-s0"
    common = dict(dataset="binarized", attention=True, steps=64, binarization="fixed", job=unit)
    rec["metrics"] = [metric("nll_elbo", elbo, "nats", True, 0, test_images=10000, **common),
                      metric("nll_iwae", iwae, "nats", True, 0, k=1000, test_images=1000, **common)]
    rec["jobs"] = {unit: {"status": "complete", "kind": "draw", "epochs": epochs, "images_seen": 50000 * epochs,
                          "train_time_s": 3600.0}}
    rec["curves"] = {}
    return rec


def _headline(runs) -> list[str]:
    df = tables._complete_units(records.load_all(runs))
    return headline.table(df).splitlines()


def test_the_most_trained_run_stands_beside_the_paper_with_every_seed(tmp_path):
    runs = tmp_path / "runs"
    records.write(_classifier_record({0: 0.05, 1: 0.07, 2: 0.06}, epochs=50), runs / "short.json")
    records.write(_classifier_record({0: 0.04, 1: 0.045, 2: 0.05}, epochs=150), runs / "long.json")
    row = next(r for r in _headline(runs) if r.startswith("| Table 1, differentiable RAM, T = 8 |"))
    assert "| 3.36% |" in row
    assert "4.50% +- 0.50% (4.00%, 4.50%, 5.00%) | 0, 1, 2 |" in row  # the 150-epoch run: more images per model
    assert "150 epochs, 7.50 M images" in row and "long.json" in row and "short.json" not in row


def test_a_longer_run_of_fewer_seeds_never_stands_in_for_all_of_them(tmp_path):
    """While a longer budget has finished only its best seed so far, the row keeps every seed's run."""
    runs = tmp_path / "runs"
    records.write(_classifier_record({0: 0.05, 1: 0.07, 2: 0.06}, epochs=100), runs / "all.json")
    records.write(_classifier_record({0: 0.04}, epochs=150), runs / "one.json")
    row = next(r for r in _headline(runs) if r.startswith("| Table 1, differentiable RAM, T = 8 |"))
    assert "6.00% +- 1.00% (5.00%, 7.00%, 6.00%) | 0, 1, 2 |" in row and "all.json" in row and "one.json" not in row


def test_a_run_that_deviates_from_the_recipe_has_its_own_row_beside_the_paper(tmp_path):
    """A better figure from a run with `bench run --set hidden=512` never stands in for the suite's
    recipe: it gets a row of its own, named by its deviation."""
    runs = tmp_path / "runs"
    records.write(_classifier_record({0: 0.05, 1: 0.07, 2: 0.06}, epochs=100), runs / "recipe.json")
    deviating = _classifier_record({0: 0.03, 1: 0.032, 2: 0.034}, epochs=150)
    deviating["config"]["options"] = {"settings": {"hidden": 512}}
    for entry in deviating["jobs"].values():
        entry["job"] = {**entry["job"], "hidden": 512}
    records.write(deviating, runs / "wide.json")
    rows = [r for r in _headline(runs) if r.startswith("| Table 1, differentiable RAM, T = 8")]
    assert len(rows) == 2
    assert rows[0].startswith("| Table 1, differentiable RAM, T = 8 | 3.36% | 6.00% +- 1.00%")
    assert "recipe.json" in rows[0]
    assert rows[1].startswith("| Table 1, differentiable RAM, T = 8, deviating: --set hidden=512 | 3.36% | 3.20%")
    assert "wide.json" in rows[1]


def test_a_figure_without_a_finished_run_says_so(tmp_path):
    runs = tmp_path / "runs"
    records.write(_classifier_record({0: 0.05}, epochs=10), runs / "a.json")
    lines = _headline(runs)
    ram = next(r for r in lines if r.startswith("| Table 1, RAM, T = 8 |"))
    assert "| 8.11% | no finished run yet" in ram
    assert any(r.startswith("| Table 2, DRAW, no attention") and "no finished run yet" in r for r in lines)


def test_table2_shows_the_bound_with_its_iwae_beside(tmp_path):
    runs = tmp_path / "runs"
    records.write(_draw_record(90.0, 88.0, epochs=10), runs / "short.json")
    records.write(_draw_record(82.0, 80.0, epochs=100), runs / "long.json")
    row = next(r for r in _headline(runs) if r.startswith("| Table 2, DRAW, attention"))
    assert "| <= 80.97 | 82.00; IWAE 80.00 (k = 1000, 1,000 test images) | 0 |" in row
    assert "100 epochs, 5.00 M images" in row and "long.json" in row


def test_the_markdown_tables_open_with_the_headline(tmp_path):
    runs = tmp_path / "runs"
    records.write(_classifier_record({0: 0.05}, epochs=10), runs / "a.json")
    text = tables.markdown(runs)
    assert text.startswith("### Against the paper") and text.index("### Against") < text.index("### Table 1")


def test_the_row_names_settings_the_paper_did_not_train_with(tmp_path):
    """A relapse setting other than the default and bf16 training products are said beside the figure,
    not only in the full tables."""
    runs = tmp_path / "runs"
    rec = _classifier_record({0: 0.05, 1: 0.07, 2: 0.06}, epochs=100)
    for entry in rec["jobs"].values():
        entry["job"] = {**entry["job"], "on_relapse": "rollback"}
        entry["training_products"] = {"float32": 1_000_000, "bfloat16": 4_000_000}
    records.write(rec, runs / "rollback.json")
    row = next(r for r in _headline(runs) if r.startswith("| Table 1, differentiable RAM, T = 8 |"))
    assert "on relapse: rollback" in row and "bfloat16 80% of images (evaluated in float32)" in row
    records.write(_classifier_record({0: 0.05, 1: 0.07, 2: 0.06}, epochs=150), runs / "plain.json")
    row = next(r for r in _headline(runs) if r.startswith("| Table 1, differentiable RAM, T = 8 |"))
    assert "plain.json" in row and "on relapse" not in row and "bfloat16" not in row
