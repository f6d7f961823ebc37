"""scripts/device_sitting.sh: a plan to its deadline, an after-command, and what the sitting wrote packed
into 15 MiB parts under $OUT."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "device_sitting.sh"


def _sitting(tmp_path, args, out=True):
    work = tmp_path / "work"  # a stand-in for the repository root on the device machine
    (work / "results").mkdir(parents=True, exist_ok=True)
    if not (work / "scripts").exists():
        (work / "scripts").symlink_to(REPO / "scripts")
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO))
    env.pop("OUT", None)
    if out:
        env["OUT"] = str(tmp_path / "out")
        (tmp_path / "out").mkdir(exist_ok=True)
    return work, subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=work, env=env, capture_output=True,
                                text=True, timeout=120)


def test_what_the_sitting_wrote_comes_back_in_parts(tmp_path):
    work = tmp_path / "work"
    (work / "results").mkdir(parents=True)
    (work / "results" / "old.json").write_text("{}")  # there before the sitting: stays behind
    time.sleep(1.1)
    plan = tmp_path / "plan.txt"
    plan.write_text("--list\n")
    work, done = _sitting(tmp_path, [30, plan, "mkdir -p results/new && echo made > results/new/f.txt"])
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    written = (out / "written.txt").read_text().split()
    assert written == ["results/new/f.txt", "runs/logs/device/1.log"]
    parts = sorted(out.glob("sitting.tgz.*"))
    assert [p.name for p in parts] == ["sitting.tgz.00"]
    with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == written
        assert tar.extractfile("results/new/f.txt").read() == b"made\n"
        assert "table1" in tar.extractfile("runs/logs/device/1.log").read().decode()


def test_a_failing_after_command_is_reported_and_the_files_still_come_back(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("--list\n")
    _, done = _sitting(tmp_path, [30, plan, "exit 3"])
    assert done.returncode == 0
    assert "after-command failed with status 3" in done.stderr
    assert (tmp_path / "out" / "sitting.tgz.00").is_file()


def test_without_out_or_arguments_it_refuses(tmp_path):
    plan = tmp_path / "plan.txt"
    plan.write_text("--list\n")
    _, done = _sitting(tmp_path, [30, plan], out=False)
    assert done.returncode != 0 and "set OUT" in done.stderr
    _, done = _sitting(tmp_path, [30])
    assert done.returncode == 2 and "usage" in done.stderr
