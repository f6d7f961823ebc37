"""A rate of its own for a model's location policy (Optim.policy_lr_scale; bench/training_loop.py adam)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench.training_loop import LoopConfig, TrainingError, train
from test_bench_loop import ToyTask, params, stopped_at

ONE_STEP = LoopConfig(epochs=1, max_batches=1, lr=1e-3, clip_norm=1e9, progress=False)


class PolicyToy(ToyTask):
    """ToyTask whose output layer stands for a location policy."""

    def build(self):
        model = super().build()
        model.policy_parameters = lambda: list(model[3].parameters())
        return model


def _update(cfg, tmp_path, name):
    before = PolicyToy().build()
    after = train(PolicyToy(), cfg, tmp_path / name, log=lambda m: None).model
    return [(a.detach() - b.detach()) for a, b in zip(after.parameters(), before.parameters())]


def test_the_policy_takes_its_multiple_of_the_rate(tmp_path):
    """Adam's first step moves every weight by about lr (its update is lr g / (|g| + eps)): with
    policy_lr_scale 4 the policy's weights move 4 times as far, the others exactly as with 1."""
    same = _update(ONE_STEP, tmp_path, "one.pt")
    scaled = _update(replace(ONE_STEP, policy_lr_scale=4.0), tmp_path, "four.pt")
    for d_one, d_four in zip(same[:2], scaled[:2]):  # the hidden layer
        assert torch.equal(d_one, d_four)
    for d_one, d_four in zip(same[2:], scaled[2:]):  # the "policy"
        assert d_one.abs().max() == pytest.approx(1e-3, rel=1e-3)
        assert torch.allclose(d_four, 4 * d_one, rtol=1e-4, atol=1e-9)


def test_a_run_with_a_policy_rate_resumes_exactly(tmp_path):
    cfg = LoopConfig(epochs=3, lr=0.05, progress=False, policy_lr_scale=3.0)
    whole = train(PolicyToy(), cfg, tmp_path / "whole.pt", log=lambda m: None)

    path = stopped_at(8, PolicyToy(), cfg, tmp_path / "run.pt")
    again = train(PolicyToy(), cfg, path, resume=True, log=lambda m: None)
    assert torch.equal(params(again.model), params(whole.model))


def test_a_model_without_a_policy_refuses_a_policy_rate(tmp_path):
    with pytest.raises(TrainingError, match="has no location policy"):
        train(ToyTask(), replace(ONE_STEP, policy_lr_scale=2.0), tmp_path / "x.pt", log=lambda m: None)


def test_ram_s_policy_is_its_location_network():
    from models.ram import RamConfig, RecurrentAttentionModel

    model = RecurrentAttentionModel(RamConfig(height=28, width=28, glimpses=2, patch=4, scales=2, hidden=16))
    assert [id(p) for p in model.policy_parameters()] == [id(p) for p in model.locate.parameters()]


def test_policy_lr_scale_is_a_setting_of_the_optimiser():
    from bench import suites
    from bench.optim import Optim

    job = suites.with_deviations(suites.get("table1"), {"policy_lr_scale": 3.0}).jobs[4]
    assert job.kind == "ram" and job.optim.policy_lr_scale == 3.0
    with pytest.raises(ValueError, match="policy_lr_scale must be > 0"):
        Optim(policy_lr_scale=0.0)
