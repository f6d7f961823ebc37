"""Run records: schema round trip, validation errors, the index and load_all."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from bench import records
from fixtures.bench_records import make_record


def test_record_round_trip(tmp_path):
    r = make_record(seeds=(0, 1))
    path = records.write(r, tmp_path / "runs" / "m" / "x.json")
    back = records.read(path)
    assert back == json.loads(json.dumps(r))
    assert not list(path.parent.glob(".*.tmp"))  # atomic: no temporary file left behind


def test_new_record_has_provenance():
    machine = records.machine_info("cpu", threads=1)
    r = records.new_record("quick", {"a": 1}, [0], machine)
    records.validate(r)
    assert set(records.REQUIRED) <= set(r)
    assert r["commit"]["sha"] is None or len(r["commit"]["sha"]) == 40
    assert isinstance(r["commit"]["dirty"], (bool, type(None)))
    assert machine["cores"] >= 1 and machine["threads"] == 1 and machine["torch"]
    assert machine["id"].startswith("cpu-")
    path = records.default_path(r)
    assert path.parent.name == machine["id"] and path.name.endswith(f"_{r['commit']['short']}.json")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_commit_dirty_counts_code_only(tmp_path):
    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench").mkdir()
    (tmp_path / "results" / "runs").mkdir(parents=True)
    (tmp_path / "bench" / "tables.py").write_text("a = 1\n")
    (tmp_path / "results" / "runs" / "r.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "x")
    clean = records.commit_info(tmp_path)
    assert clean["dirty"] is False and clean["dirty_paths"] == [] and clean["results_changed"] == 0
    (tmp_path / "results" / "runs" / "r.json").write_text('{"a": 1}\n')  # a run beside it wrote its record
    beside = records.commit_info(tmp_path)
    assert beside["dirty"] is False and beside["results_changed"] == 1
    (tmp_path / "bench" / "tables.py").write_text("a = 2\n")
    edited = records.commit_info(tmp_path)
    assert edited["dirty"] is True and edited["dirty_paths"] == ["bench/tables.py"]
    assert edited["sha"] == clean["sha"] and edited["results_changed"] == 1


def test_commit_outside_git_is_unknown(tmp_path):
    assert records.commit_info(tmp_path / "none") == {"sha": None, "short": "nogit", "dirty": None}


ZEN4 = """processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
flags		: fpu sse avx2 avx512f avx512_bf16 avx512vl

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
"""


def test_the_cpu_is_identified_beyond_a_masked_model_name():
    """Two EPYCs with the same masked name ran DRAW at 2x different speeds: family and model tell them apart."""
    cpu = records.cpu_identity(ZEN4)
    assert cpu == {"vendor": "AuthenticAMD", "family": 25, "model": 17, "stepping": 1,
                   "features": ["avx2", "avx512f", "avx512_bf16"]}  # the first processor's
    assert records.cpu_identity("") == {}
    assert records.cpu_label({"device": "cpu", "cpu": cpu}) == ", family 25 model 17, avx512_bf16"
    assert records.cpu_label({"device": "cuda", "cpu": cpu}) == ""
    assert records.cpu_label({"device": "cpu"}) == ""  # a record made before the identity was kept
    assert set(records.machine_info()["cpu"]) <= {"vendor", "family", "model", "stepping", "features"}


@pytest.mark.parametrize("damage, message", [
    (lambda r: r.pop("machine"), "missing field"),
    (lambda r: r.update(status="done"), "status 'done'"),
    (lambda r: r.update(schema_version=99), "schema_version 99"),
    (lambda r: r["metrics"][0].pop("unit"), r"metrics\[0\] lacks \['unit'\]"),
])
def test_validation_names_the_problem(damage, message):
    r = make_record()
    damage(r)
    with pytest.raises(records.RecordError, match=message):
        records.validate(r)


def test_nan_is_written_as_null(tmp_path):
    r = make_record()
    r["metrics"][0]["value"] = float("nan")
    path = records.write(r, tmp_path / "n.json")
    assert json.loads(path.read_text())["metrics"][0]["value"] is None


def test_unreadable_record_is_reported(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(records.RecordError, match="not valid JSON"):
        records.read(p)


def test_index_and_load_all(tmp_path):
    root = tmp_path / "results"
    a = records.write(make_record(), root / "runs" / "m" / "a.json")
    b = records.write(make_record(seeds=(0, 1, 2), started="2026-02-01T00:00:00Z"), root / "runs" / "m" / "b.json")
    for p in (a, b, a):  # re-indexing a record replaces its row
        records.update_index(p, records.read(p), root)
    rows = list(csv.DictReader(open(root / "index.csv")))
    assert [r["path"] for r in rows] == ["runs/m/a.json", "runs/m/b.json"]
    assert rows[1]["seeds"] == "0 1 2" and rows[1]["metrics"] == str(len(records.read(b)["metrics"]))
    df = records.load_all(root / "runs")
    assert len(df) == sum(len(records.read(p)["metrics"]) for p in (a, b))
    err8 = df[(df.name == "test_error") & (df.p_glimpses == 8)]
    assert sorted(err8.seed.tolist()) == [0, 0, 1, 2]
    speed = df[df.name == "train_images_per_s"]
    assert (speed["q1"] <= speed["median"]).all() and (speed["median"] <= speed["q3"]).all()
    assert records.rebuild_index(root).read_text() == (root / "index.csv").read_text()


def test_sittings_sharing_a_record_keep_each_others_notes_and_stamps():
    """Sitting B (unit Y) saves after sitting A (unit X) noted X's plateau and resumed: A's note and
    stamp stay; B's own note on Y replaces its old one; notes of no unit stay B's."""
    from bench import resume

    disk = {"jobs": {"X": {"status": "complete"}, "Y": {"status": "running"}}, "curves": {}, "metrics": [],
            "segments": [], "notes": ["X: WARNING: never left the plateau", "Y: old"],
            "resumed_at": ["2026-12-05T10:00:00Z"],
            "recipe_renewed": [{"at": "2026-12-05T10:00:00Z", "job": 0, "changes": ["lr"]}]}
    b = {"jobs": {"X": {"status": "running"}, "Y": {"status": "running"}}, "curves": {}, "metrics": [],
         "segments": [], "notes": ["Y: left the plateau at epoch 2", "a note on the whole record"],
         "resumed_at": ["2026-12-05T09:00:00Z"]}
    resume.merge_other_sittings(b, disk, lambda u: u == "Y", None)
    assert b["jobs"]["X"] == {"status": "complete"}
    assert b["notes"] == ["Y: left the plateau at epoch 2", "a note on the whole record",
                          "X: WARNING: never left the plateau"]
    assert b["resumed_at"] == ["2026-12-05T09:00:00Z", "2026-12-05T10:00:00Z"]
    assert b["recipe_renewed"] == disk["recipe_renewed"]
