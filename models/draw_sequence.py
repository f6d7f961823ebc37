"""DRAW's whole T-step pass as one autograd node on CPU, with a hand-written backward through time.

``models.draw.DRAW`` records a few dozen autograd nodes per step; at the paper's size (T = 64,
batch 100) a training step is then about half GEMMs and half small operations with their
dispatch and autograd bookkeeping. Here the forward runs the same equations with no graph: per
step four GEMMs (torch, into preallocated buffers) and four native calls for everything between
them (models/native_draw_body.h: write, error image, read, LSTM gates, latent sample). The
backward runs the steps in reverse with the same structure, and forms every weight gradient as
one GEMM over all steps' rows at the end.

The fused weights are those of ``DRAW._fused`` with each bias as a last row (see
``models.draw._Rows``): W_dec ([h^dec, 1] -> decoder recurrence | encoder input | read window |
write window | patch), W_enc ([h^enc, 1] -> mu | log sigma | encoder recurrence), W_read (glimpse
-> encoder gates) and W_z (z -> decoder gates). Outputs: c_T and every step's mu, log sigma and
z; the losses are formed from them outside, by autograd.

Backward, per step t = T..1 (D_t, E_t are the fused products' outputs, G_D, G_E their gradients):
    G_D[t] = [da^dec_{t+1} | da^enc_{t+1} | d read window_{t+1} | d write window_t | d patch_t]
    dh^dec_t = G_D[t] W_dec^T;  da^dec_t, dc^dec_{t-1} from the LSTM's pointwise backward
    dz_t = dz_t(outside) + da^dec_t W_z^T;  G_E[t] = [dmu_t + dz_t | dls_t + dz_t eps_t sigma_t | da^enc_{t+1}]
    dh^enc_t = G_E[t] W_enc^T;  da^enc_t, dc^enc_{t-1};  dr_t = da^enc_t W_read^T
    dW = H^T G over all steps' rows for each fused weight.
Parity with the autograd path of ``DRAW`` (float64, every parameter's gradient) is tested in
tests/test_draw_sequence.py.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from models import native
from models.attention import _window_consts


@dataclass(frozen=True)
class Geometry:
    steps: int
    batch: int
    channels: int
    height: int
    width: int
    read_n: int
    write_n: int
    enc_hidden: int
    dec_hidden: int
    z_size: int

    @property
    def pixels(self) -> int:
        return self.channels * self.height * self.width

    @property
    def read_size(self) -> int:
        return 2 * self.channels * self.read_n ** 2

    # Column blocks of D = [h^dec, 1] W_dec and of E = [h^enc, 1] W_enc.
    @property
    def col_enc_in(self) -> int:
        return 4 * self.dec_hidden

    @property
    def col_read(self) -> int:
        return self.col_enc_in + 4 * self.enc_hidden

    @property
    def col_write(self) -> int:
        return self.col_read + 5

    @property
    def col_patch(self) -> int:
        return self.col_write + 5

    @property
    def n_dec(self) -> int:
        return self.col_patch + self.channels * self.write_n ** 2

    @property
    def n_enc(self) -> int:
        return 2 * self.z_size + 4 * self.enc_hidden

    def canvas_args(self, dtype: torch.dtype) -> tuple[tuple, tuple]:
        """The column offsets and the sizes-and-window-constants that both canvas kernels take."""
        H, W, rn, wn = self.height, self.width, self.read_n, self.write_n
        rk, wk = _window_consts(dtype, H, W, rn), _window_consts(dtype, H, W, wn)
        return (self.col_read, self.col_write, self.col_patch), (self.batch, self.channels, H, W, rn, wn, rk, wk)


class _Workspace:
    """Every buffer of one forward and backward, allocated once per geometry and reused (pooled).

    ``keep``: the forward keeps every step's intermediates for the backward. Without it (evaluation)
    the per-step buffers have two slots, used in turn (``slot``), and no backward buffers exist."""

    def __init__(self, g: Geometry, dtype: torch.dtype, keep: bool):
        T, B, hd, he, zs = g.steps, g.batch, g.dec_hidden, g.enc_hidden, g.z_size
        S = T if keep else 2
        self.slot = (lambda i: i) if keep else (lambda i: i % 2)
        e = lambda *shape: torch.empty(*shape, dtype=dtype)  # noqa: E731
        self.h_dec = e(S + 1, B, hd + 1)  # [h^dec_t, 1] for t = 0..T (h^dec_0 = 0)
        self.h_dec[:, :, -1] = 1
        self.h_dec[0, :, :-1] = 0
        self.h_enc = e(S, B, he + 1)  # [h^enc_t, 1] for t = 1..T
        self.h_enc[:, :, -1] = 1
        self.r = e(S, B, g.read_size)  # glimpse of step t + 1 at t
        self.d, self.e = [e(B, g.n_dec), e(B, g.n_dec)], [e(B, g.n_enc), e(B, g.n_enc)]
        self.gates_enc, self.gates_dec = e(B, 4 * he), e(B, 4 * hd)
        self.act_enc, self.act_dec = e(S, B, 4 * he), e(S, B, 4 * hd)
        self.c_enc, self.c_dec = e(S + 1, B, he), e(S + 1, B, hd)
        self.tc_enc, self.tc_dec = e(S, B, he), e(S, B, hd)
        self.sig = e(S, B, g.pixels)  # sigmoid(c_t), t = 0..T-1
        rn, wn, H, W = g.read_n, g.write_n, g.height, g.width
        self.rparams, self.rv, self.rfx, self.rfy = e(S, B, 5), e(S, B, 5), e(S, B, rn, W), e(S, B, rn, H)
        self.wparams, self.wv, self.wfx, self.wfy = e(S, B, 5), e(S, B, 5), e(S, B, wn, W), e(S, B, wn, H)
        self.patch = e(S, B, g.channels * wn * wn)
        if not keep:
            return
        self.g_dec, self.g_enc = e(T + 1, B, g.n_dec), e(T, B, g.n_enc)
        self.dcanvas, self.dr = e(B, g.pixels), e(B, g.read_size)
        self.dc_enc, self.dc_dec, self.dh_enc, self.dh_dec, self.dz = e(B, he), e(B, hd), e(B, he), e(B, hd), e(B, zs)
        self.scratch = e(10 * B + 2 * B * max(rn, wn) * (H + W))


_POOLS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()  # model -> {key: [free workspaces]}
_POOL_SIZE = 2


class _Lease:
    """A workspace taken from the owner's pool; it goes back when the lease (held by the graph) dies."""

    def __init__(self, owner, g: Geometry, dtype: torch.dtype, keep: bool = True):
        pool = _POOLS.setdefault(owner, {})
        key = (g, dtype, keep)
        if key not in pool and len(pool) >= 4:
            pool.clear()
        free = pool.setdefault(key, [])
        self.ws = free.pop() if free else _Workspace(g, dtype, keep)
        weakref.finalize(self, _Lease._release, free, self.ws)

    @staticmethod
    def _release(free, ws):
        if len(free) < _POOL_SIZE:
            free.append(ws)


