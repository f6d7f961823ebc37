"""`python -m bench` command line: parsing, one-line errors with exit status 2, --list."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import suites
from bench.cli import build_parser, main

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_unknown_suite_is_one_line_exit_2():
    p = run_cli("run", "--suite", "nope")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown suite 'nope'" in lines[0] and "quick" in lines[0]


@pytest.mark.parametrize("value, message", [
    ("1,x", "bad glimpse list '1,x'"),
    ("0,2", "glimpse counts must be >= 1"),
    ("2,2", "is repeated"),
    (",", "empty glimpse list"),
])
def test_bad_glimpse_list(value, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["run", "--glimpses", value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_bad_seeds_and_numbers(capsys):
    for argv in (["run", "--seeds", "-1"], ["run", "--epochs", "0"], ["run", "--time-budget", "abc"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
    assert "seeds must be >= 0" in capsys.readouterr().err


def test_unwritable_output_fails_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--out", str(blocker / "run.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not writable" in err
    assert main(["run", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_resume_with_dry_run_is_refused(capsys):
    assert main(["run", "--resume", "--dry-run"]) == 2
    assert "do not go together" in capsys.readouterr().err


def test_a_new_run_never_replaces_a_record(capsys, tmp_path):
    record = tmp_path / "long.json"
    record.write_text('{"kept": true}')
    assert main(["run", "--suite", "table2", "--out", str(record)]) == 2
    assert "already exists; continue its run with --resume" in capsys.readouterr().err
    assert record.read_text() == '{"kept": true}'
    dry = tmp_path / "dry.json"
    for _ in range(2):  # one batch of each job, never a result: .ci/run may run twice in one checkout
        assert main(["run", "--dry-run", "--no-progress", "--threads", "1", "--out", str(dry),
                     "--checkpoint-dir", str(tmp_path / "ck")]) == 0


def test_bad_device_is_exit_2(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert main(["run", "--device", "cuda", "--dry-run", "--out", str(tmp_path / "r.json")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_list_shows_every_suite_with_time_and_targets(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    for name, s in suites.SUITES.items():
        assert out.count(f"{name}") >= 1 and s.expected in out
    assert "quick (default)" in out and "test_error[glimpses=8] < 0.5" in out


def test_parser_defaults_and_lists():
    a = build_parser().parse_args(["run", "--glimpses", "8,1,4", "--seeds", "2,0,2", "--threads", "1"])
    assert a.suite == "quick" and a.glimpses == (1, 4, 8) and a.seeds == (2, 0) and a.threads == 1
    assert a.device == "auto" and not a.dry_run and not a.resume


def test_suite_overrides_apply_to_every_job():
    s = suites.override(suites.get("table1"), glimpses=(4, 8), epochs=3, time_budget_min=1.5)
    clf = [j for j in s.jobs if j.kind == "classifier"]
    assert all(j.glimpses == (4, 8) and j.epochs == 3 and j.time_budget_min == 1.5 for j in clf)
    assert dict(clf[0].seeds_by_glimpses) == {4: (0, 1, 2), 8: (0, 1, 2)}


def test_a_resume_takes_the_records_selection_unless_told_otherwise():
    from bench.cli import _selection_from_record

    made_with = {"config": {"options": {"glimpses": [6], "seeds": [0], "jobs": [4], "on_relapse": "rollback",
                                        "model": None, "compact_checkpoints": True, "settings": {"hidden": 128}}}}
    args = build_parser().parse_args(["run", "--suite", "ram60", "--resume", "--out", "r.json"])
    _selection_from_record(args, made_with)
    assert (args.glimpses, args.seeds, args.jobs, args.on_relapse) == ((6,), (0,), (4,), "rollback")
    assert args.settings == {"hidden": 128}
    assert args.compact_checkpoints and args.model is None
    told = build_parser().parse_args(["run", "--suite", "ram60", "--resume", "--out", "r.json", "--glimpses", "4,8"])
    _selection_from_record(told, made_with)
    assert told.glimpses == (4, 8)  # what is given is kept: the runner then refuses a changed recipe by name


def test_set_changes_a_setting_in_every_trained_job_that_has_it():
    s = suites.with_deviations(suites.get("table1"), suites.parse_settings("hidden=512,betas=(0.5, 0.99),lr=5e-4"))
    trained = [j for j in s.jobs if hasattr(j, "optim")]
    assert {j.kind for j in trained} == {"classifier", "ram"}
    assert all(j.model.hidden == 512 and j.optim.betas == (0.5, 0.99) and j.optim.lr == 5e-4 for j in trained)
    baselines = [j for j in s.jobs if j.kind == "baseline"]
    assert baselines == [j for j in suites.get("table1").jobs if j.kind == "baseline"]
    only_draw = suites.with_deviations(suites.get("table2"), {"z_size": 50})
    assert [j.model.z_size for j in only_draw.jobs] == [50, 50]


@pytest.mark.parametrize("given, says", [
    ("hiden=5", "--set hiden: no trained job of suite table1 has this setting; theirs: "),
    ("epochs=3", "--set epochs: give it with --epochs"),
    ("attention=False", "--set attention: give it with --jobs"),
    ("hidden=abc", "--set hidden='abc': the classifier on cluttered100, T = 1,2,4,8 has hidden=256; give a value"),
    ("hidden=512.0", "has hidden=256; give a value of that kind"),
    ("window_init=nope", "window_init must be one of"),
])
def test_set_refuses_what_it_cannot_change_naming_it(given, says):
    with pytest.raises(suites.SuiteError, match=re.escape(says)):
        suites.with_deviations(suites.get("table1"), suites.parse_settings(given))


def test_set_on_jobs_that_take_no_settings_says_so():
    conv_only = suites.override(suites.get("table1"), job_indices=(2,))
    with pytest.raises(suites.SuiteError, match=re.escape("--set train_limit: the jobs of suite table1 chosen here "
                                                          "(conv baseline on cluttered100) take no --set settings")):
        suites.with_deviations(conv_only, {"train_limit": 640})


def test_set_from_the_command_line(capsys):
    p = run_cli("run", "--suite", "table1", "--set", "hidden", "--dry-run")
    assert p.returncode == 2 and "argument --set: 'hidden' is not name=value" in p.stderr
    assert main(["run", "--suite", "table1", "--set", "nope=1", "--dry-run"]) == 2
    assert "--set nope: no trained job of suite table1" in capsys.readouterr().err


@pytest.mark.parametrize("program", ["bench", "datasets"])
def test_a_reader_that_stops_early_is_no_error(program):
    """`python -m bench status | head -1`: the closed pipe ends the command quietly, exit status 0."""
    command = "cmd_status" if program == "bench" else "cmd_show"
    code = (f"import sys; from {program} import cli; "
            f"cli.{command} = lambda args: [print('x' * 100) for _ in range(100_000)] and 0; "
            f"sys.exit(cli.main({['status'] if program == 'bench' else ['show', 'cluttered60']!r}))")
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"x" * 100 + b"\n"
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 0 and err == ""


def test_an_interrupted_run_prints_its_own_command_to_continue(tmp_path, monkeypatch, capsys):
    """With --resume added, the sitting's budget, units and options stay; a dry run is only run again."""
    from bench import runner

    def interrupted(opts, log, argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    out = tmp_path / "r.json"
    assert main(["run", "--suite", "table2", "--epochs", "150", "--units", "draw-*", "--out", str(out)]) == 130
    assert f"continue with python -m bench run --suite table2 --epochs 150 --units 'draw-*' --out {out} --resume" \
        in capsys.readouterr().err
    assert main(["run", "--dry-run", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "a dry run is not resumed; run it again" in err and "--resume" not in err


def test_the_help_s_first_line_names_every_command():
    from bench import cli

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    first_line = cli.__doc__.splitlines()[0]
    assert [c for c in commands if f" {c} " not in first_line.replace("`", " ")] == []


def test_a_dry_run_replaces_only_a_dry_runs_record_and_never_writes_over_a_runs_checkpoints(
        capsys, tmp_path, mnist_data):
    from bench import records, runner
    from fixtures.bench_records import make_record

    real = records.write(make_record(), tmp_path / "long.json")
    before = real.read_text()
    assert main(["run", "--dry-run", "--no-progress", "--threads", "1", "--out", str(real)]) == 2
    assert "a dry run replaces only a dry run's record" in capsys.readouterr().err and real.read_text() == before
    ck = tmp_path / "ck" / "fresh"  # a run's checkpoints where a dry run's record would put its own
    ck.mkdir(parents=True)
    (ck / "classifier-cluttered60-T8-perstep-s0.pt").write_bytes(b"a run's state")
    for _ in range(2):  # also after its record is gone: its own checkpoints are never in its way
        assert main(["run", "--dry-run", "--no-progress", "--threads", "1", "--out", str(tmp_path / "fresh.json"),
                     "--checkpoint-dir", str(tmp_path / "ck")]) == 0
        (tmp_path / "fresh.json").unlink()
    assert (ck / "classifier-cluttered60-T8-perstep-s0.pt").read_bytes() == b"a run's state"
    assert (runner.DRY_RUNS / "checkpoints" / "fresh" / "classifier-cluttered60-T8-perstep-s0.pt").is_file()
