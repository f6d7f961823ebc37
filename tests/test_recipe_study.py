"""Recipe studies: variants of one job on the same images, through the harness, with time to accuracy."""

from __future__ import annotations

import pytest

from bench import recipe_study, records, suites
from bench.optim import Optim
from bench.suites import ClassifierJob, Suite
from models.classifier import ClassifierConfig

BASE = Suite(name="tinybase", description="", expected="",
             jobs=(ClassifierJob(dataset="cluttered60", glimpses=(1, 2), per_step_loss=False,
                                 model=ClassifierConfig(read_n=4, hidden=16), optim=Optim(batch_size=16), epochs=2,
                                 train_limit=64, valid_limit=32, test_limit=32),))


def test_parse_variant_checks_fields():
    job = BASE.jobs[0]
    assert recipe_study.parse_variant("wsd:schedule=wsd,warmup_epochs=1,lr=2e-3", job) == \
        ("wsd", {"schedule": "wsd", "warmup_epochs": 1, "lr": 0.002})
    for bad in ("no label", "x:nofield=1", "x:lr", "bad label:lr=1"):
        with pytest.raises(recipe_study.StudyError):
            recipe_study.parse_variant(bad, job)


def test_a_tuple_value_and_common_settings():
    job = recipe_study.base_job("table2:0")
    assert recipe_study.parse_variant("b05:betas=(0.5, 0.999),lr=2e-3", job) == \
        ("b05", {"betas": (0.5, 0.999), "lr": 2e-3})
    suite = recipe_study.study_suite("s", job, ["a:", "b:initial_state=learned"], None, 0, "iwae_limit=10,iwae_k=5")
    assert [(j.iwae_limit, j.iwae_k, j.model.initial_state) for j in suite.jobs] == \
        [(10, 5, "zero"), (10, 5, "learned")]
    with pytest.raises(recipe_study.StudyError, match="not name=value"):
        recipe_study.study_suite("s", job, ["a:"], None, 0, "no_such=1")
    with pytest.raises(recipe_study.StudyError, match="--set 'batch_size=-5': .*positive integer"):
        recipe_study.study_suite("s", job, ["a:"], None, 0, "batch_size=-5")  # a value the config refuses


def test_a_study_trains_each_variant_on_the_same_images(tmp_path, monkeypatch, mnist_data, capsys):
    monkeypatch.setitem(suites.SUITES, "tinybase", BASE)
    out = tmp_path / "s.json"
    code = recipe_study.main(["lrs", "--job", "tinybase:0", "--glimpses", "2", "--variant", "slow:lr=1e-4",
                              "--variant", "fast:lr=1e-2", "--device", "cpu", "--out", str(out),
                              "--checkpoint-dir", str(tmp_path / "ck")])
    assert code == 0
    rec = records.read(out)
    assert rec["suite"] == "study-lrs" and rec["status"] == "complete" and rec["machine"]["device"] == "cpu"
    assert sorted(rec["curves"]) == ["classifier-cluttered60-T2-fast-s0", "classifier-cluttered60-T2-slow-s0"]
    slow, fast = (rec["curves"][f"classifier-cluttered60-T2-{v}-s0"] for v in ("slow", "fast"))
    assert [e["images_seen"] for e in slow] == [e["images_seen"] for e in fast]  # the same batches
    assert slow[-1]["train_loss"] != fast[-1]["train_loss"]
    text = capsys.readouterr().out
    assert "classifier-cluttered60-T2-fast-s0: best valid_error" in text and "< 0.05:" in text
    assert recipe_study.main(["dup", "--job", "tinybase:0", "--variant", "a:lr=1", "--variant", "a:lr=2",
                              "--out", str(tmp_path / "d.json")]) == 2


def test_time_to_accuracy_counts_core_seconds_where_the_curve_has_them():
    curve = [{"epoch": 1, "images_seen": 100, "valid_error": 0.5, "train_time_s": 10.0},  # older curves: wall x threads
             {"epoch": 2, "images_seen": 200, "valid_error": 0.04, "train_time_s": 90.0, "train_cost": {"cpu": 30.0}}]
    rec = {"machine": {"threads": 2}, "curves": {"u": curve}, "jobs": {"u": {"kind": "classifier"}}}
    reached = recipe_study.time_to_accuracy(rec)[0]["reached"]
    assert reached[0.5] == reached[0.05] == (200, 30.0) and reached[0.04] is None
    del curve[1]["train_cost"]
    assert recipe_study.time_to_accuracy(rec)[0]["reached"][0.05] == (200, 180.0)


