"""Independent references for the attention kernel in `models/attention.py`.

Two versions, both written straight from DRAW's equations (Gregor et al. 2015, eq. 19-29):
- `*_loop`: explicit Python loops over every index with `math.exp`, float64. Slow; the parity
  reference for the tests and the "loop" column of the speed ratios.
- `*_batched`: the straightforward tensor version (exp of the full (B, n, size) grid, normalise
  by the row sum, two matmuls), with autograd doing the backward. The speed baseline.
Neither shares code with the kernel.
"""

from __future__ import annotations

import math

import torch


def params_to_window_loop(params: list[float], height: int, width: int, n: int) -> tuple[float, ...]:
    """(g~X, g~Y, log sigma2, log delta~, log gamma) -> (gX, gY, sigma2, delta, gamma), pixel units."""
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = (float(p) for p in params)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(width, height) - 1) / max(n - 1, 1) * math.exp(log_delta_t)
    return gx, gy, math.exp(log_sigma2), delta, math.exp(log_gamma)


def filterbank_loop(g: float, delta: float, sigma2: float, n: int, size: int) -> list[list[float]]:
    """F[i][a] for one window; 1-based i and a in the equations, 0-based list indices here."""
    rows = []
    for i in range(1, n + 1):
        mu = g + (i - n / 2 - 0.5) * delta
        row = [math.exp(-((a - mu) ** 2) / (2 * sigma2)) for a in range(1, size + 1)]
        z = sum(row)
        rows.append([v / z if z > 0 else 0.0 for v in row])
    return rows


def read_loop(x: torch.Tensor, windows: list[tuple[float, ...]], n: int) -> torch.Tensor:
    """x (B, C, H, W); one (gx, gy, sigma2, delta, gamma) per example -> (B, C, n, n) float64."""
    b_, c_, h_, w_ = x.shape
    xs = x.double().tolist()
    out = torch.zeros(b_, c_, n, n, dtype=torch.float64)
    for b, (gx, gy, sigma2, delta, gamma) in enumerate(windows):
        fx = filterbank_loop(gx, delta, sigma2, n, w_)
        fy = filterbank_loop(gy, delta, sigma2, n, h_)
        for c in range(c_):
            for j in range(n):
                for i in range(n):
                    acc = 0.0
                    for r in range(h_):
                        for q in range(w_):
                            acc += fy[j][r] * xs[b][c][r][q] * fx[i][q]
                    out[b, c, j, i] = gamma * acc
    return out


def write_loop(patch: torch.Tensor, windows: list[tuple[float, ...]], height: int, width: int) -> torch.Tensor:
    """patch (B, C, n, n) -> canvas (B, C, H, W) float64: (1/gamma) sum_ji Fy[j, r] w[j, i] Fx[i, q]."""
    b_, c_, n, _ = patch.shape
    ps = patch.double().tolist()
    out = torch.zeros(b_, c_, height, width, dtype=torch.float64)
    for b, (gx, gy, sigma2, delta, gamma) in enumerate(windows):
        fx = filterbank_loop(gx, delta, sigma2, n, width)
        fy = filterbank_loop(gy, delta, sigma2, n, height)
        for c in range(c_):
            for r in range(height):
                for q in range(width):
                    acc = 0.0
                    for j in range(n):
                        for i in range(n):
                            acc += fy[j][r] * ps[b][c][j][i] * fx[i][q]
                    out[b, c, r, q] = acc / gamma
    return out


def filterbank_batched(g: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """The straightforward tensor filterbank: exp of the whole grid, then divide by the row sum."""
    i = torch.arange(1, n + 1, dtype=g.dtype, device=g.device)
    a = torch.arange(1, size + 1, dtype=g.dtype, device=g.device)
    mu = g[:, None] + (i - n / 2 - 0.5)[None, :] * delta[:, None]
    e = torch.exp(-((a[None, None, :] - mu[:, :, None]) ** 2) / (2 * sigma2[:, None, None]))
    z = e.sum(dim=-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z))


def read_batched(x: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return gamma[:, None, None, None] * (fy[:, None] @ x @ fx.transpose(1, 2)[:, None])


def write_batched(patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    return (fy.transpose(1, 2)[:, None] @ patch @ fx[:, None]) / gamma[:, None, None, None]
