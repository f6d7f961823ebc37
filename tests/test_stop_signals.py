"""`bench run` stopped from outside: SIGTERM and SIGINT stop it cleanly within seconds (checkpoint,
record marked interrupted and resumable); kill -9 loses at most one checkpoint interval."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import checkpoints

REPO = Path(__file__).resolve().parent.parent

# A suite that trains for minutes unless stopped: a small classifier, many epochs.
LAUNCHER = """
import sys
from bench import suites
from bench.cli import main
from bench.optim import Optim
from models.classifier import ClassifierConfig
suites.SUITES["slow"] = suites.Suite(
    name="slow", description="test", expected="minutes",
    jobs=(suites.ClassifierJob(dataset="cluttered60", glimpses=(2,), per_step_loss=False,
                               model=ClassifierConfig(read_n=4, hidden=32), optim=Optim(batch_size=16), epochs=200,
                               train_limit=4000, valid_limit=64, test_limit=64),))
raise SystemExit(main(sys.argv[1:]))
"""
UNIT = "classifier-cluttered60-T2-s0"


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path, Path]:
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    out, ckdir = tmp_path / "run.json", tmp_path / "ckpt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, str(launcher), "run", "--suite", "slow", "--threads", "1", "--no-progress",
                          "--out", str(out), "--checkpoint-dir", str(ckdir), *extra],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return p, out, ckdir / "run" / f"{UNIT}.pt"


def wait_for(predicate, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


def images_in(ckpt: Path) -> int:
    return checkpoints.load(ckpt)["images_seen"]


def resume(tmp_path: Path, out: Path, ckpt: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Continue the record with a budget that ends in the epoch the checkpoint is in (a run may be
    shortened until it reaches the shorter budget's end): the unit finishes soon and the record
    completes. Returns the process and that budget."""
    epochs = checkpoints.load(ckpt)["epoch"] + 1
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(tmp_path / "launch.py"), "run", "--suite", "slow", "--threads", "1",
                           "--no-progress", "--resume", "--out", str(out), "--epochs", str(epochs)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300), epochs


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_and_marks_the_record_resumable(tmp_path, mnist_data, sig):
    # Frequent checkpoints only to see from outside that training has begun (a busy machine may take
    # seconds for the first batch); the signal must still write the last state itself.
    p, out, ckpt = start(tmp_path, "--checkpoint-every", "0.5")
    try:
        wait_for(lambda: (ckpt.is_file() and images_in(ckpt) > 0) or p.poll() is not None)
        time.sleep(1.0)  # training, inside the first epoch
        t0 = time.monotonic()
        p.send_signal(sig)
        _, err = p.communicate(timeout=30)
        stopped_in = time.monotonic() - t0
    finally:
        p.kill()
    assert p.returncode == 130, err[-2000:]
    assert stopped_in < 10, f"took {stopped_in:.1f} s to stop"
    assert "continue with" in err and "Traceback" not in err
    # the sitting's own command again, with --resume: its budget, units and options
    assert f"continue with python -m bench run --suite slow --threads 1 --no-progress --out {out} --checkpoint-dir " \
           f"{out.parent / 'ckpt'} --checkpoint-every 0.5 --resume" in err, err[-500:]
    r = json.loads(out.read_text())
    assert r["status"] == "incomplete" and r["jobs"][UNIT]["status"] == "incomplete"
    assert r["segments"][-1]["status"] == "incomplete" and r["segments"][-1]["images_seen"] > 0
    assert ckpt.is_file() and images_in(ckpt) == r["segments"][-1]["images_seen"]  # the state at the stop
    done, epochs = resume(tmp_path, out, ckpt)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["status"] == "complete" and len(r["segments"]) == 2 and r["jobs"][UNIT]["budget"]["epochs"] == epochs


@pytest.mark.slow
def test_kill_9_loses_at_most_one_checkpoint_interval(tmp_path, mnist_data):
    interval = 1.0
    p, out, ckpt = start(tmp_path, "--checkpoint-every", str(interval))
    try:
        wait_for(lambda: (ckpt.is_file() and images_in(ckpt) > 0) or p.poll() is not None)
        time.sleep(2.5)
        killed_at = time.time()
        p.kill()
        p.communicate(timeout=30)
    finally:
        p.kill()
    assert images_in(ckpt) > 0
    lost = killed_at - ckpt.stat().st_mtime
    assert lost <= interval + 1.5, f"the last checkpoint was {lost:.1f} s old at kill -9 (interval {interval} s)"
    r = json.loads(out.read_text())
    assert r["status"] == "incomplete" and r["jobs"][UNIT]["status"] == "running"  # what kill -9 leaves
    done, _ = resume(tmp_path, out, ckpt)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text())["status"] == "complete"