def _p(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


class _Kernels:
    def __init__(self, dtype: torch.dtype):
        for kind in ("lstm_forward_strided", "lstm_backward_strided", "draw_canvas_forward", "draw_canvas_backward",
                     "draw_latent_forward", "draw_latent_backward"):
            setattr(self, kind, native.function(kind, dtype))


def _forward(ws: _Workspace, k: _Kernels, x, eps, w_dec, w_enc, w_read, w_z, g: Geometry):
    """The T steps with no graph, x (B, P): (c_T (B, P), mu, log sigma, z (T, B, z_size)); the
    intermediates stay in ``ws`` (every step's when it keeps them)."""
    T, B, he, hd, zs = g.steps, g.batch, g.enc_hidden, g.dec_hidden, g.z_size
    canvas = x.new_zeros(B, g.pixels)
    mu, log_sigma, z = (x.new_empty(T, B, zs) for _ in range(3))
    enc_in, nd, ne, sl = slice(g.col_enc_in, g.col_read), g.n_dec, g.n_enc, ws.slot
    cols, dims = g.canvas_args(x.dtype)

    def canvas_step(t, d, do_write, do_read):
        s, r = sl(t - 1), sl(min(t, T - 1))  # write of step t (slot t - 1), read of step t + 1 (slot t)
        k.draw_canvas_forward(
            _p(x), _p(canvas), _p(ws.sig[r]), _p(d), nd, *cols, do_write, do_read,
            _p(ws.wparams[s]), _p(ws.wv[s]), _p(ws.wfx[s]), _p(ws.wfy[s]), _p(ws.patch[s]),
            _p(ws.rparams[r]), _p(ws.rv[r]), _p(ws.rfx[r]), _p(ws.rfy[r]), _p(ws.r[r]), *dims)

    d_prev, e_prev = ws.d[0], None
    d_prev.copy_(w_dec[-1].expand(B, -1))  # D_0: h^dec_0 = 0, only the bias row
    ws.c_enc[0], ws.c_dec[0] = 0, 0
    canvas_step(0, d_prev, 0, 1)
    for t in range(1, T + 1):
        s, n = sl(t - 1), sl(t)  # slots of step t's own buffers and of the state after it
        torch.addmm(d_prev[:, enc_in], ws.r[s], w_read, out=ws.gates_enc)
        rec = None if e_prev is None else _p(e_prev) + 2 * zs * e_prev.element_size()
        k.lstm_forward_strided(_p(ws.gates_enc), 4 * he, rec, ne, _p(ws.c_enc[s]), _p(ws.act_enc[s]),
                               _p(ws.c_enc[n]), _p(ws.tc_enc[s]), _p(ws.h_enc[s]), he + 1, B, he)
        e_cur = ws.e[t % 2]
        torch.mm(ws.h_enc[s], w_enc, out=e_cur)
        k.draw_latent_forward(_p(e_cur), ne, _p(eps[t - 1]), _p(mu[t - 1]), _p(log_sigma[t - 1]), _p(z[t - 1]), B, zs)
        torch.addmm(d_prev[:, :4 * hd], z[t - 1], w_z, out=ws.gates_dec)
        k.lstm_forward_strided(_p(ws.gates_dec), 4 * hd, None, 0, _p(ws.c_dec[s]), _p(ws.act_dec[s]),
                               _p(ws.c_dec[n]), _p(ws.tc_dec[s]), _p(ws.h_dec[n]), hd + 1, B, hd)
        d_cur = ws.d[t % 2]
        torch.mm(ws.h_dec[n], w_dec, out=d_cur)
        canvas_step(t, d_cur, 1, int(t < T))
        d_prev, e_prev = d_cur, e_cur
    return canvas, mu, log_sigma, z


class DRAWSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, w_dec, w_enc, w_read, w_z, g: Geometry, owner):
        lease = _Lease(owner, g, x.dtype)
        k = _Kernels(x.dtype)
        x, eps = x.reshape(g.batch, g.pixels).contiguous(), eps.contiguous()
        canvas, mu, log_sigma, z = _forward(lease.ws, k, x, eps, w_dec, w_enc, w_read, w_z, g)
        ctx.lease, ctx.g, ctx.k = lease, g, k
        ctx.save_for_backward(x, eps, w_dec, w_enc, w_read, w_z, log_sigma, z)
        return canvas.view(g.batch, g.channels, g.height, g.width), mu, log_sigma, z

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_canvas, d_mu, d_log_sigma, d_z):
        x, eps, w_dec, w_enc, w_read, w_z, log_sigma, z = ctx.saved_tensors
        ws, g, k = ctx.lease.ws, ctx.g, ctx.k
        T, B, he, hd, zs = g.steps, g.batch, g.enc_hidden, g.dec_hidden, g.z_size
        d_mu, d_log_sigma, d_z = d_mu.contiguous(), d_log_sigma.contiguous(), d_z.contiguous()
        nd, ne, item = g.n_dec, g.n_enc, x.element_size()
        enc_in = slice(g.col_enc_in, g.col_read)
        cols, dims = g.canvas_args(x.dtype)
        dcanvas = ws.dcanvas
        dcanvas.copy_(d_canvas.reshape(B, g.pixels))
        x_t = x.view(B, g.channels, g.height, g.width).transpose(2, 3).contiguous()
        ws.dc_enc.zero_(), ws.dc_dec.zero_()
        ws.g_dec[T, :, :g.col_write] = 0  # no step T + 1
        ws.g_dec[0, :, g.col_write:] = 0  # no write at step 0
        ws.g_enc[T - 1, :, 2 * zs:] = 0
        w_dec_h, w_enc_h = w_dec[:hd].t(), w_enc[:he].t()

        def canvas_step(t, do_write, do_read):
            s, r = t - 1, min(t, T - 1)
            k.draw_canvas_backward(
                _p(x), _p(x_t), _p(ws.sig[r]), _p(dcanvas), _p(ws.dr), _p(ws.g_dec[t]), nd, *cols, do_write, do_read,
                _p(ws.wparams[s]), _p(ws.wv[s]), _p(ws.wfx[s]), _p(ws.wfy[s]), _p(ws.patch[s]),
                _p(ws.rparams[r]), _p(ws.rv[r]), _p(ws.rfx[r]), _p(ws.rfy[r]), _p(ws.scratch), *dims)

        for t in range(T, 0, -1):
            s = t - 1
            canvas_step(t, 1, int(t < T))
            torch.mm(ws.g_dec[t], w_dec_h, out=ws.dh_dec)
            k.lstm_backward_strided(_p(ws.dh_dec), _p(ws.dc_dec), _p(ws.act_dec[s]), _p(ws.c_dec[s]),
                                    _p(ws.tc_dec[s]), _p(ws.g_dec[s]), nd, None, 0, _p(ws.dc_dec), B, hd)
            torch.addmm(d_z[s], ws.g_dec[s, :, :4 * hd], w_z.t(), out=ws.dz)
            k.draw_latent_backward(_p(ws.dz), _p(d_mu[s]), _p(d_log_sigma[s]), _p(log_sigma[s]), _p(eps[s]),
                                   _p(ws.g_enc[s]), ne, B, zs)
            torch.mm(ws.g_enc[s], w_enc_h, out=ws.dh_enc)
            k.lstm_backward_strided(_p(ws.dh_enc), _p(ws.dc_enc), _p(ws.act_enc[s]), _p(ws.c_enc[s]),
                                    _p(ws.tc_enc[s]), _p(ws.g_dec[s]) + g.col_enc_in * item, nd,
                                    _p(ws.g_enc[s - 1]) + 2 * zs * item if s else None, ne, _p(ws.dc_enc), B, he)
            torch.mm(ws.g_dec[s, :, enc_in], w_read.t(), out=ws.dr)
        canvas_step(0, 0, 1)
        rows_dec, rows = (T + 1) * B, T * B
        g_dec = ws.g_dec.view(rows_dec, nd)
        dw_dec = ws.h_dec.view(rows_dec, hd + 1).t() @ g_dec
        dw_enc = ws.h_enc.view(rows, he + 1).t() @ ws.g_enc.view(rows, ne)
        dw_read = ws.r.view(rows, -1).t() @ g_dec[:rows, enc_in]
        dw_z = z.view(rows, zs).t() @ g_dec[:rows, :4 * hd]
        return None, None, dw_dec, dw_enc, dw_read, dw_z, None, None


