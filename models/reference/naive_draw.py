"""A straightforward DRAW, written from the paper's equations: the reference for parity and speed.

One Python loop over steps, ``nn.LSTMCell``s and ``nn.Linear``s called one by one, the Gaussian
filterbank rebuilt from scratch for every read and write (its own code, not ``models.attention``),
the KL summed step by step. Its parameter names match ``models.draw.DRAW``, so
``NaiveDRAW(cfg).load_state_dict(draw.state_dict())`` gives the same model. With
``initial_state="learned"`` c_0, h^enc_0 and h^dec_0 are the parameters ``canvas_0``, ``h_enc_0`` and
``h_dec_0`` (the LSTM cells start at zero either way).
"""

from __future__ import annotations

import torch
from torch import nn

from models.draw import DRAWConfig


def naive_filterbank(g, delta, sigma2, n, size):
    """F[b, i, a] = exp(-(a - mu_i)^2 / (2 sigma2)) / Z, mu_i = g + (i - n/2 - 0.5) delta; i, a 1-based."""
    rows = []
    for i in range(1, n + 1):
        mu = g + (i - n / 2 - 0.5) * delta  # (B,)
        a = torch.arange(1, size + 1, dtype=g.dtype, device=g.device)
        e = torch.exp(-((a[None, :] - mu[:, None]) ** 2) / (2 * sigma2[:, None]))
        rows.append(e / e.sum(dim=1, keepdim=True))
    return torch.stack(rows, dim=1)  # (B, n, size)


def naive_window(params, height, width, n):
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = [params[:, k] for k in range(5)]
    gx = (width + 1) / 2 * (gx_t + 1)
    gy = (height + 1) / 2 * (gy_t + 1)
    delta = (max(width, height) - 1) / (n - 1) * torch.exp(log_delta_t)
    sigma2 = torch.exp(log_sigma2)
    fx = naive_filterbank(gx, delta, sigma2, n, width)
    fy = naive_filterbank(gy, delta, sigma2, n, height)
    return fx, fy, torch.exp(log_gamma)


class _Head(nn.Module):
    def __init__(self, hidden, out):
        super().__init__()
        self.linear = nn.Linear(hidden, out)


class NaiveRead(nn.Module):
    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.attention:
            self.head = _Head(cfg.dec_hidden, 5)
            self.out_features = 2 * cfg.channels * cfg.read_n ** 2
        else:
            self.out_features = 2 * cfg.channels * cfg.height * cfg.width

    def forward(self, x, x_hat, h):
        if not self.cfg.attention:
            return torch.cat([x.flatten(1), x_hat.flatten(1)], dim=1)
        fx, fy, gamma = naive_window(self.head.linear(h), self.cfg.height, self.cfg.width, self.cfg.read_n)
        glimpses = []
        for img in (x, x_hat):
            for ch in range(img.shape[1]):
                g = fy @ img[:, ch] @ fx.transpose(1, 2)  # (B, N, N)
                glimpses.append((gamma[:, None, None] * g).flatten(1))
        return torch.cat(glimpses, dim=1)


class NaiveWrite(nn.Module):
    def __init__(self, cfg: DRAWConfig):
        super().__init__()
        self.cfg = cfg
        c, n = cfg.channels, cfg.write_n
        if cfg.attention:
            self.head = _Head(cfg.dec_hidden, 5)
            self.patch = nn.Linear(cfg.dec_hidden, c * n * n)
        else:
            self.linear = nn.Linear(cfg.dec_hidden, c * cfg.height * cfg.width)

    def forward(self, h):
        cfg = self.cfg
        if not cfg.attention:
            return self.linear(h).view(-1, cfg.channels, cfg.height, cfg.width)
        fx, fy, gamma = naive_window(self.head.linear(h), cfg.height, cfg.width, cfg.write_n)
        w = self.patch(h).view(-1, cfg.channels, cfg.write_n, cfg.write_n)
        chans = [fy.transpose(1, 2) @ w[:, ch] @ fx / gamma[:, None, None] for ch in range(cfg.channels)]
        return torch.stack(chans, dim=1)


class NaiveDRAW(nn.Module):
    def __init__(self, config: DRAWConfig | None = None):
        super().__init__()
        cfg = self.config = config or DRAWConfig()
        self.read = NaiveRead(cfg)
        self.write = NaiveWrite(cfg)
        self.encoder = nn.LSTMCell(self.read.out_features + cfg.dec_hidden, cfg.enc_hidden)
        self.posterior = nn.Linear(cfg.enc_hidden, 2 * cfg.z_size)
        self.decoder = nn.LSTMCell(cfg.z_size, cfg.dec_hidden)
        if cfg.initial_state == "learned":  # c_0, h^enc_0, h^dec_0 as learned biases (paper, sec. 2.1)
            self.canvas_0 = nn.Parameter(torch.zeros(cfg.channels, cfg.height, cfg.width))
            self.h_enc_0 = nn.Parameter(torch.zeros(cfg.enc_hidden))
            self.h_dec_0 = nn.Parameter(torch.zeros(cfg.dec_hidden))

    def forward(self, x, noise=None):
        """Returns (canvas logits c_T, reconstruction (B,), kl (B, T)); ``noise`` is (T, B, z)."""
        cfg = self.config
        b = x.shape[0]
        if cfg.initial_state == "learned":
            canvas = self.canvas_0.expand(b, -1, -1, -1)
            h_enc = self.h_enc_0.expand(b, -1)
            h_dec = self.h_dec_0.expand(b, -1)
        else:
            canvas = torch.zeros_like(x)
            h_enc = torch.zeros(b, cfg.enc_hidden, dtype=x.dtype)
            h_dec = torch.zeros(b, cfg.dec_hidden, dtype=x.dtype)
        c_enc = torch.zeros(b, cfg.enc_hidden, dtype=x.dtype)  # the LSTM cells start at zero either way
        c_dec = torch.zeros(b, cfg.dec_hidden, dtype=x.dtype)
        kls = []
        for t in range(cfg.steps):
            x_hat = x - torch.sigmoid(canvas)
            r = self.read(x, x_hat, h_dec)
            h_enc, c_enc = self.encoder(torch.cat([r, h_dec], dim=1), (h_enc, c_enc))
            q = self.posterior(h_enc)
            mu, log_sigma = q[:, : cfg.z_size], q[:, cfg.z_size:]
            sigma = torch.exp(log_sigma)
            eps = torch.randn_like(mu) if noise is None else noise[t]
            z = mu + sigma * eps
            h_dec, c_dec = self.decoder(z, (h_dec, c_dec))
            canvas = canvas + self.write(h_dec)
            kls.append(0.5 * torch.sum(mu ** 2 + sigma ** 2 - torch.log(sigma ** 2) - 1, dim=1))
        p = torch.sigmoid(canvas)
        recon = -torch.sum(x * torch.log(p) + (1 - x) * torch.log(1 - p), dim=(1, 2, 3))
        return canvas, recon, torch.stack(kls, dim=1)

    def loss(self, x, noise=None):
        _, recon, kl = self(x, noise)
        return (recon + kl.sum(1)).mean()
