"""DRAW's selective attention: the Gaussian filterbank read and write (Gregor et al. 2015, sec. 3).

The one kernel that both the glimpse classifier and DRAW use. Pixel coordinates are
1-based as in the paper, so a zero offset (g~ = 0) centres the grid on the image.

    gX = (A + 1) / 2 * (g~X + 1)        gY = (B + 1) / 2 * (g~Y + 1)
    delta = (max(A, B) - 1) / (N - 1) * exp(log delta~)
    mu^i = g + (i - N/2 - 0.5) * delta                    i = 1..N
    F[i, a] = exp(-(a - mu^i)^2 / (2 sigma^2)) / Z        a = 1..A, rows sum to 1
    read(x)  = gamma * Fy x Fx^T           write(w) = 1/gamma * Fy^T w Fx

Shapes: images (B, C, H, W); filterbanks Fx (B, N, W) and Fy (B, N, H); patches (B, C, N, N).

Numerics: rows are computed as a softmax over pixels (the row maximum is factored out), so they
sum to 1 for every finite input and match the float64 equations even for windows far outside the
image, where a plain exp underflows to a zero row in float32. Values and gradients are finite for
every finite input; the backward of the filterbank is hand-derived (one pass, no NaN from 0 * inf).

Speed: on CPU in float32/float64, `window_from_params` (the window and both filterbanks, forward
and backward) and the filterbank rows run as native loops (models/fast/native.py), the same arithmetic
as the PyTorch code here, which is kept for CUDA, other dtypes, torch.compile and comparisons.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn

from models.fast import native


# sigma^2 and delta are clamped to ranges whose ends are already the limiting behaviour (nearest
# pixel / flat row / grid spread far past the image), so every intermediate below stays finite in
# float32 and no gradient can be NaN. Grid centres further than _MARGIN * sigma^2 outside the
# image are pulled in to that distance: their rows are one-hot on the edge pixel either way.
_SIGMA2_MIN, _SIGMA2_MAX = 1e-12, 1e12
_DELTA_MAX = 1e18
_MARGIN = 1000.0
_LOG_MAX = 60.0


def _cutoff(dtype: torch.dtype, size: int) -> float:
    """Log of the smallest weight kept, relative to the row peak: eps / (e * size). All the weights
    dropped from a row add up to less than half an ulp of its sum, and the kept ones are so far from
    the denormal range that products of two weights and a pixel value stay normal. Denormals make
    exp and every matmul fed by F many times slower on x86 CPUs (measured: 30x for the write bmm)."""
    return math.log(torch.finfo(dtype).eps) - math.log(size) - 1.0


class _GaussianRows(torch.autograd.Function):
    """F[b, i, a] = exp(-d^2) / Z, d = (a - mu[b, i]) r[b], r = 1 / sqrt(2 sigma2), pixels a = 1..size.

    The exponent is shifted by its row maximum, taken at the pixel P nearest mu, which the
    normalisation cancels exactly: -d^2 + d_P^2 = (P - a) r * (P + a - 2 mu) r. In this factored form
    it is exactly 0 at the peak (so Z >= 1: the mass never underflows and no row is ever zero) and
    accurate elsewhere; the expanded form m - d^2 loses all digits when sigma is tiny and m huge.
    It is clamped below at `_cutoff` and the clamped weights are set to exactly 0 (exp is many times
    slower where it underflows, and so is every matmul fed with denormals). It is clamped above at 0,
    its exact maximum: with mu halfway between two pixels and sigma tiny, rounding in the factored form
    can reach +1e3 at the other pixel (r ~ 1e5), and exp overflowed there (a row of zeros). The native
    loops clamp the same way.
    The backward is derived by hand (checked by gradcheck); clamped entries get no gradient:
        S = F * (G - sum_a G F)     dmu = 2 r sum_a S d     dr = -(2 / r) sum_{i,a} S d^2
    """

    @staticmethod
    def forward(ctx, mu, r, size: int):
        cut = _cutoff(mu.dtype, size)
        if native.usable(mu, r):
            f = native.rows_forward(mu, r, size, cut, _threshold(cut))
        else:
            f = _rows_forward(mu, r, size, cut)
        ctx.save_for_backward(f, mu, r)
        return f

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        f, mu, r = ctx.saved_tensors
        rows_backward = native.rows_backward if native.usable(grad, f, mu, r) else _rows_backward
        grad_mu, grad_r = rows_backward(grad.contiguous(), f, mu, r)
        return grad_mu, grad_r, None


def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small constant vector, made once per (values, dtype, device); never written to.

    Under torch.compile the cache is bypassed (dynamo does not trace through lru_cache) and the
    values come as one tuple: dynamo 2.14 mis-traces `f(*range(k))` varargs (wrong length)."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device)
    return _cached_constant(values, dtype, device)


@functools.lru_cache(maxsize=64)
def _cached_constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # Made outside inference mode, so that a cache filled during evaluation still serves training.
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=dtype, device=device)


def _pixels_r(r: torch.Tensor, size: int) -> torch.Tensor:
    """a * r for a = 1..size: (B, 1, size)."""
    return _constant(tuple(range(1, size + 1)), dtype=r.dtype, device=r.device) * r.view(-1, 1, 1)


def _rows_forward(mu, r, size: int, cut: float):
    rr = r.view(-1, 1, 1)
    pix_r = _pixels_r(r, size)
    peak_r = mu.round().clamp_(1, size).unsqueeze(-1) * rr  # P r, (B, n, 1): the same floats as pix_r at P
    u = peak_r - pix_r  # (P - a) r, (B, n, size)
    v = pix_r + (peak_r - 2.0 * mu.unsqueeze(-1) * rr)  # (P + a - 2 mu) r
    e = u.mul_(v).clamp_(min=cut, max=0.0).exp_()
    return torch.nn.functional.threshold_(e.div_(e.sum(dim=-1, keepdim=True)), _threshold(cut), 0.0)


def _threshold(cut: float) -> float:
    """Normalised weights at or below this were clamped at `cut` (a row sums to at least 1 before
    normalising, so a clamped weight is at most exp(cut)); they are set to exactly 0."""
    return 1.01 * math.exp(cut)


def _rows_backward(grad, f, mu, r):
    d = _pixels_r(r, f.shape[-1]) - (mu * r.view(-1, 1)).unsqueeze(-1)  # (a - mu) r
    gf = grad * f
    sd = torch.addcmul(gf, f, gf.sum(dim=-1, keepdim=True), value=-1.0).mul_(d)  # S d, (B, n, size)
    grad_mu = 2.0 * r.view(-1, 1) * sd.sum(dim=-1)  # 2 r sum_a S d
    grad_r = -2.0 * sd.mul_(d).sum(dim=(1, 2)) / r  # -(2 / r) sum_{i,a} S d^2
    return grad_mu, grad_r


def filterbank(g: torch.Tensor, delta: torch.Tensor, sigma2: torch.Tensor, n: int, size: int) -> torch.Tensor:
    """Gaussian filterbank F of shape (B, n, size) for grid centre ``g``, stride ``delta``, variance ``sigma2``.

    ``g``, ``delta``, ``sigma2`` have shape (B,) and are in pixel units (1-based):
    F[b, i, a] = exp(-(a - mu_i)^2 / (2 sigma2)) / Z with mu_i = g + (i - n/2 - 0.5) delta, i, a 1-based.
    Each row sums to 1 for every finite input (the row maximum is factored out before exp, so the
    mass cannot underflow; weights below eps / (e * size) of the row peak are exactly zero). Values and
    gradients are finite for every finite input. bfloat16/float16 inputs are computed in float32
    and the result is cast back.
    """
    if not (g.shape == delta.shape == sigma2.shape and g.dim() == 1):
        raise ValueError(f"filterbank: g, delta, sigma2 must all have shape (B,), got "
                         f"{tuple(g.shape)}, {tuple(delta.shape)}, {tuple(sigma2.shape)}")
    if n < 1 or size < 1:
        raise ValueError(f"filterbank: need n >= 1 and size >= 1, got n={n}, size={size}")
    out_dtype = g.dtype
    work = out_dtype if out_dtype in (torch.float32, torch.float64) else torch.float32
    g, delta, sigma2 = g.to(work), delta.to(work), sigma2.to(work)
    sigma2 = sigma2.clamp(_SIGMA2_MIN, _SIGMA2_MAX)
    delta = delta.clamp(-_DELTA_MAX, _DELTA_MAX)
    offsets = _constant(tuple(i - n / 2 - 0.5 for i in range(1, n + 1)), dtype=work, device=g.device)  # (n,)
    mu = torch.addcmul(g.unsqueeze(-1), delta.unsqueeze(-1), offsets)  # (B, n)
    far = (_MARGIN * sigma2).unsqueeze(-1)
    mu = torch.clamp(mu, -size - far, 2.0 * size + 1.0 + far)  # at most size + 1 + far outside
    f = _GaussianRows.apply(mu, torch.rsqrt(2.0 * sigma2), size)
    return f if f.dtype == out_dtype else f.to(out_dtype)


def read(x: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Glimpse (B, C, N, N) = gamma * Fy x Fx^T for every channel of ``x`` (B, C, H, W)."""
    b, c, h, w = x.shape
    n = fx.shape[1]
    if fx.shape != (b, n, w) or fy.shape != (b, n, h):
        raise ValueError(f"read: x {tuple(x.shape)} needs fx (B, N, W) = {(b, n, w)} and fy (B, N, H) = "
                         f"{(b, n, h)}, got {tuple(fx.shape)} and {tuple(fy.shape)}")
    # Fy first: (B, 1, N, H) @ (B, C, H, W) -> (B, C, N, W), then one bmm over all channels with Fx^T
    # (measured faster than the x Fx^T-first order at both the classifier and the DRAW shapes).
    t = torch.matmul(fy.unsqueeze(1), x).reshape(b, c * n, w)
    return torch.bmm(t, fx.transpose(1, 2)).view(b, c, n, n) * gamma.view(b, 1, 1, 1)


