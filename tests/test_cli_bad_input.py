"""Bad input to every subcommand of `python -m bench` and `python -m datasets`: exit status 2, one
line naming what is wrong, no traceback, and nothing written anywhere.

Every case runs in-process (fast); a few also run as real `python -m` subprocesses, end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

GOOD_RECORD = {"schema_version": 1, "suite": "quick", "started_at": "2024-01-01T00:00:00Z", "finished_at": None,
               "status": "complete", "commit": {"sha": None, "short": "x", "dirty": False}, "machine": {"id": "m"},
               "config": {}, "seeds": [0], "metrics": [], "curves": {}}

# (program, arguments with {t} for the work folder, what the one error line must say, also as a subprocess)
CASES = [
    ("bench", [], "required: command", False),
    ("bench", ["nope"], "invalid choice: 'nope'", False),
    # run
    ("bench", ["run", "--suite", "nope"], "unknown suite 'nope'", False),
    ("bench", ["run", "--seeds", "-1"], "seeds must be >= 0", False),
    ("bench", ["run", "--glimpses", "0"], "glimpse counts must be >= 1", False),
    ("bench", ["run", "--epochs", "0"], "--epochs: '0' must be > 0", False),
    ("bench", ["run", "--threads", "x"], "--threads: 'x' is not a number", False),
    ("bench", ["run", "--device", "nope", "--out", "{t}/new/r.json"], "unknown device 'nope'", False),
    ("bench", ["run", "--out", "{t}"], "is a folder", False),
    ("bench", ["run", "--out", "{t}/afile/r.json"], "is not writable", False),
    ("bench", ["run", "--resume", "--dry-run"], "do not go together", False),
    ("bench", ["run", "--resume", "--out", "{t}/missing.json"], "no such record", False),
    ("bench", ["run", "--resume", "--out", "{t}/notjson.json"], "not valid JSON", False),
    ("bench", ["run", "--dry-run", "--data-dir", "{t}/afile", "--out", "{t}/new/r.json"], "--data-dir", False),
    ("bench", ["run", "--dry-run", "--checkpoint-dir", "{t}/afile", "--out", "{t}/new/r.json"],
     "--checkpoint-dir", False),
    # eval
    ("bench", ["eval"], "required: --checkpoint", False),
    ("bench", ["eval", "--checkpoint", "{t}/afile"], "unreadable checkpoint", True),
    ("bench", ["eval", "--checkpoint", "{t}/missing.pt"], "no checkpoint at", False),
    ("bench", ["eval", "--checkpoint", "{t}/list.pt"], "holds a list, not a glimpse checkpoint", False),
    ("bench", ["eval", "--checkpoint", "{t}/notask.pt"], "no task description", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--dataset", "nope"], "--dataset 'nope' is not a variant",
     False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--seed", "-1"], "--seed: '-1' must be >= 0", True),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--k", "0"], "--k: '0' must be > 0", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--limit", "-3"], "--limit: '-3' must be > 0", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--device", "nope"], "unknown device 'nope'", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--out", "{t}"], "is a folder", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--data-dir", "{t}/afile"], "--data-dir", False),
    ("bench", ["eval", "--checkpoint", "{t}/fake.pt", "--out", "{t}/good.json"], "good.json already exists", False),
    ("bench", ["eval", "--checkpoint", "{t}/plugin.pt"], "a plug-in model's checkpoint; bench eval rebuilds", False),
    # export
    ("bench", ["export"], "required: checkpoint, out", False),
    ("bench", ["export", "{t}/afile", "{t}/new/out.pt"], "unreadable checkpoint", False),
    ("bench", ["export", "{t}/missing.pt", "{t}/new/out.pt"], "no checkpoint at", False),
    ("bench", ["export", "{t}/notask.pt", "{t}/new/out.pt"], "no task description", False),
    ("bench", ["export", "{t}/fake.pt", "{t}"], "is a folder", False),
    ("bench", ["export", "{t}/fake.pt", "{t}/afile"], "afile already exists; give a new path", False),
    ("bench", ["export", "{t}/fake.pt", "{t}/fake.pt"], "it is the checkpoint itself", False),
    # tables
    ("bench", ["tables", "--records", "{t}/missing"], "no such record or folder", False),
    ("bench", ["tables", "--records", "{t}/notjson.json"], "not valid JSON", False),
    ("bench", ["tables", "--records", "{t}/list.json"], "a JSON list, not a run record", False),
    ("bench", ["tables", "--reference", "--records", "{t}/good.json"], "give it without --records", False),
    # status
    ("bench", ["status", "{t}/missing"], "no such record or folder", False),
    ("bench", ["status", "{t}/notjson.json"], "not valid JSON", True),
    ("bench", ["status", "{t}/list.json"], "a JSON list, not a run record", False),
    # close
    ("bench", ["close", "{t}/missing.json", "--reason", "moved"], "no such record", False),
    ("bench", ["close", "{t}/good.json"], "--reason must say why", False),
    ("bench", ["close", "{t}/good.json", "--reason", "moved"], "no open (not complete, not closed) unit matches *",
     True),
    ("bench", ["close", "{t}/good.json", "--reopen"], "no closed unit matches *", False),
    # compare
    ("bench", ["compare", "{t}/missing.json", "{t}/good.json"], "no such record", False),
    ("bench", ["compare", "{t}/good.json", "{t}/binary.json"], "not valid JSON", True),
    ("bench", ["compare", "{t}/good.json", "{t}/number.json"], "a JSON int, not a run record", False),
    ("bench", ["compare", "{t}/good.json", "{t}/empty"], "holds no records", False),
    ("bench", ["compare", "{t}/good.json", "{t}/good.json", "--factor", "0"], "--factor: '0' must be > 0", False),
    ("bench", ["compare", "{t}/good.json", "{t}/good.json", "--factor", "1"], "--factor must be above 1", False),
    ("bench", ["compare", "{t}/good.json"], "required: b", False),
    # report
    ("bench", ["report", "--records", "{t}/missing", "--out", "{t}/rep"], "no such record or folder", False),
    ("bench", ["report", "--records", "{t}/afile", "--out", "{t}/rep"], "holds no run records", False),
    ("bench", ["report", "--records", "{t}/good.json", "--out", "{t}/afile"], "--out", False),
    ("bench", ["report", "--reference", "--records", "{t}/good.json"], "give it without --records", False),
    # datasets
    ("datasets", [], "required: command", False),
    ("datasets", ["nope"], "invalid choice: 'nope'", False),
    ("datasets", ["fetch", "--data-dir", "{t}/afile"], "--data-dir", True),
    ("datasets", ["fetch", "--data-dir", "{t}/afile/sub"], "--data-dir", False),
    ("datasets", ["fetch", "--bogus"], "unrecognized arguments: --bogus", False),
    ("datasets", ["build", "nope"], "invalid choice: 'nope'", False),
    ("datasets", ["build", "cluttered100", "--seed", "-5", "--out", "{t}/D"], "--seed: '-5' must be >= 0", True),
    ("datasets", ["build", "cluttered60", "--seed", "x", "--out", "{t}/D"], "--seed: 'x' is not an integer", False),
    ("datasets", ["build", "cluttered60", "--limit", "0", "--out", "{t}/D"], "--limit: '0' must be >= 1", False),
    ("datasets", ["build", "cluttered60", "--epoch", "-1", "--out", "{t}/D"], "--epoch: '-1' must be >= 0", False),
    ("datasets", ["build", "cluttered60", "--out", "{t}/afile"], "--out", False),
    ("datasets", ["build", "cluttered60", "--force"], "--force goes with --out", False),
    ("datasets", ["build", "cluttered60", "--data-dir", "{t}/afile", "--out", "{t}/D"], "--data-dir", False),
    ("datasets", ["show", "nope"], "invalid choice: 'nope'", False),
    ("datasets", ["show", "cluttered60", "--n", "0", "-o", "{t}/g.png"], "--n: '0' must be >= 1", False),
    ("datasets", ["show", "cluttered60", "--seed", "-1", "-o", "{t}/g.png"], "--seed: '-1' must be >= 0", False),
    ("datasets", ["show", "cluttered60", "--split", "nope"], "--split: invalid choice", False),
    ("datasets", ["show", "cluttered60", "--epoch", "-2"], "--epoch: '-2' must be >= 0", False),
    ("datasets", ["show", "cluttered60", "-o", "{t}"], "is a folder", False),
    ("datasets", ["show", "cluttered60", "-o", "{t}/afile/g.png"], "is not writable", False),
    ("datasets", ["show", "cluttered60", "-o", "{t}/g.jpg"], "give a name ending in .png", False),
]


def _ids(case) -> str:
    return " ".join([case[0], *case[1]]).replace("{t}/", "").replace("{t}", "WORK")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder of bad and good inputs; the current folder and the data root are empty or absent."""
    import torch

    t = tmp_path / "w"
    t.mkdir()
    (t / "afile").write_text("just text\n")
    (t / "notjson.json").write_text("{ truncated")
    (t / "list.json").write_text("[1, 2]")
    (t / "number.json").write_text("5")
    (t / "binary.json").write_bytes(b"\xff\xfe\x00\x01")
    (t / "good.json").write_text(json.dumps(GOOD_RECORD))
    (t / "fake.pt").write_bytes(b"not a checkpoint")
    torch.save([1, 2], t / "list.pt")
    torch.save({"format": "glimpse-train-1"}, t / "notask.pt")
    torch.save({"format": "glimpse-train-1", "task": {"task": "plugin", "model": {"plugin": "m:build"}}},
               t / "plugin.pt")
    (t / "empty").mkdir()
    (t / "cwd").mkdir()
    monkeypatch.chdir(t / "cwd")
    monkeypatch.setenv("GLIMPSE_DATA", str(t / "data"))
    return t


