"""scripts/parallel_runs.sh: one `bench run` per plan line, side by side, stopped cleanly at a deadline."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "parallel_runs.sh"


def _run(args, tmp_path, timeout=240):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _line(tmp_path, name, *extra):
    return (f"--suite quick --jobs 0 --glimpses 1 --device cpu --threads 1 --no-progress --out {tmp_path / name}.json "
            f"--checkpoint-dir {tmp_path / 'ck'} " + " ".join(extra))


@pytest.mark.slow
def test_runs_side_by_side_are_stopped_at_the_deadline_and_resumable(tmp_path, mnist_data):
    plan = tmp_path / "plan.txt"
    plan.write_text(f"# two runs, the first with another queued behind it\n{_line(tmp_path, 'a', '--epochs 1000')} ;; "
                    f"{_line(tmp_path, 'c')}\n\n{_line(tmp_path, 'b', '--epochs 1000')}\n")
    done = _run([20, plan, tmp_path / "logs"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("started line") == 2 and "started line 2, run 1 of 2" in done.stdout
    assert "run 2 of 2" not in (tmp_path / "logs" / "2.log").read_text()  # no queued run starts after the deadline
    assert not (tmp_path / "c.json").exists()
    for name in "ab":
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["status"] == "incomplete"  # stopped by the deadline, resumable
        assert "--resume" in (tmp_path / "logs" / ("2.log" if name == "a" else "4.log")).read_text()
        assert any((tmp_path / "ck" / name).glob("*.pt"))  # the checkpoint a resume continues from


def test_a_failing_run_fails_the_script_and_the_others_still_run(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("--suite no-such-suite\n--list\n")
    done = _run([60, plan, tmp_path / "logs"], tmp_path)
    assert done.returncode == 1
    assert "failed with exit status 2" in done.stderr
    assert "table1" in (tmp_path / "logs" / "2.log").read_text()  # the second line ran to its end


@pytest.mark.parametrize("args, message", [
    ([], "usage"),
    (["soon", "plan.txt"], "whole number of seconds"),
    (["10", "missing.txt"], "not found"),
])
def test_bad_arguments_are_refused_with_exit_2(tmp_path, args, message):
    done = _run(args, tmp_path)
    assert done.returncode == 2 and message in done.stderr


def test_a_plan_without_runs_is_refused(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("# nothing\n\n")
    done = _run([10, plan], tmp_path)
    assert done.returncode == 2 and "names no runs" in done.stderr


def test_a_module_line_runs_that_module(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("-m bench.recipe_study --help\n--list\n")
    done = _run([60, plan, tmp_path / "logs"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "-m bench.recipe_study --help" in done.stdout and "-m bench run --list" in done.stdout
    assert "usage: python -m bench.recipe_study" in (tmp_path / "logs" / "1.log").read_text()
    assert "table1" in (tmp_path / "logs" / "2.log").read_text()


def test_runs_queued_on_one_line_run_one_after_another_into_its_log(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("--list ;; --suite no-such-suite ;; -m bench.recipe_study --help\n")
    done = _run([60, plan, tmp_path / "logs"], tmp_path)
    assert done.returncode == 1  # the failing run in the middle fails the script, and the queue goes on
    assert "line 1, run 2" in done.stderr and "failed with exit status 2" in done.stderr
    log = (tmp_path / "logs" / "1.log").read_text()
    heads = [log.index(f"== run {k} of 3") for k in (1, 2, 3)]
    assert heads == sorted(heads)
    assert log.index("table1") < heads[1] and log.index("usage: python -m bench.recipe_study") > heads[2]


FAKE_RUN = """#!/usr/bin/env bash
# a stand-in for `python -m NAME`: says it started, runs until SIGTERM, then exits as bench run does (130)
echo "start $2" >> "$FAKE_LOG"
trap 'echo "term $2" >> "$FAKE_LOG"; exit 130' TERM
while true; do sleep 0.1; done
"""


@pytest.mark.parametrize("sig", ["TERM", "INT", "HUP"])
def test_a_signal_to_the_script_stops_its_runs_and_their_queues(tmp_path, sig):
    import signal
    import time

    fake, log = tmp_path / "fake_python", tmp_path / "runs.log"
    fake.write_text(FAKE_RUN)
    fake.chmod(0o755)
    plan = tmp_path / "plan.txt"
    plan.write_text("-m first ;; -m queued\n-m second\n")
    env = dict(os.environ, PYTHON=str(fake), FAKE_LOG=str(log))
    p = subprocess.Popen(["bash", str(SCRIPT), "600", str(plan), str(tmp_path / "logs")], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and not (log.exists() and log.read_text().count("start") == 2):
            time.sleep(0.1)
        p.send_signal(getattr(signal, f"SIG{sig}"))
        out, err = p.communicate(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of the script, its lines and runs
            os.killpg(p.pid, signal.SIGKILL)
    events = sorted(log.read_text().split("\n")[:-1])
    assert events == ["start first", "start second", "term first", "term second"], (events, out, err)
    assert p.returncode == 0, err
