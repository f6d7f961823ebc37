"""Recipe studies: variants of one job on the same images, through the harness, with time to accuracy."""

from __future__ import annotations

import pytest

from bench import recipe_study, records, suites
from bench.suites import ClassifierJob, Suite

BASE = Suite(name="tinybase", description="", expected="",
             jobs=(ClassifierJob(dataset="cluttered60", glimpses=(1, 2), per_step_loss=False, read_n=4, hidden=16,
                                 batch_size=16, epochs=2, train_limit=64, valid_limit=32, test_limit=32),))


def test_parse_variant_checks_fields():
    job = BASE.jobs[0]
    assert recipe_study.parse_variant("wsd:schedule=wsd,warmup_epochs=1,lr=2e-3", job) == \
        ("wsd", {"schedule": "wsd", "warmup_epochs": 1, "lr": 0.002})
    for bad in ("no label", "x:nofield=1", "x:lr", "bad label:lr=1"):
        with pytest.raises(recipe_study.StudyError):
            recipe_study.parse_variant(bad, job)


def test_a_study_trains_each_variant_on_the_same_images(tmp_path, monkeypatch, mnist_data, capsys):
    monkeypatch.setitem(suites.SUITES, "tinybase", BASE)
    out = tmp_path / "s.json"
    code = recipe_study.main(["lrs", "--job", "tinybase:0", "--glimpses", "2", "--variant", "slow:lr=1e-4",
                              "--variant", "fast:lr=1e-2", "--out", str(out)])
    assert code == 0
    rec = records.read(out)
    assert rec["suite"] == "study-lrs" and rec["status"] == "complete"
    assert sorted(rec["curves"]) == ["classifier-cluttered60-T2-fast-s0", "classifier-cluttered60-T2-slow-s0"]
    slow, fast = (rec["curves"][f"classifier-cluttered60-T2-{v}-s0"] for v in ("slow", "fast"))
    assert [e["images_seen"] for e in slow] == [e["images_seen"] for e in fast]  # the same batches
    assert slow[-1]["train_loss"] != fast[-1]["train_loss"]
    text = capsys.readouterr().out
    assert "classifier-cluttered60-T2-fast-s0: best valid_error" in text and "< 0.05:" in text
    assert recipe_study.main(["dup", "--job", "tinybase:0", "--variant", "a:lr=1", "--variant", "a:lr=2",
                              "--out", str(tmp_path / "d.json")]) == 2
