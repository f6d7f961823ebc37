"""DRAW: a recurrent variational auto-encoder that draws with attention (Gregor et al. 2015, sec. 2).

Per step t = 1..T (equations 3-8 of the paper):

    x^_t    = x - sigmoid(c_{t-1})
    r_t     = read(x, x^_t, h^dec_{t-1})
    h^enc_t = LSTM_enc(h^enc_{t-1}, [r_t, h^dec_{t-1}])
    z_t     ~ Q(z_t | h^enc_t) = N(mu_t, sigma_t),  mu_t = W(h^enc_t), sigma_t = exp(W(h^enc_t))
    h^dec_t = LSTM_dec(h^dec_{t-1}, z_t)
    c_t     = c_{t-1} + write(h^dec_t)

Loss L = Lx + Lz in nats per image: Lx = -log Bernoulli(x | sigmoid(c_T)) summed over pixels,
Lz = sum_t KL(N(mu_t, sigma_t) || N(0, I)) = sum_t 0.5 * sum(mu^2 + sigma^2 - 2 log sigma - 1).

Initial states (``DRAWConfig.initial_state``): "zero" starts from c_0 = h^enc_0 = h^dec_0 = 0; "learned"
makes them learned biases as the paper does (sec. 2.1), the parameters ``canvas_0``, ``h_enc_0`` and
``h_dec_0`` (zero at initialisation). The LSTM cells start at zero either way (the paper names none).

Parameters are plain modules (``encoder``/``decoder`` ``nn.LSTMCell``s, ``posterior`` an ``nn.Linear``,
``read``/``write`` the shared kernel's), so the state dict is that of ``models.reference.naive_draw``.

One dispatch point in ``forward`` picks the path: ``models.fast.draw_sequence`` runs the whole pass as
one autograd node when ``usable`` (CPU, the native loops, zero initial states) and no windows or
canvases are asked for (``loss()``, the bounds); every other pass loops over ``_step``, the equations
above with the products fused by ``models.fast.fused`` (one GEMM for those with h^dec, one for h^enc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models import flops
from models.attention import make_read, make_write, read, window_from_params, write
from models.common import ConfigMixin, check_images, param_count
from models.fast import draw_sequence, fused
from models.lstm import lstm_pointwise

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
CHOICES = {"window_init": ("cover", "default"), "initial_state": ("zero", "learned")}


@dataclass
class DRAWConfig(ConfigMixin):
    """DRAW hyper-parameters; the defaults are the paper's MNIST generation row of Table 3."""

    height: int = 28
    width: int = 28
    channels: int = 1
    steps: int = 64
    read_n: int = 2
    write_n: int = 5
    enc_hidden: int = 256
    dec_hidden: int = 256
    z_size: int = 100
    attention: bool = True
    window_init: str = "cover"  # models/attention.py WindowHead: "cover" or "default" (public ports)
    initial_state: str = "zero"  # c_0, h^enc_0, h^dec_0: "zero", or "learned" biases (the paper)

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in CHOICES and v not in CHOICES[f.name]:
                raise ValueError(f"DRAWConfig.{f.name} must be one of {CHOICES[f.name]}, got {v!r}")
            if f.type == "bool" and not isinstance(v, bool):
                raise ValueError(f"DRAWConfig.{f.name} must be True or False, got {v!r}")
            if f.type == "int" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"DRAWConfig.{f.name} must be a positive integer, got {v!r}")
        if self.attention and (self.read_n < 2 or self.write_n < 2):
            raise ValueError(f"attention needs read_n and write_n >= 2 (a grid has a stride), "
                             f"got read_n={self.read_n}, write_n={self.write_n}")


class Windows(NamedTuple):
    """Attention windows of every step, (B, T) each, in pixel units (1-based)."""

    gx: torch.Tensor
    gy: torch.Tensor
    sigma2: torch.Tensor
    delta: torch.Tensor
    gamma: torch.Tensor


class DRAWOutput(NamedTuple):
    canvas_logits: torch.Tensor  # (B, C, H, W) c_T
    kl: torch.Tensor  # (B, T) exact KL(Q(z_t|x) || N(0, I)) per step, nats
    reconstruction: torch.Tensor  # (B,) Lx = -log p(x | z_1..T), nats
    log_q: torch.Tensor  # (B,) sum_t log N(z_t; mu_t, sigma_t) at the sampled z
    log_pz: torch.Tensor  # (B,) sum_t log N(z_t; 0, I) at the sampled z
    read_windows: Windows | None  # None without attention or when not asked for
    write_windows: Windows | None
    canvases: torch.Tensor | None  # (T, B, C, H, W) c_t logits after every step, when asked for

    @property
    def loss(self) -> torch.Tensor:
        """(B,) Lx + Lz, the negative ELBO with the exact KL, nats per image."""
        return self.reconstruction + self.kl.sum(dim=1)

    @property
    def log_weight(self) -> torch.Tensor:
        """(B,) log p(x, z) - log q(z | x) at the sampled z: one importance weight, for IWAE."""
        return -self.reconstruction + self.log_pz - self.log_q


