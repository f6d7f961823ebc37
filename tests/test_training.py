"""Shared machinery: device choice, seeded determinism, flat configs, FLOP counts. The training loop's
own guards (clipping, the stop on non-finite losses) are tested in tests/test_bench_loop.py."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
import torch

from models import flops
from models.common import ConfigError, ConfigMixin
from models.training import DeviceError, pick_device, seed_everything


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    auto = pick_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    else:
        assert auto.type in ("mps", "cpu")
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(DeviceError, match="unknown device 'tpu7'"):
        pick_device("tpu7")


def _run(seed: int) -> list[torch.Tensor]:
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        model(torch.randn(10, 8)).logsumexp(1).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_numbers():
    a, b, c = _run(3), _run(3), _run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


@dataclass
class TinyConfig(ConfigMixin):
    width: int = 4
    hidden: int = 3
    lr: float = 1e-3
    attention: bool = True


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


def test_flop_helpers_hand_counts():
    assert flops.linear(3, 2) == 2 * 3 * 2 + 2
    assert flops.linear(3, 2, bias=False) == 12
    # LSTM, input 2, hidden 1: matmul 2*(2+1)*4 = 24, bias 4, activations 5, update 4.
    assert flops.lstm_cell(2, 1) == 37
    # read of a 1-channel 3x4 image with n=2: 2*3*4*2 + 2*2*3*2 + 4
    assert flops.read(1, 3, 4, 2) == 48 + 24 + 4
    assert flops.read(3, 3, 4, 2) == 3 * 76
    # write: 2*2*2*4 + 2*3*2*4 + 12
    assert flops.write(1, 3, 4, 2) == 32 + 48 + 12
    assert flops.filterbank(2, 5) == 4 + 60
    assert flops.conv2d(1, 2, 3, 4, 4) == (2 * 9 + 1) * 2 * 16
    assert flops.train_step(10) == 30


def test_matmul_peak_is_plausible():
    gflops = flops.measure_matmul_peak(seconds=0.2, size=256)
    assert 0.1 < gflops < 1e6


def test_matmul_peak_is_the_best_repeats_flops_per_second():
    """With a clock that says each repeat took 1 ms, then 2 ms: 2 n^3 FLOP in 1 ms, in GFLOP/s."""
    ticks = itertools.cycle([0.0, 0.002, 1.0, 1.001])  # as many repeats as fit in 0.05 s
    gflops = flops.measure_matmul_peak(seconds=0.05, size=64, clock=lambda: next(ticks))
    assert gflops == pytest.approx(2 * 64**3 / 1e-3 / 1e9)
