"""FLOP counts from shapes, per image, and this machine's measured matmul peak.

Conventions: a multiply-add is 2 FLOPs; every elementwise op (add, multiply, exp, sigmoid,
tanh, ...) is 1 FLOP per element. A training step costs ``TRAIN_FACTOR`` = 3 forward passes
(forward + backward through activations and weights), the usual approximation.
The harness divides achieved FLOP/s by :func:`measure_matmul_peak` to get ``peak_fraction``.
"""

from __future__ import annotations

import time

import torch

TRAIN_FACTOR = 3


def linear(in_features: int, out_features: int, bias: bool = True) -> int:
    """y = W x + b for one row."""
    return 2 * in_features * out_features + (out_features if bias else 0)


def lstm_cell(input_size: int, hidden: int) -> int:
    """One LSTM step for one row: both projections, one bias, then the pointwise gate algebra."""
    gates = 2 * (input_size + hidden) * 4 * hidden + 4 * hidden  # matmuls + bias
    activations = 4 * hidden + hidden  # sigmoid x3, tanh(g), tanh(c)
    update = 3 * hidden + hidden  # c = f*c + i*g ; h = o*tanh(c)
    return gates + activations + update


def filterbank(n: int, size: int) -> int:
    """One (n, size) Gaussian filterbank: grid (2n), diff, square, scale, exp, row sum, divide."""
    return 2 * n + 6 * n * size


def window(hidden: int, n: int, height: int, width: int) -> int:
    """Window head (linear to 5 numbers + transforms) and both filterbanks."""
    return linear(hidden, 5) + 10 + filterbank(n, width) + filterbank(n, height)


def read(channels: int, height: int, width: int, n: int) -> int:
    """gamma * Fy x Fx^T per channel: (H, W) @ (W, n), then (n, H) @ (H, n), then gamma."""
    return channels * (2 * height * width * n + 2 * n * height * n + n * n)


def write(channels: int, height: int, width: int, n: int) -> int:
    """(1/gamma) * Fy^T w Fx per channel: (n, n) @ (n, W), then (H, n) @ (n, W), then 1/gamma."""
    return channels * (2 * n * n * width + 2 * height * n * width + height * width)


def conv2d(in_channels: int, out_channels: int, kernel: int, out_height: int, out_width: int,
           bias: bool = True) -> int:
    per_output = 2 * in_channels * kernel * kernel + (1 if bias else 0)
    return per_output * out_channels * out_height * out_width


def softmax_cross_entropy(classes: int) -> int:
    """log-softmax (max, sub, exp, sum, log, sub) and the pick: about 5 FLOPs per class."""
    return 5 * classes


def draw(cfg, read_features: int, train: bool = False) -> int:
    """One image's forward pass (or training step) of DRAW (``models.draw.DRAWConfig`` ``cfg``, whose
    read gives ``read_features`` numbers per step)."""
    c, h, w, z = cfg.channels, cfg.height, cfg.width, cfg.z_size
    pixels = c * h * w
    step = 3 * pixels  # x^ = x - sigmoid(c), c += write
    step += lstm_cell(read_features + cfg.dec_hidden, cfg.enc_hidden)
    step += linear(cfg.enc_hidden, 2 * z) + 3 * z + 6 * z  # posterior, sample, KL and log densities
    step += lstm_cell(z, cfg.dec_hidden)
    if cfg.attention:
        step += window(cfg.dec_hidden, cfg.read_n, h, w) + read(2 * c, h, w, cfg.read_n)
        step += window(cfg.dec_hidden, cfg.write_n, h, w) + write(c, h, w, cfg.write_n)
        step += linear(cfg.dec_hidden, c * cfg.write_n ** 2)
    else:
        step += linear(cfg.dec_hidden, pixels)
    total = cfg.steps * step + 5 * pixels  # + the Bernoulli likelihood of c_T
    return train_step(total) if train else total


def train_step(forward: int) -> int:
    return TRAIN_FACTOR * forward


def measure_matmul_peak(dtype: torch.dtype = torch.float32, seconds: float = 1.0, size: int = 2048,
                        device: str | torch.device = "cpu", clock=time.perf_counter) -> float:
    """Best achieved GFLOP/s of a (size x size) @ (size x size) matmul over about ``seconds``.

    On a shared CPU the best repeat is the closest to the hardware's real peak. ``clock`` times
    each repeat (``time.process_time`` for CPU seconds, to compare with CPU-time measurements)."""
    device = torch.device(device)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    out = torch.empty(size, size, dtype=dtype, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    torch.mm(a, b, out=out)  # warm-up
    sync()
    flop = 2.0 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        t0 = clock()
        torch.mm(a, b, out=out)
        sync()
        dt = max(clock() - t0, 1e-9)
        best = max(best, flop / dt / 1e9)
        if time.perf_counter() >= deadline:
            return best
