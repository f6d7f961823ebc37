"""`bench compare` verdicts on synthetic records: regression, improvement, noise, missing metrics."""

from __future__ import annotations

import pytest

from bench import compare, records
from bench.cli import main
from fixtures.bench_records import MACHINE, make_record, speed


def write(tmp_path, name, **kw):
    return records.write(make_record(**kw), tmp_path / name)


def verdicts(res):
    return {(r.name, r.params.get("glimpses")): r.verdict for r in res.rows}


def test_identical_records_are_the_same(tmp_path):
    a, b = write(tmp_path, "a.json"), write(tmp_path, "b.json")
    res = compare.compare_paths(a, b)
    assert not res.regressions and not res.only_a and not res.only_b and not res.warnings
    assert {v for v in verdicts(res).values()} == {"same"}


def test_quality_regression_improvement_and_noise(tmp_path):
    a = write(tmp_path, "a.json", seeds=(0, 1, 2))
    # T=8 one point worse (regression), T=4 one point better (improvement), T=2 0.2 points worse (noise)
    b = write(tmp_path, "b.json", seeds=(0, 1, 2), errors={1: 0.40, 2: 0.252, 4: 0.11, 8: 0.09}, nll=93.0)
    res = compare.compare_paths(a, b)
    v = verdicts(res)
    assert v[("test_error", 8)] == "regression"
    assert v[("test_error", 4)] == "improvement"
    assert v[("test_error", 2)] == "same" and v[("test_error", 1)] == "same"
    assert v[("nll_elbo", None)] == "improvement" and v[("nll_iwae", None)] == "improvement"
    row = next(r for r in res.rows if r.name == "test_error" and r.params["glimpses"] == 8)
    assert len(row.a.values) == 3 and row.delta == pytest.approx(0.01)  # aggregated over the 3 seeds


def test_throughput_needs_ratio_and_disjoint_spreads(tmp_path):
    a = write(tmp_path, "a.json", train_speed=(1000, 980, 1020))
    slow = write(tmp_path, "slow.json", train_speed=(800, 780, 820))
    noisy = write(tmp_path, "noisy.json", train_speed=(800, 600, 1000))
    small = write(tmp_path, "small.json", train_speed=(950, 940, 960))
    fast = write(tmp_path, "fast.json", train_speed=(1300, 1280, 1320))
    get = lambda b: verdicts(compare.compare_paths(a, b))[("train_images_per_s", None)]  # noqa: E731
    assert get(slow) == "regression"
    assert get(noisy) == "within noise"
    assert get(small) == "same"  # disjoint but only 5% slower
    assert get(fast) == "improvement"


def test_missing_metrics_and_machine_warning(tmp_path):
    other = {**MACHINE, "id": "cuda-h200"}
    a = write(tmp_path, "a.json", extra=[speed("eval_images_per_s", 5000, 4900, 5100)])
    b = write(tmp_path, "b.json", errors={1: 0.4, 2: 0.25, 4: 0.12, 8: 0.08, 16: 0.05}, machine=other)
    res = compare.compare_paths(a, b)
    assert [n for n, _ in res.only_a] == ["eval_images_per_s"]
    assert res.only_b == [("test_error", {"dataset": "cluttered60", "glimpses": 16, "protocol": "per-step"})]
    assert res.warnings and "machines differ" in res.warnings[0]
    text = compare.format_result(res)
    assert "only in A: eval_images_per_s" in text and "only in B: test_error" in text and "warning:" in text


def test_folders_pool_records(tmp_path):
    for i in range(3):
        write(tmp_path / "A", f"{i}.json", train_speed=(1000 + i, 990, 1010))
    write(tmp_path / "B", "b.json")
    res = compare.compare_paths(tmp_path / "A", tmp_path / "B")
    row = next(r for r in res.rows if r.name == "train_images_per_s")
    assert row.a.values == [1000, 1001, 1002] and row.a.mean == 1001


def test_cli_fail_on_regression_exit_codes(tmp_path, capsys):
    a = write(tmp_path, "a.json")
    b = write(tmp_path, "b.json", errors={1: 0.5, 2: 0.3, 4: 0.2, 8: 0.1})
    assert main(["compare", str(a), str(b)]) == 0
    assert "regression" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert main(["compare", str(a), str(a), "--fail-on-regression"]) == 0
    assert main(["compare", str(a), str(tmp_path / "missing.json")]) == 2
    assert "no such record or folder" in capsys.readouterr().err


def test_a_bound_recorded_before_train_binarization_was_named_pairs_with_one_that_names_it(tmp_path):
    old, new = make_record(), make_record()  # their bounds say binarization "fixed"
    for m in new["metrics"]:
        if m["params"].get("binarization") == "fixed":
            m["params"]["train_binarization"] = "fresh per epoch"
    res = compare.compare_paths(records.write(old, tmp_path / "a.json"), records.write(new, tmp_path / "b.json"))
    assert not res.only_a and not res.only_b and not res.regressions


def test_a_run_that_stayed_on_its_plateau_is_judged_and_named(tmp_path):
    """B's T = 8 seed never left the plateau (its metrics carry on_plateau): its 85% error still pairs
    with A's figure and is a regression, and a warning names it."""
    a = write(tmp_path, "a.json")
    rec = make_record(errors={1: 0.40, 2: 0.25, 4: 0.12, 8: 0.85})
    for m in rec["metrics"]:
        if m["params"].get("glimpses") == 8:
            m["params"].update(on_plateau=True, job="classifier-cluttered60-T8-s0")
    b = records.write(rec, tmp_path / "b.json")
    res = compare.compare_paths(a, b)
    assert verdicts(res)[("test_error", 8)] == "regression" and not res.only_a and not res.only_b
    assert any(w.startswith("B: 1 figure(s) from runs that never left their starting plateau") and
               "classifier-cluttered60-T8-s0" in w for w in res.warnings)


def test_a_metric_recorded_as_null_is_information_not_a_crash(tmp_path):
    """records.dumps writes NaN as null: such a figure is compared as 'no finite value', not a TypeError."""
    a, b = make_record(), make_record()
    for m in b["metrics"]:
        if m["name"] == "nll_elbo":
            m["value"] = None
    records.write(a, tmp_path / "a.json")
    records.write(b, tmp_path / "b.json")
    rows = {r.name: r for r in compare.compare_paths(tmp_path / "a.json", tmp_path / "b.json").rows}
    assert (rows["nll_elbo"].verdict, rows["nll_elbo"].detail) == ("info", "no finite value on B")
    assert rows["nll_iwae"].verdict == "same"
