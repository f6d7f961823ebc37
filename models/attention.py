"""DRAW's selective attention: the Gaussian filterbank read and write (Gregor et al. 2015, sec. 3).

The one kernel that both the glimpse classifier and DRAW use. Pixel coordinates are
1-based as in the paper, so a zero offset (g~ = 0) centres the grid on the image.

    gX = (A + 1) / 2 * (g~X + 1)        gY = (B + 1) / 2 * (g~Y + 1)
    delta = (max(A, B) - 1) / (N - 1) * exp(log delta~)
    mu^i = g + (i - N/2 - 0.5) * delta                    i = 1..N
    F[i, a] = exp(-(a - mu^i)^2 / (2 sigma^2)) / Z        a = 1..A, rows sum to 1
    read(x)  = gamma * Fy x Fx^T           write(w) = 1/gamma * Fy^T w Fx

Shapes: images (B, C, H, W); filterbanks Fx (B, N, W) and Fy (B, N, H); patches (B, C, N, N).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def filterbank(g: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Gaussian filterbank F of shape (B, n, size) for grid centre ``g``, stride ``delta``, variance ``sigma2``.

    ``g``, ``delta``, ``sigma2`` have shape (B,) and are in pixel units (1-based). Each row is
    normalised to sum 1; a row whose mass underflows to zero becomes all zeros, never NaN.
    """
    dtype, device = g.dtype, g.device
    offsets = torch.arange(1, n + 1, dtype=dtype, device=device) - (n / 2 + 0.5)  # (n,)
    pixels = torch.arange(1, size + 1, dtype=dtype, device=device)  # (size,)
    mu = g[:, None] + offsets[None, :] * delta[:, None]  # (B, n)
    diff = pixels[None, None, :] - mu[:, :, None]  # (B, n, size)
    e = torch.exp(diff.square() / (-2.0 * sigma2)[:, None, None])
    z = e.sum(dim=-1, keepdim=True)
    return e / torch.where(z > 0, z, torch.ones_like(z))


def read(x: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Glimpse (B, C, N, N) = gamma * Fy x Fx^T for every channel of ``x`` (B, C, H, W)."""
    b, c, h, w = x.shape
    n = fx.shape[1]
    # (B, C*H, W) @ (B, W, N) -> (B, C*H, N): one batched matmul over all channels.
    xf = torch.bmm(x.reshape(b, c * h, w), fx.transpose(1, 2)).reshape(b, c, h, n)
    return torch.matmul(fy.unsqueeze(1), xf) * gamma.view(b, 1, 1, 1)


def write(patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Canvas update (B, C, H, W) = (1 / gamma) * Fy^T w Fx for a patch ``w`` (B, C, N, N)."""
    b, c, n, _ = patch.shape
    w = fx.shape[2]
    # (B, C*N, N) @ (B, N, W) -> (B, C*N, W), then Fy^T (B, H, N) over the row index.
    pf = torch.bmm(patch.reshape(b, c * n, n), fx).reshape(b, c, n, w)
    return torch.matmul(fy.transpose(1, 2).unsqueeze(1), pf) / gamma.view(b, 1, 1, 1)


class Window(NamedTuple):
    """An attention window in pixel units, with its filterbanks; callers log and draw it."""

    gx: torch.Tensor  # (B,) grid centre, 1-based column
    gy: torch.Tensor  # (B,) grid centre, 1-based row
    sigma2: torch.Tensor  # (B,) filter variance
    delta: torch.Tensor  # (B,) grid stride
    gamma: torch.Tensor  # (B,) intensity
    fx: torch.Tensor  # (B, N, W)
    fy: torch.Tensor  # (B, N, H)


def window_from_params(params: torch.Tensor, height: int, width: int, n: int) -> Window:
    """Map the five raw numbers (g~X, g~Y, log sigma2, log delta~, log gamma) to a Window."""
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = params.unbind(dim=-1)
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(width, height) - 1) / max(n - 1, 1) * torch.exp(log_delta_t)
    sigma2 = torch.exp(log_sigma2)
    gamma = torch.exp(log_gamma)
    fx = filterbank(gx, delta, sigma2, n, width)
    fy = filterbank(gy, delta, sigma2, n, height)
    return Window(gx, gy, sigma2, delta, gamma, fx, fy)


class WindowHead(nn.Module):
    """Linear map from a hidden state to the five window numbers, then the paper's transforms."""

    def __init__(self, hidden_size: int, height: int, width: int, n: int):
        super().__init__()
        self.height, self.width, self.n = height, width, n
        self.linear = nn.Linear(hidden_size, 5)

    def forward(self, h: torch.Tensor) -> Window:
        return window_from_params(self.linear(h), self.height, self.width, self.n)


class AttentionRead(nn.Module):
    """Read an n x n glimpse from each of several images (B, C, H, W) at one window from ``h``.

    Returns (features (B, k*C*n*n), window).
    """

    def __init__(self, hidden_size: int, height: int, width: int, n: int, channels: int = 1, num_images: int = 1):
        super().__init__()
        self.head = WindowHead(hidden_size, height, width, n)
        self.out_features = num_images * channels * n * n

    def forward(self, images: list[torch.Tensor], h: torch.Tensor) -> tuple[torch.Tensor, Window]:
        win = self.head(h)
        glimpses = [read(x, win.fx, win.fy, win.gamma).flatten(1) for x in images]
        return torch.cat(glimpses, dim=1), win


class FullRead(nn.Module):
    """No attention: the features are the whole images, flattened and concatenated."""

    def __init__(self, hidden_size: int, height: int, width: int, n: int = 0, channels: int = 1, num_images: int = 1):
        super().__init__()
        self.out_features = num_images * channels * height * width

    def forward(self, images: list[torch.Tensor], h: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.cat([x.flatten(1) for x in images], dim=1), None


class AttentionWrite(nn.Module):
    """Write an n x n patch, emitted from ``h``, through a window also emitted from ``h``."""

    def __init__(self, hidden_size: int, height: int, width: int, n: int, channels: int = 1):
        super().__init__()
        self.channels, self.n = channels, n
        self.head = WindowHead(hidden_size, height, width, n)
        self.patch = nn.Linear(hidden_size, channels * n * n)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, Window]:
        win = self.head(h)
        w = self.patch(h).view(-1, self.channels, self.n, self.n)
        return write(w, win.fx, win.fy, win.gamma), win


class FullWrite(nn.Module):
    """No attention: a linear map from ``h`` to the whole canvas."""

    def __init__(self, hidden_size: int, height: int, width: int, n: int = 0, channels: int = 1):
        super().__init__()
        self.shape = (channels, height, width)
        self.linear = nn.Linear(hidden_size, channels * height * width)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.linear(h).view(-1, *self.shape), None


def make_read(attention: bool, hidden_size: int, height: int, width: int, n: int,
              channels: int = 1, num_images: int = 1) -> nn.Module:
    cls = AttentionRead if attention else FullRead
    return cls(hidden_size, height, width, n, channels, num_images)


def make_write(attention: bool, hidden_size: int, height: int, width: int, n: int, channels: int = 1) -> nn.Module:
    cls = AttentionWrite if attention else FullWrite
    return cls(hidden_size, height, width, n, channels)
