"""DRAW's whole T-step pass as one autograd node on CPU, with a hand-written backward through time.

``models.draw.DRAW`` records a few dozen autograd nodes per step; at the paper's size (T = 64,
batch 100) a training step is then about half GEMMs and half small operations with their
dispatch and autograd bookkeeping. Here the forward runs the same equations with no graph: per
step four GEMMs (torch, into preallocated buffers) and four native calls for everything between
them (models/fast/native_draw_body.h: write, error image, read, LSTM gates, latent sample). The
backward runs the steps in reverse with the same structure, and forms every weight gradient as
one GEMM over all steps' rows at the end.

The fused weights are those of ``models.fast.fused.weights`` with each bias as a last row (see
``models.fast.fused._Rows``): W_dec ([h^dec, 1] -> decoder recurrence | encoder input | read window |
write window | patch), W_enc ([h^enc, 1] -> mu | log sigma | encoder recurrence), W_read (glimpse
-> encoder gates) and W_z (z -> decoder gates). Outputs: c_T and every step's mu, log sigma and
z; the losses are formed from them outside, by autograd.

Without attention the read is the whole of [x, x^_t] and the write a linear map to every pixel:
W_dec's columns are decoder recurrence | encoder input | canvas increment, the x half of the read
(x W_read_x) is the same every step and is one GEMM per pass (its weight gradient x^T sum_t G_t one
more), and the per-step glimpse is x^_t alone. Between the GEMMs the canvas work is pointwise
(c_t = c_{t-1} + D_t[increment], x^_{t+1} = x - sigmoid(c_t)), done with in-place torch ops into
the workspace; the LSTM and latent loops are the attention version's.

Backward, per step t = T..1 (D_t, E_t are the fused products' outputs, G_D, G_E their gradients):
    G_D[t] = [da^dec_{t+1} | da^enc_{t+1} | d read window_{t+1} | d write window_t | d patch_t]
             (without attention [da^dec_{t+1} | da^enc_{t+1} | dc_t], dc_t the gradient of c_t)
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
from types import SimpleNamespace

import torch

from models.fast import native
from models.fast.products import Products, training_dtype
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
    attention: bool = True

    @property
    def pixels(self) -> int:
        return self.channels * self.height * self.width

    @property
    def read_size(self) -> int:
        """Features of the per-step glimpse r_t: both images' n x n reads, or (no attention) x^_t
        alone, the x half being one product per pass."""
        return 2 * self.channels * self.read_n ** 2 if self.attention else self.pixels

    # Column blocks of D = [h^dec, 1] W_dec and of E = [h^enc, 1] W_enc. Without attention D has no
    # window blocks: col_read = col_write = col_patch is where the canvas increment starts.
    @property
    def col_enc_in(self) -> int:
        return 4 * self.dec_hidden

    @property
    def col_read(self) -> int:
        return self.col_enc_in + 4 * self.enc_hidden

    @property
    def col_write(self) -> int:
        """The first column of step t's own outputs in D_t (the others feed step t + 1)."""
        return self.col_read + 5 * self.attention

    @property
    def col_patch(self) -> int:
        return self.col_write + 5 * self.attention

    @property
    def n_dec(self) -> int:
        return self.col_patch + (self.channels * self.write_n ** 2 if self.attention else self.pixels)

    @property
    def n_enc(self) -> int:
        return 2 * self.z_size + 4 * self.enc_hidden

    def canvas_args(self, dtype: torch.dtype) -> tuple[tuple, tuple]:
        """The column offsets and the sizes-and-window-constants that both canvas kernels take (after
        their rows b0, b1)."""
        H, W, rn, wn = self.height, self.width, self.read_n, self.write_n
        rk, wk = _window_consts(dtype, H, W, rn), _window_consts(dtype, H, W, wn)
        return (self.col_read, self.col_write, self.col_patch), (self.channels, H, W, rn, wn, rk, wk)


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
        self.d, self.e = e(2, B, g.n_dec), e(2, B, g.n_enc)  # D and E of the previous and current step
        self.gates_enc, self.gates_dec = e(B, 4 * he), e(B, 4 * hd)
        self.act_enc, self.act_dec = e(S, B, 4 * he), e(S, B, 4 * hd)
        self.c_enc, self.c_dec = e(S + 1, B, he), e(S + 1, B, hd)
        self.tc_enc, self.tc_dec = e(S, B, he), e(S, B, hd)
        self.sig = e(S, B, g.pixels)  # sigmoid(c_t), t = 0..T-1
        rn, wn, H, W = g.read_n, g.write_n, g.height, g.width
        if g.attention:
            self.rparams, self.rv, self.rfx, self.rfy = e(S, B, 5), e(S, B, 5), e(S, B, rn, W), e(S, B, rn, H)
            self.wparams, self.wv, self.wfx, self.wfy = e(S, B, 5), e(S, B, 5), e(S, B, wn, W), e(S, B, wn, H)
            self.patch = e(S, B, g.channels * wn * wn)
        else:
            self.enc_x = e(B, 4 * he)  # x W_read_x: the x half of every step's read
        if keep:
            self.g_dec, self.g_enc = e(T + 1, B, g.n_dec), e(T, B, g.n_enc)
            self.dr = e(B, g.read_size)
            self.dc_enc, self.dc_dec, self.dh_enc, self.dh_dec = e(B, he), e(B, hd), e(B, he), e(B, hd)
            self.dz = e(B, zs)
            if g.attention:
                self.dcanvas, self.scratch = e(B, g.pixels), e(B * (10 + max(rn, wn) * (H + W)))
            else:
                self.dsig = e(B, g.pixels)  # sigmoid'(c_t) = s_t (1 - s_t)
        # Per-slot addresses and views, made once: the step loops then index lists (building a view
        # and asking its address costs microseconds, and a pass makes thousands).
        self.p = SimpleNamespace(**{k: slot_pointers(v) for k, v in vars(self).items() if torch.is_tensor(v)})
        self.v = SimpleNamespace(**{k: list(getattr(self, k).unbind(0))
                                    for k in ("h_dec", "h_enc", "r", "d", "e", "sig")})
        enc_in, own = slice(g.col_enc_in, g.col_read), slice(g.col_patch, None)
        self.d_rec, self.d_enc_in = [d[:, :4 * hd] for d in self.v.d], [d[:, enc_in] for d in self.v.d]
        self.d_write = [d[:, own] for d in self.v.d]  # D_t's own block (no attention: the canvas increment)
        if keep:
            self.v.g_dec, self.v.g_enc = list(self.g_dec.unbind(0)), list(self.g_enc.unbind(0))
            self.g_dec_rec = [t[:, :4 * hd] for t in self.v.g_dec]
            self.g_dec_enc_in = [t[:, enc_in] for t in self.v.g_dec]
            self.g_write = [t[:, own] for t in self.v.g_dec]
            self.g_dec_late = [t[:, g.col_read:] for t in self.v.g_dec]  # the blocks step t itself completes
        self.operands: _Operands | None = None