def _stack_windows(ws: list) -> Windows:
    return Windows(*(torch.stack([getattr(w, k) for w in ws], dim=1) for k in Windows._fields))


def kl_standard_normal(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) elementwise, exact: 0.5 (mu^2 + sigma^2 - 2 log sigma - 1)."""
    return 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 2 * log_sigma - 1)


class DRAW(nn.Module):
    def __init__(self, config: DRAWConfig | None = None):
        super().__init__()
        cfg = self.config = config or DRAWConfig()
        a, c, h, w = cfg.attention, cfg.channels, cfg.height, cfg.width
        self.read = make_read(a, cfg.dec_hidden, h, w, cfg.read_n, c, num_images=2, window_init=cfg.window_init)
        self.write = make_write(a, cfg.dec_hidden, h, w, cfg.write_n, c, window_init=cfg.window_init)
        self.encoder = nn.LSTMCell(self.read.out_features + cfg.dec_hidden, cfg.enc_hidden)
        self.posterior = nn.Linear(cfg.enc_hidden, 2 * cfg.z_size)
        self.decoder = nn.LSTMCell(cfg.z_size, cfg.dec_hidden)
        if cfg.initial_state == "learned":  # only then: a "zero" model keeps its state dict
            self.canvas_0 = nn.Parameter(torch.zeros(c, h, w))
            self.h_enc_0 = nn.Parameter(torch.zeros(cfg.enc_hidden))
            self.h_dec_0 = nn.Parameter(torch.zeros(cfg.dec_hidden))
        self._compiled = None

    def initial_states(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_0 (C, H, W), h^enc_0, h^dec_0): the learned biases, or zeros."""
        cfg = self.config
        if cfg.initial_state == "learned":
            return self.canvas_0, self.h_enc_0, self.h_dec_0
        zeros = self.decoder.weight_ih.new_zeros
        return zeros(cfg.channels, cfg.height, cfg.width), zeros(cfg.enc_hidden), zeros(cfg.dec_hidden)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, windows: bool = True,
                canvases: bool = False, generator: torch.Generator | None = None) -> DRAWOutput:
        """Run the encoder-decoder on images ``x`` (B, C, H, W) with values in [0, 1].

        ``noise`` (T, B, z_size) is the standard normal eps of every step (drawn fresh when None,
        from ``generator`` if given). Returns a ``DRAWOutput``.
        """
        cfg = self.config
        x = check_images(x, "DRAW", (cfg.channels, cfg.height, cfg.width))
        b, T, zs = x.shape[0], cfg.steps, cfg.z_size
        if noise is None:
            noise = torch.randn(T, b, zs, device=x.device, dtype=x.dtype, generator=generator)
        elif noise.shape != (T, b, zs):
            raise ValueError(f"noise must have shape (steps, batch, z_size) = {(T, b, zs)}, got {tuple(noise.shape)}")
        p = fused.weights(self)
        if (not (windows or canvases) and (self._compiled is None or not torch.is_grad_enabled())
                and draw_sequence.usable(self, x, noise)):
            canvas, mu, log_sigma, z = draw_sequence.run(self, x, noise, p)  # native per-step loops
            return self._output(x, noise, canvas, mu, log_sigma, z)
        state, enc_x = fused.initial_state(self, p, x, *self.initial_states())  # from c_0, h^enc_0, h^dec_0
        step = fused.stepper(self, p, b)  # self._step on the fused products, or the compiled step
        mus, log_sigmas, zs_, rws, wws, cs = [], [], [], [], [], []
        keep = windows and cfg.attention
        for t in range(T):
            state, mu, log_sigma, z, rwin, wwin = step(t, x, enc_x, state, noise[t])
            mus.append(mu), log_sigmas.append(log_sigma), zs_.append(z)
            if keep:
                rws.append(rwin), wws.append(wwin)
            if canvases:
                cs.append(state[0])
        return self._output(x, noise, state[0], torch.stack(mus), torch.stack(log_sigmas), torch.stack(zs_),
                            _stack_windows(rws) if keep else None, _stack_windows(wws) if keep else None,
                            torch.stack(cs) if canvases else None)

    def _step(self, prod, t, x, enc_x, state, eps):
        """One DRAW step. ``state`` = (canvas c_{t-1}, column blocks of the h^dec GEMM output of
        t-1, encoder recurrence term of t-1, encoder cell, decoder cell); ``prod[k](h, t)`` are the
        fused products, split into their column blocks (see ``fused.blocks``)."""
        cfg = self.config
        canvas, dec_out, enc_rec, c_enc, c_dec = state
        x_hat = x - torch.sigmoid(canvas)
        enc_in = dec_out[1] + enc_rec  # the h^dec_{t-1} and h^enc_{t-1} terms of the encoder's gates
        rwin = wwin = None
        if cfg.attention:
            rwin = window_from_params(dec_out[2], cfg.height, cfg.width, cfg.read_n)
            r = read(torch.cat([x, x_hat], dim=1), rwin.fx, rwin.fy, rwin.gamma).flatten(1)
            gates = prod["read"](r, t, enc_in)[0]
        else:
            gates = prod["read"](x_hat.flatten(1), t, enc_in + enc_x)[0]
        h_enc, c_enc = lstm_pointwise(gates, c_enc)
        mu, log_sigma, enc_rec = prod["enc"](h_enc, t)
        z = torch.addcmul(mu, torch.exp(log_sigma), eps)
        h_dec, c_dec = lstm_pointwise(prod["z"](z, t, dec_out[0])[0], c_dec)
        dec_out = prod["dec"](h_dec, t)
        if cfg.attention:
            wwin = window_from_params(dec_out[3], cfg.height, cfg.width, cfg.write_n)
            patch = dec_out[4].view(x.shape[0], cfg.channels, cfg.write_n, cfg.write_n)
            canvas = canvas + write(patch, wwin.fx, wwin.fy, wwin.gamma)
        else:
            canvas = canvas + dec_out[2].view(x.shape)
        return (canvas, dec_out, enc_rec, c_enc, c_dec), mu, log_sigma, z, rwin, wwin

    @staticmethod
    def _output(x, noise, canvas, mu, log_sigma, z, read_windows=None, write_windows=None, canvases=None):
        """The loss terms from c_T and every step's mu, log sigma, z (T, B, z_size)."""
        kl = kl_standard_normal(mu, log_sigma).sum(-1).t()
        log_q = (-0.5 * noise.square() - log_sigma - HALF_LOG_2PI).sum((0, 2))
        log_pz = (-0.5 * z.square() - HALF_LOG_2PI).sum((0, 2))
        recon = F.binary_cross_entropy_with_logits(canvas, x, reduction="none").flatten(1).sum(1)
        return DRAWOutput(canvas, kl, recon, log_q, log_pz, read_windows, write_windows, canvases)

    def loss(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """Mean over the batch of Lx + Lz (nats/image), and its parts as floats."""
        out = self(x, noise, windows=False)
        lx, lz = out.reconstruction.mean(), out.kl.sum(1).mean()
        loss = lx + lz
        return loss, {"loss": loss.item(), "reconstruction": lx.item(), "kl": lz.item()}

    @torch.no_grad()
    def generate(self, n: int, steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` images from the prior through the decoder alone: z_t ~ N(0, I),
        h^dec_t = LSTM_dec(h^dec_{t-1}, z_t), c_t = c_{t-1} + write(h^dec_t).

        Returns the canvas after every step as probabilities sigmoid(c_t), shape (T, n, C, H, W).
        """
        cfg = self.config
        steps = cfg.steps if steps is None else steps
        if not isinstance(n, int) or n < 1 or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"generate needs n >= 1 and steps >= 1, got n={n!r}, steps={steps!r}")
        c_0, _, h_dec_0 = self.initial_states()
        canvas, h = c_0.expand(n, -1, -1, -1), h_dec_0.expand(n, -1)
        cell = h.new_zeros(n, cfg.dec_hidden)
        out = []
        for _ in range(steps):
            z = torch.randn(n, cfg.z_size, device=h.device, dtype=h.dtype, generator=generator)
            h, cell = self.decoder(z, (h, cell))
            canvas = canvas + self.write(h)[0]
            out.append(torch.sigmoid(canvas))
        return torch.stack(out)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Reconstructions of ``x``: sigmoid(c_t) after every step, shape (T, B, C, H, W)."""
        return torch.sigmoid(self(x, windows=False, canvases=True, generator=generator).canvases)

    def param_count(self) -> int:
        return param_count(self)

    def flops_per_image(self, train: bool = False) -> int:
        """FLOPs of one image's forward pass (or training step), counted from the shapes (models/flops.py)."""
        return flops.draw(self.config, self.read.out_features, train)

    def compile_step(self, enable: bool = True, **compile_kwargs) -> "DRAW":
        """Train with the step compiled by ``torch.compile`` (fused pointwise work; the first call
        compiles, about 30 s of CPU). Evaluation under no_grad keeps the eager step."""
        self._compiled = fused.compile_step(self, **compile_kwargs) if enable else None
        return self