def usable(model, x: torch.Tensor, noise: torch.Tensor) -> bool:
    """Whether a pass of ``model`` on ``x`` can take the sequence path: attention, the native loops,
    and, with gradients on, none wanted for x or the noise."""
    w = model.decoder.weight_ih
    if torch.is_grad_enabled() and (x.requires_grad or noise.requires_grad):
        return False
    return model.config.attention and x.dtype == w.dtype == noise.dtype and native.usable(x, w, noise)


def run(model, x: torch.Tensor, noise: torch.Tensor, fused: dict):
    """(c_T (B, C, H, W), mu, log sigma, z (T, B, z_size)) of ``model`` on ``x`` with noise eps: one
    autograd node when the weights need gradients, else a forward that keeps no intermediates."""
    cfg = model.config
    g = Geometry(cfg.steps, x.shape[0], cfg.channels, cfg.height, cfg.width, cfg.read_n, cfg.write_n,
                 cfg.enc_hidden, cfg.dec_hidden, cfg.z_size)

    def with_bias(w, b):
        return torch.cat([w.t(), b[:, None]], 1).t()

    weights = (with_bias(fused["w_dec"], fused["b_dec"]), with_bias(fused["w_enc"], fused["b_enc"]),
               fused["w_read"], fused["w_z"])
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights):
        return DRAWSequence.apply(x, noise, *weights, g, model)
    lease = _Lease(model, g, x.dtype, keep=False)
    x2 = x.reshape(g.batch, g.pixels).contiguous()
    canvas, mu, log_sigma, z = _forward(lease.ws, _Kernels(x.dtype), x2, noise.contiguous(), *weights, g)
    return canvas.view(x.shape), mu, log_sigma, z