def snapshot(t: Path, *shared: Path) -> dict:
    """Every path below the test's folder ``t`` with, for files, size and modification time (folders:
    presence only, since a probe that writes and removes a temporary file changes a folder's time).
    Below the ``shared`` folders of the checkout, where a long training run may be writing its
    checkpoints and records meanwhile, only which paths exist (temporary dot-files aside), and the
    indexes' contents."""
    out = {}
    for root in (t, *shared):
        if not root.exists():
            continue
        for p in [root, *root.rglob("*")]:
            try:
                st = p.stat()
            except FileNotFoundError:  # a temporary file renamed meanwhile
                continue
            if p.is_dir():
                out[str(p)] = None
            elif root == t:
                out[str(p)] = (st.st_size, st.st_mtime_ns)
            elif p.name.endswith(".csv"):
                out[str(p)] = p.read_bytes()
            elif not p.name.startswith("."):
                out[str(p)] = "exists"
    return out


def watched(t: Path) -> list[Path]:
    return [t, REPO / "results", REPO / "runs", REPO / "data" / "built"]


def argv_of(case, t: Path) -> list[str]:
    return [a.replace("{t}", str(t)) for a in case[1]]


def check_refusal(code: int, err: str, expected: str, before: dict, after: dict) -> None:
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert expected in lines[0], err
    assert after == before, f"files changed: {sorted(set(after.items()) ^ set(before.items()))}"


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_bad_input_is_refused_in_one_line_writing_nothing(case, work, capsys):
    from bench.cli import main as bench_main
    from datasets.cli import main as datasets_main

    main = {"bench": bench_main, "datasets": datasets_main}[case[0]]
    before = snapshot(*watched(work))
    try:
        code = main(argv_of(case, work))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert captured.out == ""
    check_refusal(code, captured.err, case[2], before, snapshot(*watched(work)))


