"""The training loop: exact resume after a crash, model selection, budgets, divergence guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bench import checkpoints
from bench.training_loop import LoopConfig, TrainingError, train
from tests.fixtures.bench_records import without_timings


class ToyTask:
    """A dropout MLP on synthetic data; dropout consumes the torch RNG, so resume must restore it."""

    select = "error"

    def __init__(self, seed=0, n=96, batch=16, nan_after=None, width=16):
        self.seed, self.n, self.batch, self.nan_after, self.width = seed, n, batch, nan_after, width
        self.calls = 0
        g = np.random.default_rng(1234)
        self.w_true = g.normal(size=(8, 3))
        self.xv = g.normal(size=(64, 8)).astype(np.float32)
        self.yv = (self.xv @ self.w_true).argmax(1)

    def describe(self):
        return {"task": "toy", "seed": self.seed, "width": self.width}

    def build(self):
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(8, self.width), nn.Tanh(), nn.Dropout(0.2), nn.Linear(self.width, 3))

    def batches(self, epoch):
        g = np.random.default_rng([self.seed, epoch])  # fresh data per epoch, pure in (seed, epoch)
        x = g.normal(size=(self.n, 8)).astype(np.float32)
        y = (x @ self.w_true).argmax(1)
        for i in range(0, self.n, self.batch):
            yield torch.from_numpy(x[i:i + self.batch]), torch.from_numpy(y[i:i + self.batch])

    def batch_images(self, batch):
        return batch[0].shape[0]

    def loss(self, model, batch):
        self.calls += 1
        loss = nn.functional.cross_entropy(model(batch[0]), batch[1])
        if self.nan_after is not None and self.calls > self.nan_after:
            return loss * float("nan")
        return loss

    @torch.no_grad()
    def evaluate(self, model, split):
        model.eval()
        pred = model(torch.from_numpy(self.xv)).argmax(1).numpy()
        return {"error": float((pred != self.yv).mean())}


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


CFG = LoopConfig(epochs=3, lr=0.05, progress=False)


def stopped_at(step: int, task, cfg: LoopConfig, path):
    """Train ``task`` under ``cfg`` with its checkpoint at ``path`` and stop it (as Ctrl-C would) after
    optimiser step ``step``; returns ``path``."""
    def stop(done):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(task, cfg, path, on_step=stop, log=lambda m: None)
    return path


def test_resume_after_simulated_crash_continues_exactly(tmp_path):
    ref = train(ToyTask(), CFG, tmp_path / "ref.pt", log=lambda m: None)
    assert ref.step == 18 and ref.epochs_done == 3 and ref.images_seen == 288

    ck = stopped_at(8, ToyTask(), CFG, tmp_path / "run.pt")  # mid-epoch 2 (6 batches per epoch)
    saved = checkpoints.load(ck)
    assert (saved["epoch"], saved["batch_in_epoch"], saved["step"], saved["finished"]) == (1, 2, 8, False)
    assert saved["sitting_start"] == {"images_seen": 0, "train_time_s": 0.0, "train_cost": {}}

    torch.manual_seed(999)  # the resumed process starts with a different RNG state
    res = train(ToyTask(), CFG, ck, resume=True, log=lambda m: None)
    assert res.resumed and res.step == ref.step and res.images_seen == ref.images_seen
    assert torch.equal(params(res.model), params(ref.model))
    assert without_timings(res.curve) == without_timings(ref.curve)
    resumed = checkpoints.load(ck)
    assert resumed["finished"]
    # the second sitting began where the first stopped (bench status times what is left at its rate)
    assert resumed["sitting_start"] == {"images_seen": 8 * 16, "train_time_s": saved["train_time_s"],
                                        "train_cost": saved["train_cost"]}
    assert resumed["train_cost"]["cpu"] > saved["train_cost"]["cpu"]


def test_the_cost_on_a_cpu_is_cpu_time_not_time_spent_waiting(tmp_path):
    """A step that waits 50 ms for the CPU (as when other work shares the core) costs its wall time,
    not core time; a checkpoint made before the cost was kept resumes with its time unattributed."""
    import time

    class Waiting(ToyTask):
        def loss(self, model, batch):
            time.sleep(0.05)
            return super().loss(model, batch)

    cfg = LoopConfig(epochs=1, lr=0.05, progress=False)
    res = train(Waiting(), cfg, tmp_path / "w.pt", log=lambda m: None)
    assert res.train_time_s >= 6 * 0.05 and list(res.train_cost) == ["cpu"]
    assert res.train_cost["cpu"] < res.train_time_s / 2

    old = checkpoints.load(tmp_path / "w.pt")
    del old["train_cost"], old["sitting_start"]["train_cost"]
    checkpoints.save(tmp_path / "w.pt", old)
    more = train(ToyTask(), LoopConfig(epochs=2, lr=0.05, progress=False), tmp_path / "w.pt", resume=True,
                 log=lambda m: None)
    assert more.train_cost["unattributed"] == pytest.approx(old["train_time_s"]) and more.train_cost["cpu"] > 0


def test_crash_during_validation_resumes_exactly(tmp_path):
    ref = train(ToyTask(), CFG, tmp_path / "ref.pt", log=lambda m: None)

    class Flaky(ToyTask):
        def evaluate(self, model, split):
            if len(self._seen) == 1:
                self._seen.append(1)
                raise RuntimeError("evaluation crashed")
            self._seen.append(0)
            return super().evaluate(model, split)

    t = Flaky()
    t._seen = []
    ck = tmp_path / "run.pt"
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        train(t, CFG, ck, log=lambda m: None)
    res = train(ToyTask(), CFG, ck, resume=True, log=lambda m: None)
    assert torch.equal(params(res.model), params(ref.model))
    assert without_timings(res.curve) == without_timings(ref.curve)


def test_best_valid_state_is_returned(tmp_path):
    class Scripted(ToyTask):
        errors = iter([0.5, 0.2, 0.4])

        def evaluate(self, model, split):
            return {"error": next(self.errors)}

    snapshots = []
    task = Scripted()
    orig = task.evaluate

    def evaluate(model, split):
        snapshots.append(params(model).clone())
        return orig(model, split)

    task.evaluate = evaluate
    res = train(task, CFG, None, log=lambda m: None)
    assert res.best["epoch"] == 2 and res.best["value"] == 0.2
    assert torch.equal(params(res.model), snapshots[1])
    assert not torch.equal(snapshots[1], snapshots[2])
    assert [e["valid_error"] for e in res.curve] == [0.5, 0.2, 0.4]


def test_learning_curve_fields_and_max_batches():
    res = train(ToyTask(), LoopConfig(epochs=2, max_batches=1, progress=False), None, log=lambda m: None)
    assert res.step == 2 and res.images_seen == 32
    e = res.curve[0]
    assert set(e) >= {"epoch", "step", "images_seen", "train_loss", "valid_error", "train_time_s", "partial_epoch"}
    assert e["partial_epoch"] is True and e["train_loss"] > 0


def test_time_budget_stops_training():
    res = train(ToyTask(n=4000), LoopConfig(epochs=1000, time_budget_s=0.05, progress=False), None,
                log=lambda m: None)
    assert res.stopped_by == "time_budget" and res.epochs_done < 1000
    assert res.train_time_s >= 0.05


def test_divergence_raises_clear_error():
    with pytest.raises(TrainingError, match="diverged; lower the learning rate"):
        train(ToyTask(nan_after=2), LoopConfig(epochs=5, max_bad_steps=3, progress=False), None, log=lambda m: None)


def test_resume_with_other_config_is_refused(tmp_path):
    ck = tmp_path / "c.pt"
    train(ToyTask(), LoopConfig(epochs=1, progress=False), ck, log=lambda m: None)
    # the message names every differing field, checkpoint's value first
    with pytest.raises(TrainingError, match=r"another configuration \(checkpoint vs now: "
                                            r"\{'seed': \(0, 1\), 'width': \(16, 32\)\}\)"):
        train(ToyTask(seed=1, width=32), LoopConfig(epochs=1, progress=False), ck, resume=True, log=lambda m: None)


def test_damaged_checkpoint_is_reported(tmp_path):
    ck = tmp_path / "bad.pt"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.CheckpointError, match="unreadable checkpoint"):
        train(ToyTask(), CFG, ck, resume=True, log=lambda m: None)


def test_adam_takes_the_configured_betas(tmp_path):
    """The default betas are torch's own (the same weights as a plain Adam); others reach the optimiser."""
    from dataclasses import replace

    plain = train(ToyTask(), CFG, tmp_path / "a.pt", log=lambda m: None)
    task = ToyTask()
    model = task.build()
    opt = torch.optim.Adam(model.parameters(), lr=CFG.lr)
    for epoch in range(CFG.epochs):
        model.train()
        for batch in task.batches(epoch):
            loss = task.loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), CFG.clip_norm)
            opt.step()
    final = checkpoints.load(tmp_path / "a.pt")["model"]  # the last step's weights (plain.model is the best)
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())
    other = train(ToyTask(), replace(CFG, betas=(0.5, 0.9)), tmp_path / "b.pt", log=lambda m: None)
    assert checkpoints.load(tmp_path / "b.pt")["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.9)
    assert not torch.equal(params(other.model), params(plain.model))
