"""Baselines: conv net shapes, overfit, FLOP hand count, training through the harness's loop (checkpoint,
resume, record); the pixel baseline on real MNIST."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import records
from models.baselines import ConvNet, ConvNetConfig, PixelBaseline, run_baseline


@pytest.mark.parametrize("hw,channels", [((100, 100), 1), ((60, 60), 1), ((28, 28), 3), ((40, 64), 2)])
def test_convnet_shapes(hw, channels):
    cfg = ConvNetConfig(height=hw[0], width=hw[1], channels=channels, filters1=4, filters2=6, hidden=16)
    model = ConvNet(cfg)
    x = torch.rand(3, channels, *hw)
    assert model(x).shape == (3, 10)
    loss, _ = model.loss(x, torch.tensor([1, 2, 3]))
    loss.backward()
    assert model.predict(x).shape == (3,)
    with pytest.raises(ValueError, match="expects images"):
        model(torch.rand(3, *hw))


def test_convnet_config_errors():
    with pytest.raises(ValueError, match="too small"):
        ConvNetConfig(height=6, width=6)
    with pytest.raises(ValueError, match="odd"):
        ConvNetConfig(kernel=4)


def test_convnet_overfits_one_batch():
    torch.manual_seed(0)
    cfg = ConvNetConfig(height=16, width=16, filters1=8, filters2=8, pool1=2, pool2=2, hidden=32)
    model = ConvNet(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.rand(16, 1, 16, 16), torch.arange(16) % 10
    first = None
    for _ in range(40):
        loss, _ = model.loss(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 20
    assert torch.equal(model.predict(x), y)


def test_convnet_counts_by_hand():
    cfg = ConvNetConfig(height=8, width=8, channels=1, num_classes=2, filters1=2, filters2=3, kernel=3,
                        pool1=2, pool2=2, hidden=4)
    model = ConvNet(cfg)
    conv1 = (2 * 1 * 9 + 1) * 2 * 64 + 2 * 64 * 2
    conv2 = (2 * 2 * 9 + 1) * 3 * 16 + 3 * 16 * 2
    dense = (2 * 12 * 4 + 4) + 4 + (2 * 4 * 2 + 2) + 5 * 2
    assert model.flops_per_image() == conv1 + conv2 + dense
    assert model.flops_per_image(train=True) == 3 * (conv1 + conv2 + dense)
    assert model.param_count() == (9 * 2 + 2) + (2 * 9 * 3 + 3) + (12 * 4 + 4) + (4 * 2 + 2)


def test_pixel_baseline_on_mnist(mnist_data):
    tr_x, tr_y, te_x, te_y = mnist_data
    base = PixelBaseline(components=30, pca_fit_size=1000, max_train=3000, seed=0).fit(tr_x[:6000], tr_y[:6000])
    err = base.error(te_x[:1000], te_y[:1000])
    assert 0.03 < err < 0.2  # linear on 30 PCs of 3000 digits: about 10%, far from chance (90%)
    assert base.info["train_size"] == 3000 and base.info["pca_fit_size"] == 1000 and base.info["components"] == 30
    again = PixelBaseline(components=30, pca_fit_size=1000, max_train=3000, seed=0).fit(tr_x[:6000], tr_y[:6000])
    assert again.error(te_x[:1000], te_y[:1000]) == err


def test_pixel_baseline_input_errors():
    base = PixelBaseline(components=4)
    with pytest.raises(RuntimeError, match="before fit"):
        base.predict(np.zeros((2, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        base.fit(np.zeros((10, 5, 5), np.float32), np.zeros(10))
    with pytest.raises(ValueError, match="labels of shape"):
        base.fit(np.zeros((10, 5, 5), np.uint8), np.zeros(9))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 5, 5), dtype=np.uint8)
    base.fit(x, np.arange(40) % 2)
    with pytest.raises(ValueError, match=r"fitted on images of shape \(5, 5\)"):
        base.predict(np.zeros((2, 6, 6), np.uint8))


def test_run_baseline_pixels():
    """The harness entry point of the pixel baseline, on a few hundred translated60 images."""
    res = run_baseline("sklearn", "translated60", seed=0, train_limit=150, test_limit=100)
    assert 0.0 <= res["test_error"] <= 1.0 and res["test_images"] == 100 and res["train_size"] == 150
    with pytest.raises(ValueError, match="single-digit"):
        run_baseline("sklearn", "twodigit60", train_limit=10, test_limit=10)
    with pytest.raises(ValueError, match="unknown baseline"):
        run_baseline("svm", "translated60")
    with pytest.raises(ValueError, match="harness's loop"):
        run_baseline("conv", "translated60")


def test_conv_net_trains_through_the_harness_loop(tmp_path, mnist_data):
    """ConvTask under bench/training_loop.py: a curve per epoch, best-valid selection, and a crash
    mid-epoch resumed from its checkpoint ends where the uninterrupted run ends."""
    from bench.suites import BaselineJob
    from bench.tasks import ConvTask
    from bench.training_loop import LoopConfig, train

    job = BaselineJob(model="conv", dataset="translated60", epochs=2, train_limit=96)

    def task():
        return ConvTask(job, 0, batch_size=16, valid_limit=48, test_limit=48)

    cfg = LoopConfig(epochs=2, progress=False)
    ref = train(task(), cfg, tmp_path / "ref.pt", log=lambda m: None)
    assert ref.step == 12 and ref.images_seen == 192 and len(ref.curve) == 2
    assert ref.best["epoch"] in (1, 2) and 0.0 <= ref.curve[-1]["valid_error"] <= 1.0
    assert task().evaluate(ref.model, "test")["images"] == 48

    def crash(step):
        if step == 8:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(task(), cfg, tmp_path / "run.pt", on_step=crash, log=lambda m: None)
    res = train(task(), cfg, tmp_path / "run.pt", resume=True, log=lambda m: None)
    assert res.resumed and res.step == 12
    for a, b in zip(ref.model.parameters(), res.model.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="single-digit"):
        ConvTask(BaselineJob(model="conv", dataset="twodigit60"), 0)


def test_bench_run_records_the_conv_baseline(tmp_path, monkeypatch, mnist_data):
    """`bench run` (dry run) trains the conv net through the loop: checkpoint, curve, baseline-conv metric."""
    from bench import runner, suites

    suite = suites.Suite(name="conv", description="conv baseline", expected="seconds",
                         jobs=(suites.BaselineJob(model="conv", dataset="translated60", epochs=1),))
    monkeypatch.setitem(suites.SUITES, "conv", suite)
    record, _ = runner.run(runner.RunOptions(suite="conv", dry_run=True, threads=1, progress=False,
                                             out=str(tmp_path / "r.json"), checkpoint_dir=str(tmp_path / "ck")),
                           log=lambda m: None)
    unit = "baseline-conv-translated60-s0"
    (m,) = record["metrics"]
    assert m["name"] == "test_error" and m["params"]["protocol"] == "baseline-conv"
    assert m["params"]["test_images"] == runner.DRY_EVAL_IMAGES and 0.0 <= m["value"] <= 1.0
    job = record["jobs"][unit]
    assert job["status"] == "complete" and job["model"] == "conv" and job["steps"] == 1
    ckpt = runner.DRY_RUNS / "checkpoints" / "r" / f"{unit}.pt"  # a dry run's, whatever --checkpoint-dir says
    assert ckpt.is_file() and not (tmp_path / "ck").exists() and len(record["curves"][unit]) == 1
    from bench.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--limit", "64", "--device", "cpu",
                 "--out", str(out)]) == 0
    (again,) = records.read(out)["metrics"]
    assert again["params"]["protocol"] == "baseline-conv" and again["value"] == m["value"]  # same weights, same images



def test_the_conv_baseline_is_extended_by_a_larger_budget(tmp_path, monkeypatch, mnist_data):
    """Trained for 1 epoch, then resumed with --epochs 2: the conv net goes on from its checkpoint, its
    1-epoch run stays in the record under `earlier` and in a table row of its own budget. A resume at
    the smaller budget leaves it alone; an evaluation-only export cannot be trained on."""
    from bench import runner, suites, tables, tasks
    from bench.training_loop import ResumeMismatch

    class SmallEval(tasks.ConvTask):
        def __init__(self, job, seed, **kw):
            super().__init__(job, seed, **{**kw, "valid_limit": 48, "test_limit": 48})

    monkeypatch.setattr(tasks, "ConvTask", SmallEval)
    suite = suites.Suite(name="conv", description="conv baseline", expected="seconds",
                         jobs=(suites.BaselineJob(model="conv", dataset="cluttered100", epochs=1, train_limit=96),))
    monkeypatch.setitem(suites.SUITES, "conv", suite)
    runs = tmp_path / "runs"

    def run(**kw):
        return runner.run(runner.RunOptions(suite="conv", threads=1, progress=False, out=str(runs / "r.json"),
                                            checkpoint_dir=str(tmp_path / "ck"), **kw), log=lambda m: None)[0]

    unit = "baseline-conv-cluttered100-s0"
    first = run()
    assert first["jobs"][unit]["budget"] == {"epochs": 1, "time_budget_min": None}
    with pytest.raises(runner.ResumeError, match="is complete"):
        run(resume=True)
    extended = run(resume=True, epochs=2)
    entry = extended["jobs"][unit]
    assert entry["epochs"] == 2 and entry["steps"] == 2 * first["jobs"][unit]["steps"] and entry["resumed"]
    assert entry["budget"]["epochs"] == 2 and entry["earlier"][0]["info"]["budget"]["epochs"] == 1
    rows = [line for line in tables.markdown(runs).splitlines() if line.startswith("| 2-layer conv net")]
    assert len(rows) == 2 and any("budget 1 epochs" in r for r in rows) and any("budget 2 epochs" in r for r in rows)

    ckpt = tmp_path / "ck" / "r" / f"{unit}.pt"
    from bench import checkpoints

    checkpoints.export_reference(ckpt, ckpt)
    with pytest.raises(ResumeMismatch, match="an evaluation-only export"):
        run(resume=True, epochs=3)


def test_the_pixel_baseline_is_tested_on_the_harness_test_clutter_whatever_its_seed(monkeypatch):
    """Every model is tested on the clutter of data seed 0 (bench/tasks.py); the pixel baseline's unit
    seed chooses its training set only."""
    from datasets import torch_data

    seen, real = [], torch_data.iterate_batches

    def spy(name, split, batch, seed=0, **kw):
        seen.append((split, seed))
        return real(name, split, batch, seed=seed, **kw)

    monkeypatch.setattr(torch_data, "iterate_batches", spy)
    res = run_baseline("sklearn", "translated60", seed=2, train_limit=60, test_limit=40)
    assert seen == [("train", 2), ("test", 0)] and res["data_seed"] == 0
    run_baseline("sklearn", "translated60", seed=2, train_limit=60, test_limit=40, data_seed=3)
    assert seen[-1] == ("test", 3)