def test_an_unknown_device_is_refused_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(suites.SUITES, "tinybase", BASE)
    code = recipe_study.main(["dev", "--job", "tinybase:0", "--variant", "a:lr=1e-3", "--device", "tpu",
                              "--out", str(tmp_path / "d.json")])
    assert code == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("model", ["classifier", "draw"])
def test_window_init_study_is_a_recipe_study(model, monkeypatch):
    from bench import window_init_study

    seen = {}
    monkeypatch.setattr(recipe_study, "main", lambda argv: seen.setdefault("argv", argv) and 0)
    assert window_init_study.main(["--model", model, "--time-budget", "5"]) == 0
    argv = seen["argv"]
    assert argv[0] == f"window-init-{model}" and argv[argv.index("--time-budget") + 1] == "5.0"
    job = recipe_study.base_job(argv[argv.index("--job") + 1])
    variants = [argv[i + 1] for i, a in enumerate(argv) if a == "--variant"]
    glimpses = int(argv[argv.index("--glimpses") + 1]) if "--glimpses" in argv else None
    suite = recipe_study.study_suite(argv[0], job, variants, glimpses, 0)
    assert [(j.variant, j.model.window_init) for j in suite.jobs] == [("cover", "cover"), ("default", "default")]
    assert all(j.kind == model for j in suite.jobs)
    if model == "classifier":
        assert all(j.glimpses == (8,) and j.dataset == "cluttered100" for j in suite.jobs)
    else:
        assert all(j.model.attention and j.dataset == "binarized" for j in suite.jobs)


def test_a_ram_study_varies_the_location_policy(tmp_path, monkeypatch, mnist_data, capsys):
    from bench.suites import RamJob
    from models.ram import RamConfig

    tiny = Suite(name="tinyram", description="", expected="",
                 jobs=(RamJob(dataset="cluttered60", glimpses=(2, 3), model=RamConfig(patch=6, scales=2, hidden=16,
                                                                                    glimpse_hidden=8, location_hidden=8,
                                                                                    glimpse_size=16),
                              optim=Optim(batch_size=16), epochs=1, train_limit=64, valid_limit=32, test_limit=32),))
    monkeypatch.setitem(suites.SUITES, "tinyram", tiny)
    with pytest.raises(recipe_study.StudyError, match="not name=value"):
        recipe_study.study_suite("s", tiny.jobs[0], ["a:read_n=4"], None, 0)
    out = tmp_path / "r.json"
    assert recipe_study.main(["std", "--job", "tinyram:0", "--variant", "wide:location_std=0.2",
                              "--variant", "narrow:location_std=0.05", "--out", str(out),
                              "--checkpoint-dir", str(tmp_path / "kept"), "--compact-checkpoints"]) == 0
    assert sorted(p.name for p in (tmp_path / "kept" / "r").glob("*.pt")) == \
        ["ram-cluttered60-T3-narrow-s0.pt", "ram-cluttered60-T3-wide-s0.pt"]
    rec = records.read(out)
    assert sorted(rec["curves"]) == ["ram-cluttered60-T3-narrow-s0", "ram-cluttered60-T3-wide-s0"]
    assert [(j["variant"], j["model"]["location_std"]) for j in rec["config"]["suite"]["jobs"]] == \
        [("wide", 0.2), ("narrow", 0.05)]
    narrow, wide = (rec["curves"][f"ram-cluttered60-T3-{v}-s0"] for v in ("narrow", "wide"))
    assert [e["images_seen"] for e in narrow] == [e["images_seen"] for e in wide]
    assert narrow[-1]["train_loss"] != wide[-1]["train_loss"]
    assert "ram-cluttered60-T3-wide-s0: best valid_error" in capsys.readouterr().out
