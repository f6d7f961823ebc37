"""Checkpoints: exact round trip, clear errors on mismatch, atomic writes, exact resume."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.common import ConfigError, ConfigMixin


@dataclass
class TinyConfig(ConfigMixin):
    width: int = 4
    hidden: int = 3
    lr: float = 1e-3
    attention: bool = True


def make(cfg: TinyConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(cfg.width, cfg.hidden), torch.nn.Tanh(), torch.nn.Linear(cfg.hidden, 2))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return model, opt


def train(model, opt, steps: int):
    for _ in range(steps):
        x = torch.randn(5, model[0].in_features)
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_config_round_trip_and_errors():
    cfg = TinyConfig(width=7, lr=0.5)
    assert TinyConfig.from_dict(cfg.to_dict()) == cfg
    assert TinyConfig.from_dict({"lr": 1}).lr == 1.0  # int accepted as float
    with pytest.raises(ConfigError, match="widht"):
        TinyConfig.from_dict({"widht": 3})
    with pytest.raises(ConfigError, match="hidden must be an int"):
        TinyConfig.from_dict({"hidden": 2.5})
    with pytest.raises(ConfigError, match="attention must be a bool"):
        TinyConfig.from_dict({"attention": 1})
    assert cfg.diff(TinyConfig()) == {"width": (7, 4), "lr": (0.5, 1e-3)}


def test_round_trip_identical_outputs_and_optimizer_state(tmp_path):
    cfg = TinyConfig()
    model, opt = make(cfg, seed=1)
    train(model, opt, 3)
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, step=3, config=cfg, data_variant="cluttered100",
                           extra={"note": "x", "epoch": 1})
    model2, opt2 = make(cfg, seed=2)
    ck = load_checkpoint(path, model2, opt2, expected_config=cfg, expected_data_variant="cluttered100")
    assert ck.step == 3 and ck.extra == {"note": "x", "epoch": 1} and ck.config == cfg.to_dict()
    x = torch.randn(6, cfg.width)
    assert torch.equal(model(x), model2(x))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][k][name], s2["state"][k][name])


def test_mismatched_config_names_fields(tmp_path):
    cfg = TinyConfig()
    model, opt = make(cfg)
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, 0, cfg, "mnist")
    with pytest.raises(CheckpointError, match=r"hidden: stored 3, given 5.*width: stored 4, given 6"):
        load_checkpoint(path, expected_config=TinyConfig(width=6, hidden=5))
    with pytest.raises(CheckpointError, match="data variant: stored 'mnist', given 'cluttered100'"):
        load_checkpoint(path, expected_data_variant="cluttered100")
    with pytest.raises(CheckpointError, match="size: stored 60, given 100"):
        p2 = save_checkpoint(tmp_path / "ck2.pt", model, None, 0, cfg, {"name": "cluttered", "size": 60})
        load_checkpoint(p2, expected_data_variant={"name": "cluttered", "size": 100})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_checkpoint(path, make(TinyConfig(hidden=5))[0])
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_atomic_write_leaves_old_file_on_failure(tmp_path, monkeypatch):
    cfg = TinyConfig()
    model, opt = make(cfg)
    path = save_checkpoint(tmp_path / "ck.pt", model, opt, 1, cfg, "mnist")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, opt, 2, cfg, "mnist")
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pt"]  # no temp file left behind


def test_resume_is_exact(tmp_path):
    """Train 4 steps straight vs 2 steps, save, perturb every RNG, load with restore_rng, 2 more."""
    cfg = TinyConfig()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model, opt = make(cfg)
    train(model, opt, 4)
    straight = [p.detach().clone() for p in model.parameters()]
    draws = (random.random(), float(np.random.rand()))

    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    model, opt = make(cfg)
    train(model, opt, 2)
    save_checkpoint(tmp_path / "ck.pt", model, opt, 2, cfg, "mnist")
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    model2, opt2 = make(cfg, seed=99)
    load_checkpoint(tmp_path / "ck.pt", model2, opt2, expected_config=cfg, restore_rng=True)
    train(model2, opt2, 2)
    for a, b in zip(straight, model2.parameters()):
        assert torch.equal(a, b)
    assert (random.random(), float(np.random.rand())) == draws
