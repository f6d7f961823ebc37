"""A dry run's record is flagged; its metrics stay out of comparisons, tables and plots, and no
figure is printed that cannot be true (a peak fraction above 1, an IQR from one repeat)."""

from __future__ import annotations

import pytest

from bench import compare, records, report, tables, targets, throughput
from bench.records import metric
from bench.suites import ThroughputJob
from fixtures.bench_records import make_record


def _table1(value: float) -> list[dict]:
    return [metric("test_error", value, "fraction", True, 0, glimpses=4, protocol="separate", dataset="cluttered100")]


def dry(record: dict) -> dict:
    record["config"]["dry_run"] = True
    return record


@pytest.fixture
def mixed(tmp_path):
    """A folder with a real record and a dry run of much worse figures."""
    folder = tmp_path / "runs"
    real = records.write(make_record(extra=_table1(0.1111)), folder / "real.json")
    records.write(dry(make_record(errors={1: 0.9, 2: 0.9, 4: 0.9, 8: 0.9}, nll=587.0, started="2026-02-01T00:00:00Z",
                                  extra=_table1(0.9375))), folder / "dry.json")
    return folder, real


def test_dry_run_flag_reaches_the_dataframe(mixed):
    folder, _ = mixed
    df = records.load_all(folder)
    assert sorted(df.groupby("record")["dry_run"].first().tolist()) == [False, True]


def test_compare_leaves_dry_runs_out(mixed, tmp_path):
    folder, real = mixed
    res = compare.compare_paths(real, folder)
    assert res.rows and all(len(r.b.values) == 1 for r in res.rows)  # the dry run's metrics are not pooled
    assert not res.regressions
    assert any("B: 1 dry-run record(s) left out" in w for w in res.warnings)
    only_dry = compare.compare_paths(real, folder / "dry.json")
    assert not only_dry.rows and not only_dry.regressions


def test_tables_leave_dry_runs_out(mixed, tmp_path):
    folder, _ = mixed
    text = tables.markdown(folder)
    assert "11.11%" in text and "93.75%" not in text
    assert "dry runs" in tables.markdown(folder / "dry.json")


def test_report_lists_dry_runs_but_plots_none(mixed, tmp_path):
    folder, real = mixed
    page = report.write_report(folder, tmp_path / "mixed", log=lambda m: None).read_text()
    alone = report.write_report(real, tmp_path / "alone", log=lambda m: None).read_text()
    assert "587.00" not in page and "dry run: not plotted" in page and "1 dry run(s) listed" in page
    assert page.count("<figure>") == alone.count("<figure>") > 0
    only_dry = report.write_report(folder / "dry.json", tmp_path / "dry", log=lambda m: None).read_text()
    assert only_dry.count("<figure>") == 0


JOB = ThroughputJob(model="classifier", height=60, width=60, glimpses=2, hidden=16, batch_sizes=(8,), repeats=2,
                    min_time_s=0.0)


def test_peak_fraction_above_one_is_left_out(one_thread):
    logs: list[str] = []
    low = throughput.measure(JOB, "cpu", peak_gflops=1e-6, log=logs.append)
    assert "peak_fraction" not in {m["name"] for m in low}
    assert any("left out" in m and "above the measured matmul peak" in m for m in logs)
    high = throughput.measure(JOB, "cpu", peak_gflops=1e9, log=lambda m: None)
    [frac] = [m for m in high if m["name"] == "peak_fraction"]
    assert 0 < frac["value"] <= 1


def test_one_repeat_shows_no_spread(one_thread):
    logs: list[str] = []
    ms = throughput.measure(JOB, "cpu", dry_run=True, log=logs.append)
    assert "IQR" not in logs[-1] and "one repeat" in logs[-1]
    text = targets.summary_table(dry({**make_record(), "metrics": ms}))
    assert "IQR" not in text and "(one repeat)" in text and "not measurements" in text


def test_the_summary_spread_is_the_sample_std_as_in_the_tables():
    text = targets.summary_table(make_record(seeds=(0, 1, 2)))  # T = 8: 8.0%, 8.1%, 8.2% over seeds 0-2
    row = next(line for line in text.splitlines() if line.startswith("test_error") and "glimpses=8" in line)
    assert row.endswith("8.10% +- 0.10%"), row  # the population std would read 0.08%
