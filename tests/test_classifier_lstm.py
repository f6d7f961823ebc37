"""The fused LSTM step: float64 gradcheck of the hand-derived backward, parity with nn.LSTMCell."""

from __future__ import annotations

import pytest
import torch

from models.lstm import lstm_pointwise


def test_gradcheck_float64():
    torch.manual_seed(0)
    gates = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lstm_pointwise, (gates, c))
    # only h used downstream (dc is None), only c used (dh is None)
    assert torch.autograd.gradcheck(lambda a, b: lstm_pointwise(a, b)[0], (gates, c))
    assert torch.autograd.gradcheck(lambda a, b: lstm_pointwise(a, b)[1], (gates, c))


def test_matches_lstm_cell_over_steps():
    torch.manual_seed(1)
    cell = torch.nn.LSTMCell(5, 4).double()
    xs = torch.randn(3, 2, 5, dtype=torch.float64)
    h = c = torch.zeros(2, 4, dtype=torch.float64)
    h2, c2 = h, c
    outs, outs2 = [], []
    for x in xs:
        h, c = cell(x, (h, c))
        gates = x @ cell.weight_ih.t() + cell.bias_ih + h2 @ cell.weight_hh.t() + cell.bias_hh
        h2, c2 = lstm_pointwise(gates, c2)
        outs.append(h), outs2.append(h2)
    torch.testing.assert_close(torch.stack(outs2), torch.stack(outs), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c2, c, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(torch.stack(outs).square().sum() + c.sum(), list(cell.parameters()))
    g2 = torch.autograd.grad(torch.stack(outs2).square().sum() + c2.sum(), list(cell.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_shape_error():
    with pytest.raises(ValueError, match=r"gates must be \(B, 4k\)"):
        lstm_pointwise(torch.zeros(2, 7), torch.zeros(2, 2))
