"""A user's dry run, report and tables leave a fresh clone as clean as it came: everything they
write lands in the git-ignored runs/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(),
                                reason="needs git and a git checkout")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=True).stdout


def test_dry_run_report_and_tables_leave_a_clone_clean(tmp_path, mnist_data):
    head = _git(REPO, "rev-parse", "HEAD").strip()
    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", "--no-checkout", str(REPO), str(clone))
    _git(clone, "checkout", "-q", "--detach", head)
    assert _git(clone, "status", "--porcelain") == ""
    env = {k: v for k, v in os.environ.items() if k != "GLIMPSE_RUNS"}  # the clone's own runs/, as a user's
    env.update(PYTHONPATH=str(clone), GLIMPSE_DATA=os.environ.get("GLIMPSE_DATA") or str(REPO / "data"))  # built data

    def bench(*args: str) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-m", "bench", *args], cwd=clone, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, f"bench {' '.join(args)}: {p.stderr[-2000:]}"
        return p

    bench("run", "--dry-run", "--threads", "1", "--no-progress")
    bench("report")
    bench("tables")
    assert _git(clone, "status", "--porcelain", "--ignored=no") == ""
    assert list((clone / "runs" / "dry-run").glob("*.json")), "the dry run's record is not under runs/dry-run"
    assert (clone / "runs" / "report" / "index.html").exists()
    assert list((clone / "runs" / "dry-run" / "checkpoints").rglob("*.pt"))  # a dry run's, apart from runs