def write(patch: torch.Tensor, fx: torch.Tensor, fy: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Canvas update (B, C, H, W) = (1 / gamma) * Fy^T w Fx for a patch ``w`` (B, C, N, N)."""
    b, c, n, n2 = patch.shape
    w, h = fx.shape[2], fy.shape[2]
    if n != n2 or fx.shape != (b, n, w) or fy.shape != (b, n, h):
        raise ValueError(f"write: patch {tuple(patch.shape)} needs fx (B, N, W) and fy (B, N, H) with "
                         f"B={b}, N={n}, got {tuple(fx.shape)} and {tuple(fy.shape)}")
    # (B, C*N, N) @ (B, N, W) -> (B, C*N, W), then Fy^T (B, H, N) over the row index.
    pf = torch.bmm(patch.reshape(b, c * n, n), fx).view(b, c, n, w)
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
    if params.dim() != 2 or params.shape[1] != 5:
        raise ValueError(f"window_from_params: params must have shape (B, 5), got {tuple(params.shape)}")
    out_dtype = params.dtype
    if out_dtype not in (torch.float32, torch.float64):  # 8-bit mantissas would move g by 0.1 px
        params = params.float()
    if native.usable(params):  # the same arithmetic in one native call each way
        if torch.is_grad_enabled() and params.requires_grad:
            v, fx, fy = _NativeWindow.apply(params, height, width, n)
        else:  # no graph to record: skip the autograd.Function's own overhead (~10 us)
            v, fx, fy = native.window_forward(params, height, width, n, _window_consts(params.dtype, height, width, n))
        gx, gy, sigma2, delta, gamma = v.unbind(dim=1)
    else:
        gx, gy, sigma2, delta, gamma, fx, fy = _window_torch(params, height, width, n)
    if out_dtype != params.dtype:
        gx, gy, sigma2, delta, gamma, fx, fy = (t.to(out_dtype) for t in (gx, gy, sigma2, delta, gamma, fx, fy))
    return Window(gx, gy, sigma2, delta, gamma, fx, fy)


def _window_torch(params: torch.Tensor, height: int, width: int, n: int) -> tuple:
    # Few, whole-row ops: at DRAW's sizes the kernel launches, not the arithmetic, cost the time.
    scale = _constant(((width + 1) / 2, (height + 1) / 2, 1.0, (max(width, height) - 1) / max(n - 1, 1), 1.0),
                      dtype=params.dtype, device=params.device)
    # The logs are clamped where exp would leave float32's range (an inf there turns the zero
    # gradient of filterbank's clamps into 0 * inf = NaN); sigma2 is clamped further in filterbank.
    v = torch.cat([params[:, :2] + 1.0, params[:, 2:].clamp(-_LOG_MAX, _LOG_MAX).exp()], dim=1) * scale
    gx, gy, sigma2, delta, gamma = v.unbind(dim=1)
    if height == width:  # one filterbank call for both axes: half the kernel launches
        f = filterbank(torch.cat([gx, gy]), delta.repeat(2), sigma2.repeat(2), n, width)
        fx, fy = f.split(gx.shape[0])
    else:
        fx = filterbank(gx, delta, sigma2, n, width)
        fy = filterbank(gy, delta, sigma2, n, height)
    return gx, gy, sigma2, delta, gamma, fx, fy


class _NativeWindow(torch.autograd.Function):
    """window_from_params (the five raw numbers to v = (gX, gY, sigma2, delta, gamma), Fx, Fy) as one
    native loop forward and one backward (models/fast/native.py), with the clamps of the PyTorch path."""

    @staticmethod
    def forward(ctx, params, height: int, width: int, n: int):
        params = params.contiguous()  # callers pass column slices of a fused GEMM's output
        consts = _window_consts(params.dtype, height, width, n)
        v, fx, fy = native.window_forward(params, height, width, n, consts)
        ctx.save_for_backward(params, v, fx, fy)
        ctx.shape = (height, width, n, consts)
        ctx.set_materialize_grads(False)
        return v, fx, fy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dv, dfx, dfy):
        params, v, fx, fy = ctx.saved_tensors
        return native.window_backward(params, v, fx, fy, dv, dfx, dfy, *ctx.shape), None, None, None


@functools.lru_cache(maxsize=64)
def _window_consts(dtype: torch.dtype, height: int, width: int, n: int):
    cut_x, cut_y = _cutoff(dtype, width), _cutoff(dtype, height)
    return native.window_consts(
        dtype, sx=(width + 1) / 2, sy=(height + 1) / 2, sd=(max(width, height) - 1) / max(n - 1, 1),
        log_max=_LOG_MAX, s2_min=_SIGMA2_MIN, s2_max=_SIGMA2_MAX, delta_max=_DELTA_MAX, margin=_MARGIN,
        cut_x=cut_x, thr_x=_threshold(cut_x), cut_y=cut_y, thr_y=_threshold(cut_y))


WINDOW_INITS = ("cover", "default")


class WindowHead(nn.Module):
    """Linear map from a hidden state to the five window numbers, then the paper's transforms.

    ``init`` sets the bias of log sigma^2 (the paper gives no initialisation):
    - "cover" (default): sigma = half the initial grid stride, so the first windows are smooth,
      low-resolution views of the whole image. With "default", sigma is about 1 pixel against a stride of
      9 (classifier) or 27 (DRAW's 2x2 read) pixels: the grid samples isolated pixels, and the
      models sat on a loss plateau for minutes (measured: classifier T = 8 on cluttered100 stayed
      at loss 2.2 for 2,000 steps with "default", fell to 0.58 with "cover").
    - "default": PyTorch's default linear init (small random biases, sigma about 1), as in public DRAW ports.
    """

    def __init__(self, hidden_size: int, height: int, width: int, n: int, init: str = "cover"):
        super().__init__()
        if init not in WINDOW_INITS:
            raise ValueError(f"window init must be one of {WINDOW_INITS}, got {init!r}")
        self.height, self.width, self.n = height, width, n
        self.linear = nn.Linear(hidden_size, 5)
        if init == "cover":
            stride = (max(height, width) - 1) / max(n - 1, 1)
            with torch.no_grad():
                self.linear.bias.zero_()
                self.linear.bias[2] = 2.0 * math.log(max(stride / 2.0, 0.5))

    def forward(self, h: torch.Tensor) -> Window:
        return window_from_params(self.linear(h), self.height, self.width, self.n)


class AttentionRead(nn.Module):
    """Read an n x n glimpse from each of several images (B, C, H, W) at one window from ``h``.

    Returns (features (B, k*C*n*n), window).
    """

    def __init__(self, hidden_size: int, height: int, width: int, n: int, channels: int = 1, num_images: int = 1,
                 window_init: str = "cover"):
        super().__init__()
        self.head = WindowHead(hidden_size, height, width, n, window_init)
        self.out_features = num_images * channels * n * n

    def forward(self, images: list[torch.Tensor], h: torch.Tensor) -> tuple[torch.Tensor, Window]:
        win = self.head(h)
        if len(images) > 1 and all(x.shape == images[0].shape for x in images):
            images = [torch.cat(images, dim=1)]  # one read over all images' channels: same features
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

    def __init__(self, hidden_size: int, height: int, width: int, n: int, channels: int = 1,
                 window_init: str = "cover"):
        super().__init__()
        self.channels, self.n = channels, n
        self.head = WindowHead(hidden_size, height, width, n, window_init)
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
              channels: int = 1, num_images: int = 1, window_init: str = "cover") -> nn.Module:
    if attention:
        return AttentionRead(hidden_size, height, width, n, channels, num_images, window_init)
    return FullRead(hidden_size, height, width, n, channels, num_images)


def make_write(attention: bool, hidden_size: int, height: int, width: int, n: int, channels: int = 1,
               window_init: str = "cover") -> nn.Module:
    if attention:
        return AttentionWrite(hidden_size, height, width, n, channels, window_init)
    return FullWrite(hidden_size, height, width, n, channels)