class _Operands:
    """The left operands of a training pass's matrix products and weight gradients. With the pass's
    own precision these are the workspace's buffers; with another (models/fast/products.py), copies
    in that dtype, each row cast once when it is complete: [h^dec_t, 1], [h^enc_t, 1], z_t, the
    glimpse x^_t (without attention; with it the glimpse's product stays in the pass's dtype: k = 8
    gains nothing), and the rows of G_D and G_E. Unwritten copies hold NaN, so a row the pass forgot
    to cast shows in every result."""

    def __init__(self, ws: _Workspace, g: Geometry, dtype: torch.dtype | None):
        T, B, hd, he, zs = g.steps, g.batch, g.dec_hidden, g.enc_hidden, g.z_size
        if dtype is None:
            self.h_dec, self.h_enc, self.r, self.g_dec, self.g_enc = ws.h_dec, ws.h_enc, ws.r, ws.g_dec, ws.g_enc
            self.z = None  # the pass's own z (see rows)
        else:
            nan = lambda *shape: torch.full(shape, float("nan"), dtype=dtype)  # noqa: E731
            self.h_dec, self.h_enc, self.z = nan(T + 1, B, hd + 1), nan(T, B, he + 1), nan(T, B, zs)
            self.h_dec[0] = ws.h_dec[0]  # h^dec_0 = 0 and the bias column
            self.r = None if g.attention else nan(T, B, g.read_size)
            self.g_dec, self.g_enc = nan(T + 1, B, g.n_dec), nan(T, B, g.n_enc)
            self.g_dec[T, :, :g.col_read] = 0  # no step T + 1 (the pass's own rows are zeroed likewise)
        enc_in = slice(g.col_enc_in, g.col_read)
        v = lambda t: list(t.unbind(0)) if t is not None else None  # noqa: E731
        self.v = SimpleNamespace(h_dec=v(self.h_dec), h_enc=v(self.h_enc), r=v(self.r), g_enc=v(self.g_enc),
                                 g_dec=v(self.g_dec))
        self.v.g_dec_rec = [t[:, :4 * hd] for t in self.v.g_dec]
        self.v.g_dec_enc_in = [t[:, enc_in] for t in self.v.g_dec]
        self.v.g_dec_late = [t[:, g.col_read:] for t in self.v.g_dec]

    def rows(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """z's operand buffer and its rows for this pass (with the pass's precision, z itself)."""
        zl = z if self.z is None else self.z
        return zl, list(zl.unbind(0))


def slot_pointers(t: torch.Tensor) -> list[int]:
    """The address of every t[i] (a 1-D tensor: its own address)."""
    if t.dim() < 2:
        return [t.data_ptr()]
    step = t.stride(0) * t.element_size()
    return [t.data_ptr() + i * step for i in range(t.shape[0])]


_POOLS: "weakref.WeakKeyDictionary[object, dict]" = weakref.WeakKeyDictionary()  # model -> {key: [free workspaces]}
_POOL_SIZE = 2


class _Lease:
    """A workspace taken from the owner's pool; it goes back when the lease (held by the graph) dies."""

    def __init__(self, owner, g: Geometry, dtype: torch.dtype, keep: bool = True,
                 operand_dtype: torch.dtype | None = None):
        pool = _POOLS.setdefault(owner, {})
        key = (g, dtype, keep, operand_dtype)
        if key not in pool and len(pool) >= 4:
            pool.clear()
        free = pool.setdefault(key, [])
        self.ws = free.pop() if free else _Workspace(g, dtype, keep)
        if keep and self.ws.operands is None:
            self.ws.operands = _Operands(self.ws, g, operand_dtype)
        weakref.finalize(self, _Lease._release, free, self.ws)

    @staticmethod
    def _release(free, ws):
        if len(free) < _POOL_SIZE:
            free.append(ws)


class _Kernels:
    """The loops of a pass for one dtype: ``checked[kind]`` validates a pass's buffers against the
    declared signatures once; the step loops call the bare functions (attributes named by kind) with
    addresses into those buffers."""

    KINDS = ("lstm_forward_strided", "lstm_backward_strided", "draw_canvas_forward", "draw_canvas_backward",
             "draw_latent_forward", "draw_latent_backward")

    def __init__(self, dtype: torch.dtype):
        self.checked = {kind: native.kernel(kind, dtype) for kind in self.KINDS}
        for kind, checked in self.checked.items():
            setattr(self, kind, checked.unchecked)


def _check_forward(ws: _Workspace, k: _Kernels, x, eps, canvas, mu, log_sigma, z, g: Geometry, threads: int):
    """Check the first step's calls of _forward with tensors in place of addresses. Every other step
    passes the same integers and other slots of the same buffers (the slot address lists end with
    their buffers, so a slot past the end raises IndexError)."""
    B, he, hd, zs, n = g.batch, g.enc_hidden, g.dec_hidden, g.z_size, ws.slot(1)
    if g.attention:  # without attention the canvas step is torch ops, which check their own shapes
        cols, dims = g.canvas_args(x.dtype)
        k.checked["draw_canvas_forward"].check(
            x, canvas, ws.sig[0], ws.d[0], g.n_dec, *cols, 1, 1, ws.wparams[0], ws.wv[0], ws.wfx[0], ws.wfy[0],
            ws.patch[0], ws.rparams[0], ws.rv[0], ws.rfx[0], ws.rfy[0], ws.r[0], 0, B, *dims, threads)
    k.checked["lstm_forward_strided"].check(
        ws.gates_enc, 4 * he, ws.e[0][:, 2 * zs:], g.n_enc, ws.c_enc[0], ws.act_enc[0], ws.c_enc[n], ws.tc_enc[0],
        ws.h_enc[0], he + 1, B, he, threads)
    k.checked["draw_latent_forward"].check(ws.e[1], g.n_enc, eps[0], mu[0], log_sigma[0], z[0], B, zs)
    k.checked["lstm_forward_strided"].check(
        ws.gates_dec, 4 * hd, None, 0, ws.c_dec[0], ws.act_dec[0], ws.c_dec[n], ws.tc_dec[0], ws.h_dec[n], hd + 1,
        B, hd, threads)


def _check_backward(ws: _Workspace, k: _Kernels, x, x_t, eps, d_mu, d_log_sigma, log_sigma, g: Geometry,
                    threads: int):
    """As _check_forward, for the calls of one step of the backward."""
    B, he, hd, zs = g.batch, g.enc_hidden, g.dec_hidden, g.z_size
    if g.attention:
        cols, dims = g.canvas_args(x.dtype)
        k.checked["draw_canvas_backward"].check(
            x, x_t, ws.sig[0], ws.dcanvas, ws.dr, ws.g_dec[1], g.n_dec, *cols, 1, 1, ws.wparams[0], ws.wv[0],
            ws.wfx[0], ws.wfy[0], ws.patch[0], ws.rparams[0], ws.rv[0], ws.rfx[0], ws.rfy[0], ws.scratch, 0, B,
            *dims, threads)
    k.checked["lstm_backward_strided"].check(
        ws.dh_dec, ws.dc_dec, ws.act_dec[0], ws.c_dec[0], ws.tc_dec[0], ws.g_dec[0], g.n_dec, None, 0, ws.dc_dec, B,
        hd, threads)
    k.checked["draw_latent_backward"].check(ws.dz, d_mu[0], d_log_sigma[0], log_sigma[0], eps[0], ws.g_enc[0],
                                            g.n_enc, B, zs)
    k.checked["lstm_backward_strided"].check(
        ws.dh_enc, ws.dc_enc, ws.act_enc[0], ws.c_enc[0], ws.tc_enc[0], ws.g_dec[0][:, g.col_enc_in:], g.n_dec,
        ws.g_enc[0][:, 2 * zs:], g.n_enc, ws.dc_enc, B, he, threads)


def _forward(ws: _Workspace, k: _Kernels, x, eps, w_dec, w_enc, w_read, w_z, g: Geometry,
             pr: Products | None = None, low: tuple | None = None):
    """The T steps with no graph, x (B, P): (c_T (B, P), mu, log sigma, z (T, B, z_size)); the
    intermediates stay in ``ws`` (every step's when it keeps them). ``pr`` and ``low`` (the weights
    W_dec, W_enc, W_read, W_z in the operand dtype): the products of a training pass in another
    precision, their left operands cast into ``ws.operands``."""
    T, B, he, hd, zs = g.steps, g.batch, g.enc_hidden, g.dec_hidden, g.z_size
    canvas = x.new_zeros(B, g.pixels)
    mu, log_sigma, z = (x.new_empty(T, B, zs) for _ in range(3))
    nd, ne, sl, P, V = g.n_dec, g.n_enc, ws.slot, ws.p, ws.v
    pr = pr or Products(None)
    lw_dec, lw_enc, lw_read, lw_z = low or (w_dec, w_enc, w_read, w_z)
    if pr.dtype is None:  # the products read the workspace's own rows (two slots when it keeps none)
        L, z_rows = V, list(z.unbind(0))
    else:
        L, z_rows = ws.operands.v, ws.operands.rows(z)[1]
    rec_offset = 2 * zs * x.element_size()
    eps_p, mu_p, ls_p, z_p = (slot_pointers(t) for t in (eps, mu, log_sigma, z))
    ga, gd = ws.gates_enc, ws.gates_dec
    ga_p, gd_p = ga.data_ptr(), gd.data_ptr()

    threads = torch.get_num_threads()  # the native loops split the batch over torch's threads (OpenMP)
    _check_forward(ws, k, x, eps, canvas, mu, log_sigma, z, g, threads)

    if g.attention:
        cols, dims = g.canvas_args(x.dtype)
        x_p, canvas_p, tail = x.data_ptr(), canvas.data_ptr(), (0, B, *dims, threads)

        def canvas_step(t, d, do_write, do_read):
            s, r = sl(t - 1), sl(min(t, T - 1))  # write of step t (slot t - 1), read of step t + 1 (slot t)
            k.draw_canvas_forward(
                x_p, canvas_p, P.sig[r], P.d[d], nd, *cols, do_write, do_read, P.wparams[s], P.wv[s], P.wfx[s],
                P.wfy[s], P.patch[s], P.rparams[r], P.rv[r], P.rfx[r], P.rfy[r], P.r[r], *tail)

        def encoder_gates(prev, s):  # a^enc_t - E_{t-1}'s recurrence block
            torch.addmm(ws.d_enc_in[prev], V.r[s], w_read, out=ga)
    else:
        w_read_x = w_read[:g.pixels]
        enc_x = torch.mm(x, w_read_x, out=ws.enc_x)

        def canvas_step(t, d, do_write, do_read):
            r = sl(min(t, T - 1))
            if do_write:  # c_t = c_{t-1} + D_t's increment block
                canvas.add_(ws.d_write[d])
            if do_read:  # x^_{t+1} = x - sigmoid(c_t), kept as r_{t+1}
                torch.sigmoid(canvas, out=V.sig[r])
                torch.sub(x, V.sig[r], out=V.r[r])

        lw_read_h = lw_read[g.pixels:]

        def encoder_gates(prev, s):
            torch.add(ws.d_enc_in[prev], enc_x, out=ga)
            pr.cast(L.r[s], V.r[s])
            pr.mm(L.r[s], lw_read_h, ga, accumulate=True)

    V.d[0].copy_(w_dec[-1].expand(B, -1))  # D_0: h^dec_0 = 0, only the bias row
    ws.c_enc[0], ws.c_dec[0] = 0, 0
    canvas_step(0, 0, 0, 1)
    for t in range(1, T + 1):
        s, n = sl(t - 1), sl(t)  # slots of step t's own buffers and of the state after it
        prev, cur = (t - 1) % 2, t % 2  # D and E of step t - 1, and of step t
        encoder_gates(prev, s)
        k.lstm_forward_strided(ga_p, 4 * he, P.e[prev] + rec_offset if t > 1 else None, ne, P.c_enc[s],
                               P.act_enc[s], P.c_enc[n], P.tc_enc[s], P.h_enc[s], he + 1, B, he, threads)
        pr.cast(L.h_enc[s], V.h_enc[s])
        pr.mm(L.h_enc[s], lw_enc, V.e[cur])
        k.draw_latent_forward(P.e[cur], ne, eps_p[t - 1], mu_p[t - 1], ls_p[t - 1], z_p[t - 1], B, zs)
        pr.cast(z_rows[t - 1], z[t - 1])
        pr.mm(z_rows[t - 1], lw_z, gd, add=ws.d_rec[prev])
        k.lstm_forward_strided(gd_p, 4 * hd, None, 0, P.c_dec[s], P.act_dec[s], P.c_dec[n], P.tc_dec[s],
                               P.h_dec[n], hd + 1, B, hd, threads)
        pr.cast(L.h_dec[n], V.h_dec[n])
        pr.mm(L.h_dec[n], lw_dec, V.d[cur])
        canvas_step(t, cur, 1, int(t < T))
    return canvas, mu, log_sigma, z


class DRAWSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, w_dec, w_enc, w_read, w_z, g: Geometry, owner):
        pr = Products(training_dtype())
        lease = _Lease(owner, g, x.dtype, operand_dtype=pr.dtype)
        k = _Kernels(x.dtype)
        x, eps = x.reshape(g.batch, g.pixels).contiguous(), eps.contiguous()
        low = tuple(pr.weight(w) for w in (w_dec, w_enc, w_read, w_z))
        canvas, mu, log_sigma, z = _forward(lease.ws, k, x, eps, w_dec, w_enc, w_read, w_z, g, pr, low)
        ctx.lease, ctx.g, ctx.k, ctx.pr = lease, g, k, pr
        ctx.low = low if pr.dtype is not None else None  # else the saved weights themselves
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
        ws.dc_enc.zero_(), ws.dc_dec.zero_()
        ws.g_dec[T, :, :g.col_write] = 0  # no step T + 1
        ws.g_dec[0, :, g.col_write:] = 0  # no write at step 0
        ws.g_enc[T - 1, :, 2 * zs:] = 0
        pr, (lw_dec, lw_enc, lw_read, lw_z) = ctx.pr, ctx.low or (w_dec, w_enc, w_read, w_z)
        lw_read_h = lw_read if g.attention else lw_read[g.pixels:]  # the per-step glimpse's rows
        w_dec_h, w_enc_h, w_z_t, w_read_t = lw_dec[:hd].t(), lw_enc[:he].t(), lw_z.t(), lw_read_h.t()
        P, V, O = ws.p, ws.v, ws.operands
        L = O.v
        dr_p = ws.dr.data_ptr()
        dh_dec_p, dc_dec_p, dh_enc_p, dc_enc_p, dz_p = (t.data_ptr() for t in (ws.dh_dec, ws.dc_dec, ws.dh_enc,
                                                                                 ws.dc_enc, ws.dz))
        dmu_p, dls_p, ls_p, eps_p = (slot_pointers(t) for t in (d_mu, d_log_sigma, log_sigma, eps))
        enc_in_offset, rec_offset = g.col_enc_in * item, 2 * zs * item
        x_t = x.view(B, g.channels, g.height, g.width).transpose(2, 3).contiguous() if g.attention else None

        threads = torch.get_num_threads()
        _check_backward(ws, k, x, x_t, eps, d_mu, d_log_sigma, log_sigma, g, threads)

        if g.attention:
            ws.dcanvas.copy_(d_canvas.reshape(B, g.pixels))
            cols, dims = g.canvas_args(x.dtype)
            fixed, tail = (x.data_ptr(), x_t.data_ptr()), (0, B, *dims, threads)
            dcanvas_p, scratch_p = ws.dcanvas.data_ptr(), ws.scratch.data_ptr()

            def canvas_step(t, do_write, do_read):
                s, r = t - 1, min(t, T - 1)
                k.draw_canvas_backward(
                    *fixed, P.sig[r], dcanvas_p, dr_p, P.g_dec[t], nd, *cols, do_write, do_read, P.wparams[s],
                    P.wv[s], P.wfx[s], P.wfy[s], P.patch[s], P.rparams[r], P.rv[r], P.rfx[r], P.rfy[r], scratch_p,
                    *tail)
        else:
            ws.g_write[T].copy_(d_canvas.reshape(B, g.pixels))  # the increment of step T gets dc_T
            dsig = ws.dsig

            def canvas_step(t, do_write, do_read):
                # D_t's increment block is the gradient of c_t: that of c_{t+1} (D_{t+1}'s block) minus
                # the read's share, dr_{t+1} s_t (1 - s_t) (x^_{t+1} = x - sigmoid(c_t)). c_0 is fixed.
                if not 0 < t < T:
                    return
                s = V.sig[t]
                torch.mul(s, s, out=dsig)
                torch.sub(s, dsig, out=dsig)
                torch.addcmul(ws.g_write[t + 1], ws.dr, dsig, value=-1, out=ws.g_write[t])

        # Each row of G_D and G_E is cast into its operand copy as it is complete: G_D[t]'s own blocks
        # after step t's canvas backward, its recurrence and encoder-input blocks (step t + 1's) as the
        # LSTMs' backward writes them in the step before; G_E[t] after the latent backward.
        for t in range(T, 0, -1):
            s = t - 1
            canvas_step(t, 1, int(t < T))
            pr.cast(L.g_dec_late[t], ws.g_dec_late[t])
            pr.mm(L.g_dec[t], w_dec_h, ws.dh_dec)
            k.lstm_backward_strided(dh_dec_p, dc_dec_p, P.act_dec[s], P.c_dec[s], P.tc_dec[s], P.g_dec[s], nd, None, 0,
                                    dc_dec_p, B, hd, threads)
            pr.cast(L.g_dec_rec[s], ws.g_dec_rec[s])
            pr.mm(L.g_dec_rec[s], w_z_t, ws.dz, add=d_z[s])
            k.draw_latent_backward(dz_p, dmu_p[s], dls_p[s], ls_p[s], eps_p[s], P.g_enc[s], ne, B, zs)
            pr.cast(L.g_enc[s], V.g_enc[s])
            pr.mm(L.g_enc[s], w_enc_h, ws.dh_enc)
            k.lstm_backward_strided(dh_enc_p, dc_enc_p, P.act_enc[s], P.c_enc[s], P.tc_enc[s],
                                    P.g_dec[s] + enc_in_offset, nd, P.g_enc[s - 1] + rec_offset if s else None, ne,
                                    dc_enc_p, B, he, threads)
            pr.cast(L.g_dec_enc_in[s], ws.g_dec_enc_in[s])
            pr.mm(L.g_dec_enc_in[s], w_read_t, ws.dr)
        canvas_step(0, 0, 1)
        pr.cast(L.g_dec_late[0], ws.g_dec_late[0])
        rows_dec, rows = (T + 1) * B, T * B
        g_dec, lg_dec, z_op = ws.g_dec.view(rows_dec, nd), O.g_dec.view(rows_dec, nd), O.rows(z)[0]
        dw_dec = pr.gram(O.h_dec.view(rows_dec, hd + 1), lg_dec, x.dtype)
        dw_enc = pr.gram(O.h_enc.view(rows, he + 1), O.g_enc.view(rows, ne), x.dtype)
        dw_z = pr.gram(z_op.view(rows, zs), lg_dec[:rows, :4 * hd], x.dtype)
        if g.attention:
            dw_read = ws.r.view(rows, -1).t() @ g_dec[:rows, enc_in]
        else:  # the x half: x^T sum_t G_t (x is every step's); the x^ half over all steps' rows. Formed
            # transposed, in the layout of encoder.weight_ih (W_read is a transposed view of its first
            # columns), so autograd copies it back row by row instead of transposing 1.6M elements.
            dw_read_t = w_read.new_empty(w_read.shape[::-1])
            torch.mm(ws.g_dec[:T, :, enc_in].sum(0).t(), x, out=dw_read_t[:, :g.pixels])
            pr.gram(lg_dec[:rows, enc_in], O.r.view(rows, -1), x.dtype, out=dw_read_t[:, g.pixels:])
            dw_read = dw_read_t.t()
        return None, None, dw_dec, dw_enc, dw_read, dw_z, None, None


_switch = native.Switch()
disabled = _switch.disabled  # within this block DRAW takes its per-step path (the native loops stay on)


def usable(model, x: torch.Tensor, noise: torch.Tensor) -> bool:
    """Whether a pass of ``model`` on ``x`` can take the sequence path (with or without attention):
    not disabled(), zero initial states, the native loops, and, with gradients on, none wanted for
    x or the noise."""
    w = model.decoder.weight_ih
    if not _switch.on or model.config.initial_state != "zero":
        return False
    if torch.is_grad_enabled() and (x.requires_grad or noise.requires_grad):
        return False
    return x.dtype == w.dtype == noise.dtype and native.usable(x, w, noise)


def run(model, x: torch.Tensor, noise: torch.Tensor, fused: dict):
    """(c_T (B, C, H, W), mu, log sigma, z (T, B, z_size)) of ``model`` on ``x`` with noise eps: one
    autograd node when the weights need gradients, else a forward that keeps no intermediates."""
    cfg = model.config
    g = Geometry(cfg.steps, x.shape[0], cfg.channels, cfg.height, cfg.width, cfg.read_n, cfg.write_n,
                 cfg.enc_hidden, cfg.dec_hidden, cfg.z_size, cfg.attention)

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
