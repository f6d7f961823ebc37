"""Training guards: device choice, NaN stop naming step and value, clipping, seeded determinism."""

from __future__ import annotations

import math

import pytest
import torch

from models import flops
from models.training import (DeviceError, NonFiniteLossError, TrainGuard, clip_and_step, pick_device,
                             seed_everything)


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


def test_nan_loss_names_step_and_value_and_leaves_weights():
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = TrainGuard(model, opt, max_norm=1.0)
    x = torch.randn(4, 3)
    guard.step(model(x).square().mean())
    guard.step(model(x).square().mean())
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3") as e:
        guard.step(model(x).sum() * float("nan"))
    assert e.value.step == 3 and math.isnan(e.value.value)
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at step 4"):
        guard.step(model(x).sum() + float("inf"))
    for a, b in zip(before, model.parameters()):
        assert torch.equal(a, b)


def test_nonfinite_gradient_is_caught():
    w = torch.nn.Parameter(torch.tensor([0.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    loss = torch.sqrt(w).sum()  # finite value 0, infinite gradient at 0
    with pytest.raises(NonFiniteLossError, match="gradient norm became inf at step 7"):
        clip_and_step([w], opt, loss, max_norm=1.0, step=7)
    assert w.item() == 0.0


def test_clipping_returns_prior_norm_and_clips():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.SGD([w], lr=1.0)
    loss = (w * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum()  # grad norm 5
    norm = clip_and_step([w], opt, loss, max_norm=1.0)
    assert norm == pytest.approx(5.0)
    assert torch.allclose(w.detach(), -torch.tensor([0.6, 0.8, 0.0, 0.0]))
    w2 = torch.nn.Parameter(torch.zeros(4))
    opt2 = torch.optim.SGD([w2], lr=1.0)
    clip_and_step([w2], opt2, (w2 * torch.tensor([3.0, 4.0, 0.0, 0.0])).sum(), max_norm=None)
    assert torch.allclose(w2.detach(), -torch.tensor([3.0, 4.0, 0.0, 0.0]))


def _run(seed: int) -> list[torch.Tensor]:
    seed_everything(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    guard = TrainGuard(model, opt, max_norm=1.0)
    for _ in range(5):
        guard.step(model(torch.randn(10, 8)).logsumexp(1).mean())
    return [p.detach().clone() for p in model.parameters()]


def test_same_seed_same_numbers():
    a, b, c = _run(3), _run(3), _run(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


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
