"""The straightforward glimpse classifier: the reference for parity and the baseline for speed.

Written the way a first port reads the paper: a per-step Python loop over ``nn.LSTMCell``, the
window parameters split one by one, the filterbanks rebuilt from fresh coordinate grids every
step, and the glimpse read channel by channel. It shares no code with the attention kernel
(that is the point of a parity reference), and it has the same parameter names as
:class:`models.classifier.GlimpseClassifier`, so one state dict loads into both.
"""

from __future__ import annotations

import torch
from torch import nn

from models.classifier import ClassifierConfig, ClassifierOutput


class _WindowHead(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, 5)


class _Read(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.head = _WindowHead(hidden)


def naive_filterbank(g, delta, sigma2, n: int, size: int):
    """(B, n, size) Gaussian filters for 1-based pixel coordinates, each row summing to 1."""
    eps = torch.finfo(g.dtype).tiny  # keeps an underflowed row at 0 without biasing small sums
    rows = []
    for i in range(1, n + 1):
        mu = g + (i - n / 2 - 0.5) * delta  # (B, 1)
        a = torch.arange(1, size + 1, dtype=g.dtype, device=g.device).unsqueeze(0)  # (1, size)
        rows.append(torch.exp(-((a - mu) ** 2) / (2 * sigma2)))
    fb = torch.stack(rows, dim=1)
    return fb / (fb.sum(dim=2, keepdim=True) + eps)


class NaiveGlimpseClassifier(nn.Module):
    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        in_features = c.channels * c.read_n * c.read_n if c.attention else c.channels * c.height * c.width
        if c.attention:
            self.read = _Read(c.hidden)
        self.lstm = nn.LSTMCell(in_features, c.hidden)
        self.head = nn.Linear(c.hidden, c.num_classes)

    def window(self, h):
        c = self.config
        p = self.read.head.linear(h)
        gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = p[:, 0:1], p[:, 1:2], p[:, 2:3], p[:, 3:4], p[:, 4:5]
        gx = (c.width + 1) / 2 * (gx_t + 1)
        gy = (c.height + 1) / 2 * (gy_t + 1)
        delta = (max(c.width, c.height) - 1) / max(c.read_n - 1, 1) * torch.exp(log_delta_t)
        sigma2 = torch.exp(log_sigma2)
        gamma = torch.exp(log_gamma)
        fx = naive_filterbank(gx, delta, sigma2, c.read_n, c.width)
        fy = naive_filterbank(gy, delta, sigma2, c.read_n, c.height)
        return fx, fy, gamma

    def forward(self, x: torch.Tensor) -> ClassifierOutput:
        c = self.config
        batch = x.shape[0]
        h = torch.zeros(batch, c.hidden, dtype=x.dtype, device=x.device)
        cell = torch.zeros(batch, c.hidden, dtype=x.dtype, device=x.device)
        logits = []
        for _ in range(c.glimpses):
            if c.attention:
                fx, fy, gamma = self.window(h)
                patches = []
                for ch in range(c.channels):
                    patch = torch.matmul(torch.matmul(fy, x[:, ch]), fx.transpose(1, 2))
                    patches.append((patch * gamma.unsqueeze(2)).reshape(batch, -1))
                inp = torch.cat(patches, dim=1)
            else:
                inp = x.reshape(batch, -1)
            h, cell = self.lstm(inp, (h, cell))
            logits.append(self.head(h))
        return ClassifierOutput(torch.stack(logits, dim=1), None)

    def loss(self, x: torch.Tensor, y: torch.Tensor):
        out = self.forward(x)
        if self.config.per_step_loss:
            losses = [nn.functional.cross_entropy(out.logits[:, t], y) for t in range(out.logits.shape[1])]
            return torch.stack(losses).mean(), out
        return nn.functional.cross_entropy(out.logits[:, -1], y), out