def test_bad_input_end_to_end_in_subprocesses(work):
    env = dict(os.environ, PYTHONPATH=str(REPO), GLIMPSE_DATA=str(work / "data"))
    for case in [c for c in CASES if c[3]]:
        before = snapshot(*watched(work))
        p = subprocess.run([sys.executable, "-m", case[0], *argv_of(case, work)], cwd=work / "cwd", env=env,
                           capture_output=True, text=True, timeout=120)
        assert p.stdout == "", _ids(case)
        check_refusal(p.returncode, p.stderr, case[2], before, snapshot(*watched(work)))


def test_every_subcommand_has_a_case():
    from bench.cli import build_parser as bench_parser
    from datasets.cli import build_parser as datasets_parser

    for prog, parser in (("bench", bench_parser()), ("datasets", datasets_parser())):
        sub = next(a for a in parser._actions if a.dest == "command")
        covered = {c[1][0] for c in CASES if c[0] == prog and c[1]}
        assert set(sub.choices) <= covered, f"{prog}: no bad-input case for {set(sub.choices) - covered}"


def test_missing_data_root_from_environment_is_one_line(work, monkeypatch, capsys):
    from datasets.cli import main

    monkeypatch.setenv("GLIMPSE_DATA", str(work / "afile" / "data"))
    before = snapshot(*watched(work))
    code = main(["fetch"])
    check_refusal(code, capsys.readouterr().err, "cannot create the data folder", before, snapshot(*watched(work)))
