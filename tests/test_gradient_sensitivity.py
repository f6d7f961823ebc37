"""bench.gradient_sensitivity: the gradient of a DRAW checkpoint against float64, bf16 products and moved weights."""

import json

import pytest
import torch

from bench import checkpoints, gradient_sensitivity as gs
from bench.optim import Optim
from bench.suites import DrawJob
from bench.tasks import DrawTask
from models.classifier import ClassifierConfig, GlimpseClassifier
from models.draw import DRAW, DRAWConfig
from models.fast import products

CONFIG = DRAWConfig(steps=4, read_n=2, write_n=3, enc_hidden=16, dec_hidden=16, z_size=4)


def tiny_task():
    return DrawTask(DrawJob(dataset="binarized", model=CONFIG, optim=Optim(batch_size=8), train_limit=40), 0)


def draw_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = DRAW(CONFIG)
    path = tmp_path / "draw.pt"
    task = {"task": "draw", "dataset": "binarized", "seed": 0, "model": model.config.to_dict()}
    checkpoints.save(path, {"format": "glimpse-train-1", "loop": {"clip_norm": 10.0}, "task": task,
                            "model": model.state_dict(), "epoch": 2})
    return path


def classifier_checkpoint(tmp_path):
    model = GlimpseClassifier(ClassifierConfig(height=60, width=60, glimpses=3, read_n=4, hidden=16))
    path = tmp_path / "classifier.pt"
    checkpoints.save(path, {"format": "glimpse-train-1", "model": model.state_dict(), "epoch": 1,
                            "task": {"task": "classifier", "dataset": "cluttered60", "seed": 0,
                                     "model": model.config.to_dict()}})
    return path


def test_moved_weights_are_seeded_relative_moves():
    torch.manual_seed(0)
    model = DRAW(CONFIG)
    a, b, c = gs.moved(model, 1e-3, 5), gs.moved(model, 1e-3, 5), gs.moved(model, 1e-3, 6)
    rel = []
    with torch.no_grad():
        for (p, pa, pb, pc) in zip(model.parameters(), a.parameters(), b.parameters(), c.parameters()):
            assert torch.equal(pa, pb) and not torch.equal(pa, pc)
            rel.append((pa[p != 0] / p[p != 0] - 1).flatten())
    rel = torch.cat(rel)
    assert rel.numel() > 1000 and 0.9e-3 < float(rel.std()) < 1.1e-3 and abs(float(rel.mean())) < 1e-4
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), gs.moved(model, 0.0, 1).parameters()))


def test_gradient_is_the_autograd_gradient_of_the_batch_loss(mnist_data, one_thread):
    task = tiny_task()
    torch.manual_seed(0)
    model = DRAW(CONFIG)
    batch = next(iter(task.batches(0)))
    loss, g, norms = gs.gradient(task, model, batch)
    model.zero_grad()
    ref = task.loss(model, batch)
    ref.backward()
    flat = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
    assert loss == pytest.approx(float(ref.detach())) and torch.allclose(g, flat)
    assert sum(n * n for n in norms) == pytest.approx(float(g.norm()) ** 2, rel=1e-6)


def test_measure_float64_and_tiny_moves_agree_with_float32_and_shares_sum_to_one(mnist_data, one_thread):
    task = tiny_task()
    torch.manual_seed(0)
    r_model = DRAW(CONFIG)
    r = gs.measure(task, r_model, epoch=1, batches=2, scales=(1e-7, 0.5), bf16=False)
    assert [row["batch"] for row in r["batches"]] == [0, 1] and "bf16" not in r["summary"]
    assert r["summary"]["cos_float64"]["min"] > 0.9999
    assert r["summary"]["moved"]["1e-07"]["cos"]["min"] > 0.999
    assert r["summary"]["moved"]["0.5"]["cos"]["median"] < r["summary"]["moved"]["1e-07"]["cos"]["median"]
    assert sum(r["grad_share"].values()) == pytest.approx(1.0, abs=0.05)  # medians of shares, per batch exact
    assert all(-1 <= row["cos_next_batch"] <= 1 for row in r["batches"])
    model = DRAW(CONFIG)
    model.load_state_dict(r_model.state_dict())
    for row, batch in zip(r["batches"], task.batches(1)):  # each row's loss is its own batch's
        assert row["loss"] == pytest.approx(gs.gradient(task, model, batch)[0])


@pytest.mark.skipif(not products.bf16_supported(), reason="no native bf16 products on this CPU")
def test_bf16_products_gradient_is_close_on_an_untrained_model(mnist_data, one_thread):
    torch.manual_seed(0)
    r = gs.measure(tiny_task(), DRAW(CONFIG), epoch=0, batches=2, scales=(1e-3,), bf16=True)
    assert r["bf16_measured"] and r["summary"]["bf16"]["cos"]["min"] > 0.95


def test_too_many_batches_is_refused_with_the_number_there_is(mnist_data):
    torch.manual_seed(0)
    with pytest.raises(gs.UsageError, match="only 5 batches; ask for at most 4"):
        gs.measure(tiny_task(), DRAW(CONFIG), epoch=0, batches=5, scales=(1e-3,), bf16=False)


def test_cli_writes_json_and_refuses_other_models(tmp_path, mnist_data, capsys, monkeypatch):
    path = draw_checkpoint(tmp_path)
    real = gs.measure  # the checkpoint's own task would read batches of the whole binarized training set
    monkeypatch.setattr(gs, "measure", lambda task, model, epoch, batches, scales, seed: real(
        tiny_task(), model, epoch, batches, scales, bf16=False, seed=seed))
    out = tmp_path / "sens.json"
    assert gs.main([str(path), "--batches", "2", "--scales", "1e-3", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r["epoch"], r["clip_norm"], r["dataset"], len(r["batches"])) == (2, 10.0, "binarized", 2)
    assert r["machine"]["cpu_model"] and r["commit"]
    assert "against clipping norm 10.0" in capsys.readouterr().out
    assert gs.main([str(classifier_checkpoint(tmp_path)), "--batches", "2"]) == 2
    assert "a classifier checkpoint; this study is of DRAW" in capsys.readouterr().err
    assert gs.main([str(path), "--batches", "0"]) == 2
    assert "--batches must be at least 1" in capsys.readouterr().err
