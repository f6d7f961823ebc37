"""An LSTM step with its pointwise gate algebra fused into one autograd node.

``nn.LSTMCell`` on CPU runs the gate nonlinearities as about ten separate ops, each with its own
autograd node and temporary; here the projections stay two ``addmm`` calls (input and hidden,
so callers can precompute or skip either) and the pointwise part is one node whose backward is
derived by hand (checked by float64 gradcheck in the tests):

    i, f, g, o = sigmoid(a_i), sigmoid(a_f), tanh(a_g), sigmoid(a_o)   (nn.LSTMCell's gate order)
    c = f c_prev + i g          h = o tanh(c)
    dc_tot = dc + dh o (1 - tanh(c)^2)
    da_i = dc_tot g i (1 - i)   da_f = dc_tot c_prev f (1 - f)   da_g = dc_tot i (1 - g^2)
    da_o = dh tanh(c) o (1 - o)                                   dc_prev = dc_tot f
"""

from __future__ import annotations

import torch

from models.fast import native


class _LSTMPointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gates: torch.Tensor, c_prev: torch.Tensor):
        if native.usable(gates, c_prev):
            act, c, tc, h = native.lstm_forward(gates, c_prev)
            ctx.save_for_backward(act, c_prev, tc)
            return h, c
        k = c_prev.shape[1]
        act = torch.empty_like(gates)
        torch.sigmoid(gates, out=act)
        torch.tanh(gates[:, 2 * k: 3 * k], out=act[:, 2 * k: 3 * k])
        i, f, g, o = act[:, :k], act[:, k: 2 * k], act[:, 2 * k: 3 * k], act[:, 3 * k:]
        c = torch.addcmul(i * g, f, c_prev)
        tc = torch.tanh(c)
        h = o * tc
        ctx.save_for_backward(act, c_prev, tc)
        return h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dc):
        act, c_prev, tc = ctx.saved_tensors
        if native.usable(act, c_prev, tc, *(t for t in (dh, dc) if t is not None)):
            return native.lstm_backward(dh, dc, act, c_prev, tc, ctx.needs_input_grad[1])
        k = c_prev.shape[1]
        i, f, g, o = act[:, :k], act[:, k: 2 * k], act[:, 2 * k: 3 * k], act[:, 3 * k:]
        if dh is None:
            dh = torch.zeros_like(tc)
        dc_tot = dh * o * (1 - tc * tc)
        if dc is not None:
            dc_tot = dc_tot + dc
        da = torch.empty_like(act)
        # sigmoid' = s (1 - s), tanh' = 1 - t^2, each times the gradient of its gate's output
        torch.mul(dc_tot * g, i * (1 - i), out=da[:, :k])
        torch.mul(dc_tot * c_prev, f * (1 - f), out=da[:, k: 2 * k])
        torch.mul(dc_tot * i, 1 - g * g, out=da[:, 2 * k: 3 * k])
        torch.mul(dh * tc, o * (1 - o), out=da[:, 3 * k:])
        dc_prev = dc_tot * f if ctx.needs_input_grad[1] else None
        return da, dc_prev


def lstm_pointwise(gates: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c) from the pre-activation gates (B, 4k) in (i, f, g, o) order and the cell state (B, k)."""
    if gates.dim() != 2 or c_prev.dim() != 2 or gates.shape != (c_prev.shape[0], 4 * c_prev.shape[1]):
        raise ValueError(f"lstm_pointwise: gates must be (B, 4k) for c_prev (B, k), got {tuple(gates.shape)} "
                         f"and {tuple(c_prev.shape)}")
    return _LSTMPointwise.apply(gates, c_prev)
