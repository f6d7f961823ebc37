"""Faults: truncated or corrupt records, checkpoints and npz artifacts give one clear error line (exit
status 2 on the command line); a full disk while writing keeps the previous good file intact."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import checkpoints, records, runner
from bench.cli import main as bench_main
from datasets import build, fileio
from datasets import mnist

GOOD_RECORD = {"schema_version": 1, "suite": "quick", "started_at": "2024-01-01T00:00:00Z", "finished_at": None,
               "status": "incomplete", "commit": {"sha": None, "short": "x", "dirty": False},
               "machine": {"id": "m"}, "config": {}, "seeds": [0], "metrics": [], "curves": {}}


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


def truncate(path: Path, keep: float = 0.5) -> bytes:
    data = path.read_bytes()[: int(path.stat().st_size * keep)]
    path.write_bytes(data)
    return data


class FullDisk:
    """A temporary-file writer that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, fd: int, room: int):
        self.f, self.room = os.fdopen(fd, "wb"), room

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > self.room:
            self.f.write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def assert_survived(path: Path, good: bytes) -> None:
    assert path.read_bytes() == good, f"{path} was changed"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == [], f"temporary files left behind: {leftovers}"


# ---------------------------------------------------------------- damaged inputs

@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_record_is_one_clear_error(tmp_path, capsys, damage):
    path = records.write(dict(GOOD_RECORD), tmp_path / "r.json")
    if damage == "truncated":
        bad = truncate(path)
    else:
        bad = path.read_bytes().replace(b'"metrics": []', b'"metrics": 7')
        path.write_bytes(bad)
    with pytest.raises(records.RecordError, match="r.json"):
        records.read(path)
    assert bench_main(["compare", str(path), str(path)]) == 2
    assert "r.json" in one_line_error(capsys)
    # resuming it is refused too, and the damaged record is left as it is (evidence, not overwritten)
    assert bench_main(["run", "--resume", "--out", str(path), "--device", "cpu"]) == 2
    assert "r.json" in one_line_error(capsys)
    assert path.read_bytes() == bad


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, capsys, damage):
    path = tmp_path / "unit.pt"
    checkpoints.save(path, {"format": "glimpse-train-1", "task": {"task": "classifier"},
                            "model": {"w": torch.randn(256, 256)}})
    if damage == "truncated":
        bad = truncate(path)
    else:
        data = bytearray(path.read_bytes())
        data[: 64] = b"\x00" * 64
        bad = bytes(data)
        path.write_bytes(bad)
    with pytest.raises(checkpoints.CheckpointError, match="unreadable checkpoint"):
        checkpoints.load(path)
    for argv in (["eval", "--checkpoint", str(path), "--device", "cpu"], ["export", str(path), str(tmp_path / "x.pt")]):
        assert bench_main(argv) == 2
        assert "unit.pt: unreadable checkpoint" in one_line_error(capsys)
    assert path.read_bytes() == bad and not (tmp_path / "x.pt").exists()


def _record_with_artifacts(folder: Path) -> Path:
    path = records.write({**GOOD_RECORD, "artifacts": "r.npz"}, folder / "r.json")
    np.savez_compressed(folder / "r.npz", **{"u/samples": np.zeros((2, 1, 4, 4), np.uint8)})
    return path


def test_damaged_npz_artifacts_stop_the_report_before_it_writes(tmp_path, capsys):
    _record_with_artifacts(tmp_path)
    truncate(tmp_path / "r.npz")
    out = tmp_path / "report"
    assert bench_main(["report", "--records", str(tmp_path / "r.json"), "--out", str(out)]) == 2
    assert "r.npz: damaged artifacts file" in one_line_error(capsys)
    assert not out.exists()


def test_damaged_npz_artifacts_refuse_a_resume(tmp_path):
    path = _record_with_artifacts(tmp_path)
    (tmp_path / "r.npz").write_bytes(b"PK\x03\x04 not really a zip")
    r = runner.Runner.__new__(runner.Runner)
    with pytest.raises(runner.ResumeError, match="r.npz: damaged artifacts file.*move it aside"):
        r._load_artifacts(path)


def test_damaged_built_npz_is_one_clear_error(tmp_path, mnist_data):
    folder = build.build("translated60", 0, tmp_path / "b", limit=4)
    truncate(folder / "valid.npz")
    with pytest.raises(mnist.DataError, match="valid.npz cannot be read .*rebuild it"):
        build.load_built(folder, "valid")


# ---------------------------------------------------------------- full disk

def test_full_disk_while_writing_a_record_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    records.write(dict(GOOD_RECORD), path)
    good = path.read_bytes()
    monkeypatch.setattr(fileio, "_open_temp", lambda fd: FullDisk(fd, room=64))
    with pytest.raises(fileio.WriteError) as e:
        records.write({**GOOD_RECORD, "status": "complete"}, path)
    assert e.value.errno == errno.ENOSPC
    assert str(path) in str(e.value) and "unchanged" in str(e.value)
    assert_survived(path, good)


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "unit.pt"
    checkpoints.save(path, {"step": 1, "model": {"w": torch.zeros(8)}})
    good = path.read_bytes()
    monkeypatch.setattr(fileio, "_open_temp", lambda fd: FullDisk(fd, room=len(good) // 2))
    with pytest.raises(fileio.WriteError, match="unit.pt"):
        checkpoints.save(path, {"step": 2, "model": {"w": torch.ones(8)}})
    assert_survived(path, good)
    assert checkpoints.load(path)["step"] == 1


def test_full_disk_on_the_command_line_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    src = tmp_path / "unit.pt"
    checkpoints.save(src, {"task": {"task": "classifier"}, "model": {"w": torch.zeros(512)}})
    dst = tmp_path / "ref.pt"
    assert bench_main(["export", str(src), str(dst)]) == 0
    capsys.readouterr()
    good = dst.read_bytes()
    monkeypatch.setattr(fileio, "_open_temp", lambda fd: FullDisk(fd, room=100))
    again = tmp_path / "ref2.pt"  # export refuses an existing destination: a new one, on a full disk
    assert bench_main(["export", str(src), str(again)]) == 2
    line = one_line_error(capsys)
    assert f"cannot write {again}" in line and os.strerror(errno.ENOSPC) in line and "unchanged" in line
    assert not again.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ref.pt", "unit.pt"]
    assert_survived(dst, good)


def test_full_disk_while_saving_artifacts_keeps_record_and_artifacts(tmp_path, monkeypatch):
    path = _record_with_artifacts(tmp_path)
    good_record, good_npz = path.read_bytes(), (tmp_path / "r.npz").read_bytes()
    r = runner.Runner.__new__(runner.Runner)
    r.opts, r.sitting, r.skipped, r.stamp_budgets = runner.RunOptions(), None, set(), None
    r.artifacts = {"u/samples": np.random.default_rng(0).integers(0, 255, (8, 4, 28, 28), dtype=np.uint8)}
    monkeypatch.setattr(fileio, "_open_temp", lambda fd: FullDisk(fd, room=100))
    with pytest.raises(fileio.WriteError):
        r.save(json.loads(good_record), path)
    assert_survived(path, good_record)
    assert_survived(tmp_path / "r.npz", good_npz)
