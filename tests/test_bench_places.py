"""Where records, indexes, reports and checkpoints go: a user's under runs/ (git-ignored), the
committed reference results under results/ only when asked for."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import records, runner
from bench.cli import main
from bench.records import metric
from fixtures.bench_records import MACHINE, make_record

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def places(monkeypatch, tmp_path):
    """runs/ and results/ moved into tmp_path."""
    monkeypatch.setattr(records, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(records, "RESULTS", tmp_path / "results")
    return tmp_path


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)


def test_records_and_reports_default_to_runs(places):
    r = make_record()
    assert records.default_path(r).parent == places / "runs" / "records" / MACHINE["id"]
    assert records.records_dir(reference=True) == places / "results" / "runs"
    assert records.report_dir() == places / "runs" / "report"
    assert records.report_dir(reference=True) == places / "results" / "report"


def test_each_place_has_its_own_index(places):
    mine = records.write(make_record(), places / "runs" / "records" / "m" / "a.json")
    ref = records.write(make_record(started="2026-02-01T00:00:00Z"), places / "results" / "runs" / "m" / "b.json")
    elsewhere = records.write(make_record(), places / "elsewhere" / "c.json")
    for p in (mine, ref):
        records.update_index(p, records.read(p))
    assert records.update_index(elsewhere, records.read(elsewhere)) is None
    rows = {place: [r["path"] for r in csv.DictReader(open(places / place / "index.csv"))]
            for place in ("runs", "results")}
    assert rows == {"runs": ["records/m/a.json"], "results": ["runs/m/b.json"]}
    assert not (places / "elsewhere" / "index.csv").exists()
    assert records.rebuild_index(places / "runs").read_text().splitlines()[1].startswith("records/m/a.json,")


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="needs a git checkout")
def test_user_places_are_ignored_and_the_reference_index_is_tracked():
    for p in ("runs/records/m/a.json", "runs/index.csv", "runs/report/index.html", "runs/checkpoints/a/b.pt",
              "runs/dry-run/a.json"):
        assert _git("check-ignore", "-q", p).returncode == 0, f"{p} is not git-ignored"
    for p in ("results/index.csv", "results/README.md"):
        assert _git("check-ignore", "-q", "--no-index", p).returncode == 1, f"{p} is git-ignored"
        assert _git("ls-files", "--error-unmatch", p).returncode == 0, f"{p} is not tracked"
    assert runner.CHECKPOINTS == records.RUNS / "checkpoints"
    assert runner.DRY_RUNS == records.RUNS / "dry-run"


@pytest.mark.parametrize("runs_env", [None, "", "elsewhere/my-runs"])
def test_a_user_s_runs_go_to_runs_or_to_glimpse_runs(runs_env, tmp_path):
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GLIMPSE_RUNS"}
    if runs_env is not None:
        env["GLIMPSE_RUNS"] = runs_env
    p = subprocess.run([sys.executable, "-c", "from bench import records, runner; "
                        "print(records.RUNS); print(runner.CHECKPOINTS)"],
                       cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    want = REPO / "runs" if not runs_env else (REPO / runs_env).resolve()
    assert p.stdout.split() == [str(want), str(want / "checkpoints")]


def test_the_tests_keep_their_runs_out_of_the_checkout():
    assert records.RUNS != REPO / "runs" and not records.RUNS.is_relative_to(REPO)


def test_run_writes_the_reference_only_when_asked(places):
    def path(**kw):
        opts = runner.RunOptions(suite="quick", device="cpu", threads=1, **kw)
        return runner.Runner(opts, log=lambda m: None).open_record()[1]

    mid = records.machine_info("cpu", 1)["id"]
    assert path().parent == places / "runs" / "records" / mid
    assert path(reference=True).parent == places / "results" / "runs" / mid
    assert path(dry_run=True).parent == runner.DRY_RUNS


@pytest.mark.parametrize("extra", [["--dry-run"], ["--out", "x.json"]])
def test_reference_run_refuses_dry_run_and_out(extra, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--reference", *extra]) == 2
    assert "--reference" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def _table1_record(sha: str) -> dict:
    return make_record(sha=sha, extra=[metric("test_error", 0.1, "fraction", True, 0, glimpses=4,
                                              protocol="separate", dataset="cluttered100")])


def test_report_and_tables_read_yours_else_the_reference(places, capsys):
    records.write(_table1_record("b" * 40), places / "results" / "runs" / "m" / "ref.json")
    assert records.default_records() == places / "results" / "runs"
    assert main(["report"]) == 0
    assert (places / "runs" / "report" / "index.html").exists()
    assert not (places / "results" / "report").exists()
    assert "using the committed reference records" in capsys.readouterr().err

    records.write(_table1_record("c" * 40), places / "runs" / "records" / "m" / "mine.json")
    assert records.default_records() == places / "runs" / "records"
    assert records.default_records(reference=True) == places / "results" / "runs"
    assert main(["tables"]) == 0
    assert "mine" in capsys.readouterr().out
    assert main(["tables", "--reference"]) == 0
    out = capsys.readouterr().out
    assert "ref" in out and "mine" not in out
    assert main(["report", "--reference"]) == 0
    assert "ref.json" in (places / "results" / "report" / "index.html").read_text()


def test_two_runs_started_in_the_same_second_write_two_records(places, monkeypatch):
    """A default record name holds the start to the second: a second run in that second (a plan's lines
    start together) takes the name with -2, atomically, also where the file system has no hard links."""
    monkeypatch.setattr(records, "utc_now", lambda: "2026-12-05T20:00:00Z")
    record, path = runner.Runner(runner.RunOptions(suite="quick", device="cpu", threads=1),
                                 log=lambda m: None).open_record()
    assert not path.exists()  # named, not yet taken: the run takes it once MNIST is there
    a, b = records.claim(record, path), records.claim(record, path)
    assert a == path and b == a.with_name(f"{a.stem}-2.json")
    assert records.read(a)["suite"] == records.read(b)["suite"] == "quick"

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(records.os, "link", no_links)
    c = records.claim(record, path)
    assert c == a.with_name(f"{a.stem}-3.json") and records.read(c)["suite"] == "quick"
    assert sorted(p.name for p in a.parent.iterdir()) == sorted(p.name for p in (a, b, c))  # no leftovers


def test_a_run_that_fails_before_training_leaves_no_record(places, monkeypatch):
    """MNIST cannot be had: no empty record is left for --resume to find."""
    from datasets import mnist

    def no_mnist(*a, **k):
        raise mnist.DataError("no MNIST here")

    monkeypatch.setattr(mnist, "fetch", no_mnist)
    with pytest.raises(mnist.DataError):
        runner.run(runner.RunOptions(suite="quick", device="cpu", threads=1), log=lambda m: None)
    assert not list((places / "runs").rglob("*.json"))
