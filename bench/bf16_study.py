"""bfloat16 matrix products for DRAW on this CPU: what they would buy in speed and cost in fidelity.

    python -m bench.bf16_study [--part gemm step train] [--model noattn attn] [--rounds 9] [--batch 64]
                               [--train-steps 300] [--data auto|mnist|synthetic] [--json out.json]

Part ``gemm``: every matrix product of one training step of DRAW on the sequence path
(models/fast/draw_sequence.py; default size: the paper's, T = 64, LSTMs 256, z 100, 28x28, read 2x2,
write 5x5, batch 64), with the operands' shapes and strides of ``_forward`` and ``DRAWSequence.backward``
(views into a real workspace; the weights laid out as ``draw_sequence.run`` lays them out):

- per product, round by round: float32 ``torch.mm`` (``addmm`` where the path adds into its output)
  against the bfloat16 product of the same views (bf16 inputs and output: torch has no bf16 x bf16
  -> float32 product on CPU), and the conversions a bf16 option would add per call: the activation
  operand to bf16, the output back to float32 (plus the added term where the path accumulates);
  the per-round ratio float32 / bf16 (speed-up) with and without those conversions, medians and IQRs.
  The relative error (Frobenius) against float64 of the float32 product, of the bf16 product and
  of the exact product of the bf16-rounded inputs (what a bf16 kernel with a float32 output gives).
- the floors: all products of a step in the path's order and counts, float32 / bf16 bare / bf16 with
  every conversion (per-call casts of the activation operand into a bf16 copy of its workspace buffer
  and of the output back, weights cast once per step; the weight-gradient products read the bf16
  copies of every step's rows those casts made); with the float32 training step (sequence path, Adam)
  timed in the same rounds:
  its GEMM fraction f = floor / step and the best step speed-up 1 / ((1 - f) + f / s) (Amdahl, s the
  floor's speed-up), per round, median and IQR.

Part ``step``: the option itself (``bench run --training-products bfloat16``, models/fast/products.py)
at the paper's size: one Adam training step on the sequence path with float32 products against the
same step with bf16 operands, the two alternated round by round (order reversed every other round),
CPU time; the ratio float32 / bf16 per round, median and IQR.

Part ``train``: a small DRAW (default T = 16, LSTMs 128, z 20, batch 64, Adam 1e-3, clip 10) trained
for ``--train-steps`` steps on the same batches (binarized MNIST from datasets.torch_data, or synthetic
binary images) and the same noise by several variants, one step each in turn (the order reversed
every other step):

- ``f32_step``: float32 on the per-step path (``draw_sequence.disabled()``): the reference;
- ``bf16_autocast_step``: the same with ``torch.autocast("cpu", bfloat16)`` around the forward. That
  makes the forward products bf16 (the fused weights cast again at every call; with attention also
  the read and write batched products, whose gradients are then bf16 too), while the gradient
  products of the fused per-step nodes (models/fast/fused.py) stay float32; the LSTM gates and
  window parameters arrive in bf16, so those steps leave the native loops for torch's;
- ``f32_sequence``: float32 on the sequence path (the default): the reference through other code;
- ``bf16_gemm_sequence``: the sequence path with every matrix product (forward, input and weight
  gradients) computed in bf16 and converted back (``Bf16Gemms``, a TorchDispatchMode: an emulation
  of a bf16 GEMM option, its time is not that option's);
- ``bf16_products_sequence``: the sequence path with the option itself (models/fast/products.py,
  ``bench run --training-products bfloat16``): bf16 operand copies, float32 everything else; its
  time is the option's;
- ``f32_step_seed1``: the reference from another initialisation and noise: the scale of differences
  that do not matter.

Reported: the losses in windows of steps, the paired differences from the reference, the float32
loss of each trained model on held-out images, and each step's wall (and CPU) time over the
reference's in the same step, medians with IQR. Every timing here is one thread (torch.set_num_threads(1)).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from bench import records
from bench.stats import median_iqr
from datasets.fileio import atomic_write_bytes
from models.draw import DRAW, DRAWConfig
from models.fast import draw_sequence, fused, native, products

BF16 = torch.bfloat16
MODELS = {"noattn": False, "attn": True}
VARIANTS = ("f32_step", "bf16_autocast_step", "f32_sequence", "bf16_gemm_sequence", "bf16_products_sequence",
            "f32_step_seed1")
REFERENCE = "f32_step"
BF16_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "avx512_fp16")


def cpu_info() -> dict:
    """The CPU's model, its bf16-relevant flags, and whether oneDNN takes bf16 on it."""
    from models.fast.native_cpu import cpu_flags

    flags = cpu_flags()
    return {"cpu_model": records.machine_info()["cpu_model"], "flags": [f for f in BF16_FLAGS if f in flags],
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "torch": torch.__version__}


def _rel_err(approx: torch.Tensor, ref: torch.Tensor) -> float:
    return float((approx.double() - ref).norm() / ref.norm().clamp_min(1e-300))


# ---------------------------------------------------------------- part 1: the products of one step

@dataclass
class Gemm:
    """One matrix product of a training step: float32 ``a @ b`` (+ ``c``) into ``out`` as the path
    does it, its bf16 version on the same views of bf16 copies, and the conversions around it."""

    name: str
    phase: str  # "forward", "input-grad", "weight-grad"
    count: int  # calls per training step
    a: torch.Tensor
    b: torch.Tensor
    out: torch.Tensor
    a_is_weight: bool = False
    b_is_weight: bool = False
    c: torch.Tensor | None = None  # the added term (addmm); out itself for an in-place addmm_
    weight: str | None = None  # the weight among the step's bf16 copies that b views
    # In a whole step an operand needs no cast of its own when the per-step products' casts already
    # fill a bf16 copy of its buffer (every step's rows): the weight-gradient products' operands.
    reuse_a: bool = False
    reuse_b: bool = False
    a16: torch.Tensor = field(init=False)
    b16: torch.Tensor = field(init=False)
    out16: torch.Tensor = field(init=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.a.shape[0], self.a.shape[1], self.b.shape[1]

    @property
    def flops(self) -> int:
        m, k, n = self.shape
        return 2 * m * k * n

    def f32(self):
        if self.c is None:
            torch.mm(self.a, self.b, out=self.out)
        elif self.c is self.out:
            self.out.addmm_(self.a, self.b)
        else:
            torch.addmm(self.c, self.a, self.b, out=self.out)

    def bf16(self):
        torch.mm(self.a16, self.b16, out=self.out16)

    def cast_in(self, in_step: bool = False):
        """The operands that are not weights to bf16 (weights are cast once per step, ``floors``);
        ``in_step``: not those whose bf16 copy the per-step products' casts have made."""
        if not (self.a_is_weight or (in_step and self.reuse_a)):
            self.a16.copy_(self.a)
        if not (self.b_is_weight or (in_step and self.reuse_b)):
            self.b16.copy_(self.b)

    def cast_out(self):
        if self.c is None:
            self.out.copy_(self.out16)
        elif self.c is self.out:
            self.out.add_(self.out16)
        else:
            torch.add(self.c, self.out16, out=self.out)


def _root(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _same_view(t: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """t's view (shape, strides, offset into its root tensor) taken of ``base``, a tensor like that root."""
    assert base.is_contiguous() and _root(t).is_contiguous() and base.shape == _root(t).shape
    return base.as_strided(t.shape, t.stride(), t.storage_offset() - _root(t).storage_offset())


def geometry(cfg: DRAWConfig, batch: int) -> draw_sequence.Geometry:
    return draw_sequence.Geometry(cfg.steps, batch, cfg.channels, cfg.height, cfg.width, cfg.read_n, cfg.write_n,
                                  cfg.enc_hidden, cfg.dec_hidden, cfg.z_size, cfg.attention)


def step_weights(model: DRAW) -> dict[str, torch.Tensor]:
    """The four fused weights (biases as last rows) as ``draw_sequence.run`` passes them, detached."""
    with torch.no_grad():
        p = fused.weights(model)
        bias = lambda w, b: torch.cat([w.t(), b[:, None]], 1).t()  # noqa: E731 (draw_sequence.run's with_bias)
        return {"w_dec": bias(p["w_dec"], p["b_dec"]), "w_enc": bias(p["w_enc"], p["b_enc"]),
                "w_read": p["w_read"], "w_z": p["w_z"]}


def draw_gemms(model: DRAW, batch: int, seed: int = 0) -> tuple[list[Gemm], dict, dict]:
    """Every product of one training step of ``model`` on the sequence path: (gemms in the path's
    order, the float32 weights' storage, their bf16 copies' storage). The operands are views into a
    real workspace (``draw_sequence._Workspace``) filled with values of the right kind: LSTM outputs
    in (-1, 1) with the ones column, binary x, x^ in (-1, 1), normal z and gradients."""
    g = geometry(model.config, batch)
    T, B, he, hd, zs, P = g.steps, g.batch, g.enc_hidden, g.dec_hidden, g.z_size, g.pixels
    gen = torch.Generator().manual_seed(seed)
    ws = draw_sequence._Workspace(g, torch.float32, keep=True)
    for buf in (ws.h_dec, ws.h_enc, ws.r):
        buf.copy_(torch.rand(buf.shape, generator=gen) * 2 - 1)
    ws.h_dec[:, :, -1] = 1
    ws.h_enc[:, :, -1] = 1
    for buf in (ws.g_dec, ws.g_enc, ws.d, ws.e):
        buf.copy_(torch.randn(buf.shape, generator=gen))
    x = (torch.rand(B, P, generator=gen) < 0.3).float()
    z, d_z = torch.randn(T, B, zs, generator=gen), torch.randn(T, B, zs, generator=gen)
    w = step_weights(model)
    bases = {k: _root(v).detach().clone() for k, v in w.items()}  # the weights' storage, this study's own
    w = {k: _same_view(v, bases[k]) for k, v in w.items()}
    bases16 = {k: v.to(BF16) for k, v in bases.items()}  # cast once per step (``floors``)
    copies16: dict[int, torch.Tensor] = {}  # one bf16 copy of each activation buffer (a bf16 workspace)

    def like16(t: torch.Tensor) -> torch.Tensor:
        root = _root(t)
        if id(root) not in copies16:
            copies16[id(root)] = root.to(BF16, memory_format=torch.contiguous_format)
        return _same_view(t, copies16[id(root)])

    new = lambda m, n: torch.empty(m, n)  # noqa: E731
    s, n, prev, cur = 0, 1, 0, 1  # slots of step t = 1's buffers (any step's are alike)
    V, rows, rows_dec, nd, ne = ws.v, T * B, (T + 1) * B, g.n_dec, g.n_enc
    enc_in = slice(g.col_enc_in, g.col_read)
    w_read_h = w["w_read"] if g.attention else w["w_read"][P:]
    gemms: list[Gemm] = []

    def add(name, phase, count, a, b, out, weight=None, c=None):
        gemms.append(Gemm(name, phase, count, a, b, out, b_is_weight=weight is not None, c=c, weight=weight))

    # _forward
    if not g.attention:
        add("x W_read_x (once)", "forward", 1, x, w["w_read"][:P], ws.enc_x, "w_read")
        add("x^_t W_read_h", "forward", T, V.r[s], w_read_h, ws.gates_enc, "w_read", c=ws.gates_enc)
    else:
        add("r_t W_read", "forward", T, V.r[s], w["w_read"], ws.gates_enc, "w_read", c=ws.d_enc_in[prev])
    add("[h_enc,1] W_enc", "forward", T, V.h_enc[s], w["w_enc"], V.e[cur], "w_enc")
    add("z_t W_z", "forward", T, z[0], w["w_z"], ws.gates_dec, "w_z", c=ws.d_rec[prev])
    add("[h_dec,1] W_dec", "forward", T, V.h_dec[n], w["w_dec"], V.d[cur], "w_dec")
    # DRAWSequence.backward, per step
    add("G_D W_dec_h^T", "input-grad", T, V.g_dec[1], w["w_dec"][:hd].t(), ws.dh_dec, "w_dec")
    add("G_D,rec W_z^T", "input-grad", T, ws.g_dec_rec[s], w["w_z"].t(), ws.dz, "w_z", c=d_z[s])
    add("G_E W_enc_h^T", "input-grad", T, V.g_enc[s], w["w_enc"][:he].t(), ws.dh_enc, "w_enc")
    add("G_D,enc W_read^T", "input-grad", T, ws.g_dec_enc_in[s], w_read_h.t(), ws.dr, "w_read")
    # and the weight gradients over all steps' rows
    g_dec = ws.g_dec.view(rows_dec, nd)
    add("dW_dec = H_dec^T G_D", "weight-grad", 1, ws.h_dec.view(rows_dec, hd + 1).t(), g_dec, new(hd + 1, nd))
    add("dW_enc = H_enc^T G_E", "weight-grad", 1, ws.h_enc.view(rows, he + 1).t(), ws.g_enc.view(rows, ne),
        new(he + 1, ne))
    add("dW_z = Z^T G_D,rec", "weight-grad", 1, z.view(rows, zs).t(), g_dec[:rows, :4 * hd], new(zs, 4 * hd))
    if g.attention:
        add("dW_read = R^T G_D,enc", "weight-grad", 1, ws.r.view(rows, -1).t(), g_dec[:rows, enc_in],
            new(g.read_size, 4 * he))
    else:
        dw_read_t = torch.empty(4 * he, 2 * P)
        sum_g = ws.g_dec[:T, :, enc_in].sum(0)
        add("dW_read_x^T = (sum_t G)^T x", "weight-grad", 1, sum_g.t(), x, dw_read_t[:, :P])
        add("dW_read_h^T = G_D,enc^T X^", "weight-grad", 1, g_dec[:rows, enc_in].t(), ws.r.view(rows, -1),
            dw_read_t[:, P:])
    cast_per_step = {id(_root(gm.a)) for gm in gemms if gm.phase != "weight-grad"}
    for gm in gemms:
        if gm.phase == "weight-grad":
            gm.reuse_a, gm.reuse_b = id(_root(gm.a)) in cast_per_step, id(_root(gm.b)) in cast_per_step
        gm.a16 = like16(gm.a)
        gm.b16 = _same_view(gm.b, bases16[gm.weight]) if gm.b_is_weight else like16(gm.b)
        gm.out16 = torch.empty(gm.out.shape, dtype=BF16)
    return gemms, bases, bases16


def gemm_errors(gm: Gemm) -> dict:
    """Relative (Frobenius) errors of a @ b against float64: the float32 product, the bf16 product
    (bf16 output), and the exact product of the bf16-rounded inputs (a bf16 kernel's float32 output)."""
    ref = gm.a.double() @ gm.b.double()
    gm.bf16()
    return {"f32": _rel_err(gm.a @ gm.b, ref), "bf16": _rel_err(gm.out16, ref),
            "bf16_inputs": _rel_err(gm.a16.double() @ gm.b16.double(), ref)}


def floors(gemms: list[Gemm], steps: int, bases: dict, bases16: dict) -> dict[str, Callable[[], None]]:
    """All products of a step in the path's order and counts: float32, bf16 bare, bf16 with every
    conversion (weights cast once per step; per call the activation operand in and the output out;
    the weight-gradient products read the bf16 copies of every step's rows that those casts made,
    and cast what no per-step product did, and their outputs out)."""
    once = [g for g in gemms if g.count == 1 and g.phase == "forward"]
    fwd = [g for g in gemms if g.count == steps and g.phase == "forward"]
    bwd = [g for g in gemms if g.count == steps and g.phase == "input-grad"]
    wgr = [g for g in gemms if g.phase == "weight-grad"]
    assert len(once) + len(fwd) + len(bwd) + len(wgr) == len(gemms)

    def run(call):
        def floor():
            for g in once:
                call(g)
            for _ in range(steps):
                for g in fwd:
                    call(g)
            for _ in range(steps):
                for g in bwd:
                    call(g)
            for g in wgr:
                call(g)
        return floor

    def converted(g: Gemm):
        g.cast_in(in_step=True)
        g.bf16()
        g.cast_out()

    bf16_conv = run(converted)

    def with_weight_casts():
        for k in bases:
            bases16[k].copy_(bases[k])
        bf16_conv()

    return {"f32": run(Gemm.f32), "bf16": run(Gemm.bf16), "bf16_conv": with_weight_casts}


def _interleaved(fns: dict[str, Callable[[], object]], rounds: int, reps: dict[str, int] | None = None,
                 clock=time.process_time) -> dict[str, list[float]]:
    """Seconds per call of each fn over ``rounds`` rounds (``reps[name]`` calls each), in turn, the
    order reversed every other round; one warm-up call each first."""
    reps = reps or {}
    for f in fns.values():
        f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for i in range(rounds):
        for k, f in (order if i % 2 == 0 else order[::-1]):
            r = reps.get(k, 1)
            t0 = clock()
            for _ in range(r):
                f()
            out[k].append((clock() - t0) / r)
    return out


def _reps(fn: Callable[[], object], min_s: float) -> int:
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, math.ceil(min_s / max(time.perf_counter() - t0, 1e-7)))


def _train_stepper(model: DRAW, x: torch.Tensor, noise: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = model.loss(x, noise)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure_step(attention: bool, rounds: int = 9, batch: int = 64, cfg: DRAWConfig | None = None) -> dict:
    """Part ``step`` (see the module doc)."""
    cfg = cfg or DRAWConfig(attention=attention)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = DRAW(cfg)
        x = (torch.rand(batch, cfg.channels, cfg.height, cfg.width) < 0.3).float()
        noise = torch.randn(cfg.steps, batch, cfg.z_size)
        assert draw_sequence.usable(model, x, noise), "the step must take the sequence path"
        step = _train_stepper(model, x, noise)

        def bf16_step():
            with products.training(BF16):
                step()
        times = _interleaved({"f32": step, "bf16": bf16_step}, rounds)
    finally:
        torch.set_num_threads(before)
    return {"config": {"attention": attention, "steps": cfg.steps, "batch": batch, "enc_hidden": cfg.enc_hidden,
                       "dec_hidden": cfg.dec_hidden, "z_size": cfg.z_size}, "clock": "cpu", "rounds": rounds,
            "f32_s": median_iqr(times["f32"]), "bf16_s": median_iqr(times["bf16"]),
            "speedup": median_iqr([a / b for a, b in zip(times["f32"], times["bf16"])]),
            "per_round_s": {k: list(v) for k, v in times.items()}}


def measure_gemms(attention: bool, rounds: int = 9, batch: int = 64, cfg: DRAWConfig | None = None,
                  step: bool = True, min_call_s: float = 2e-3, seed: int = 0) -> dict:
    """Part 1 for DRAW with or without attention (see the module doc). One thread, CPU seconds."""
    cfg = cfg or DRAWConfig(attention=attention)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = DRAW(cfg)
        gemms, bases, bases16 = draw_gemms(model, batch, seed)
        shapes = []
        for gm in gemms:  # per product: its own rounds of every variant
            fns = {"f32": gm.f32, "bf16": gm.bf16, "cast_in": gm.cast_in, "cast_out": gm.cast_out}
            t = _interleaved(fns, rounds, {k: _reps(f, min_call_s) for k, f in fns.items()})
            conv = [b + i + o for b, i, o in zip(t["bf16"], t["cast_in"], t["cast_out"])]
            m, k, n = gm.shape
            shapes.append({
                "name": gm.name, "phase": gm.phase, "m": m, "k": k, "n": n, "calls_per_step": gm.count,
                "a_layout": _layout(gm.a), "b_layout": _layout(gm.b), "adds_into_output": gm.c is not None,
                "f32_us": 1e6 * statistics.median(t["f32"]), "bf16_us": 1e6 * statistics.median(t["bf16"]),
                "cast_in_us": 1e6 * statistics.median(t["cast_in"]),
                "cast_out_us": 1e6 * statistics.median(t["cast_out"]),
                "f32_gflops": gm.flops / statistics.median(t["f32"]) / 1e9,
                "bf16_gflops": gm.flops / statistics.median(t["bf16"]) / 1e9,
                "speedup": median_iqr([a / b for a, b in zip(t["f32"], t["bf16"])]),
                "speedup_with_conversions": median_iqr([a / b for a, b in zip(t["f32"], conv)]),
                "rel_err": gemm_errors(gm),
            })
        fl = floors(gemms, cfg.steps, bases, bases16)
        fns = {f"floor_{k}": f for k, f in fl.items()}
        if step:
            g = torch.Generator().manual_seed(seed + 1)
            x = (torch.rand(batch, cfg.channels, cfg.height, cfg.width, generator=g) < 0.3).float()
            noise = torch.randn(cfg.steps, batch, cfg.z_size, generator=g)
            fns["step"] = _train_stepper(model, x, noise)
            seq_used = draw_sequence.usable(model, x, noise)
        t = _interleaved(fns, rounds)
    finally:
        torch.set_num_threads(before)
    ff, fb, fc = t["floor_f32"], t["floor_bf16"], t["floor_bf16_conv"]
    weight_casts = sum(v.numel() for v in bases.values())
    out = {
        "config": {"steps": cfg.steps, "batch": batch, "enc_hidden": cfg.enc_hidden, "dec_hidden": cfg.dec_hidden,
                   "z_size": cfg.z_size, "read_n": cfg.read_n, "write_n": cfg.write_n, "attention": cfg.attention},
        "rounds": rounds, "clock": "cpu", "gemms": shapes,
        "gflop_per_step": sum(gm.flops * gm.count for gm in gemms) / 1e9,
        "weight_elements_cast_per_step": weight_casts,
        "floor_f32_s": median_iqr(ff), "floor_bf16_s": median_iqr(fb), "floor_bf16_conv_s": median_iqr(fc),
        "floor_speedup": median_iqr([a / b for a, b in zip(ff, fb)]),
        "floor_speedup_with_conversions": median_iqr([a / b for a, b in zip(ff, fc)]),
    }
    if step:
        st = t["step"]
        frac = [a / b for a, b in zip(ff, st)]
        out.update({
            "sequence_path": seq_used, "step_s": median_iqr(st), "gemm_fraction": median_iqr(frac),
            # Amdahl per round: the step with its GEMMs s times faster
            "step_speedup_bound": median_iqr([1 / ((1 - f) + f * b / a) for f, a, b in zip(frac, ff, fb)]),
            "step_speedup_bound_with_conversions": median_iqr([1 / ((1 - f) + f * c / a)
                                                               for f, a, c in zip(frac, ff, fc)]),
        })
    return out


def _layout(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "row-major"
    if t.t().is_contiguous():
        return "transposed"
    return f"strided {tuple(t.stride())}"


# ---------------------------------------------------------------- part 2: training fidelity

class Bf16Gemms(TorchDispatchMode):
    """Within this mode every 2-D float32 matrix product (aten mm, addmm, addmm_, with or without
    out=; @ and matmul come down to these) is computed as the bf16 product of bf16-rounded inputs (a
    bf16 output, as torch gives on CPU) converted back to float32, any added term added in float32;
    ``calls`` counts them by overload. A dispatch mode, not a function mode: it also reaches the
    products of custom autograd nodes' backward (the sequence path's)."""

    OPS = {torch.ops.aten.mm.default, torch.ops.aten.mm.out, torch.ops.aten.addmm.default,
           torch.ops.aten.addmm.out, torch.ops.aten.addmm_.default}

    def __init__(self):
        super().__init__()
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            is_mm = func.overloadpacket is torch.ops.aten.mm
            mats = args[:2] if is_mm else args[1:3]
            if (all(t.dim() == 2 and t.dtype == torch.float32 for t in mats)
                    and kwargs.get("beta", 1) == 1 and kwargs.get("alpha", 1) == 1):
                name = func.__name__
                self.calls[name] = self.calls.get(name, 0) + 1
                p = torch.mm(mats[0].to(BF16), mats[1].to(BF16)).float()
                out = kwargs.get("out")
                if func is torch.ops.aten.addmm_.default:
                    return args[0].add_(p)
                if not is_mm:
                    return torch.add(args[0], p, out=out) if out is not None else args[0] + p
                return out.copy_(p) if out is not None else p
        return func(*args, **kwargs)


def train_config(attention: bool, steps: int = 16, hidden: int = 128, z_size: int = 20) -> DRAWConfig:
    return DRAWConfig(steps=steps, enc_hidden=hidden, dec_hidden=hidden, z_size=z_size, attention=attention)


def synthetic_batches(n: int, batch: int, seed: int, size: int = 28) -> list[torch.Tensor]:
    """Binary images of one or two random bars (strokes) each: learnable structure, no data files."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.zeros(batch, 1, size, size)
        for i in range(batch):
            for _ in range(1 + int(torch.randint(2, (1,), generator=g))):
                r0, c0 = (int(v) for v in torch.randint(2, size - 8, (2,), generator=g))
                h, w = (int(v) for v in torch.randint(2, 10, (2,), generator=g))
                x[i, 0, r0:r0 + h, c0:c0 + w] = 1
        flip = torch.rand(x.shape, generator=g) < 0.02  # some pixel noise
        out.append(torch.where(flip, 1 - x, x))
    return out


def data_batches(source: str, n: int, batch: int, seed: int = 0, n_valid: int = 1) -> tuple[str, list, list]:
    """(what the data are, n training batches, n_valid held-out batches). ``source``: "mnist"
    (binarized MNIST, fresh binarization of train epoch 0 shuffled, and the fixed valid split),
    "synthetic", or "auto" (MNIST when its files can be had, else synthetic)."""
    if source in ("mnist", "auto"):
        try:
            from datasets.torch_data import iterate_batches

            train, epoch = [], 0
            while len(train) < n:  # epochs 0, 1, ... (each freshly binarized and shuffled)
                it = iterate_batches("binarized", "train", batch, seed=seed, epoch=epoch, shuffle=True, drop_last=True)
                train += [x for x, _ in itertools.islice(it, n - len(train))]
                epoch += 1
            it = iterate_batches("binarized", "valid", batch, seed=seed, drop_last=True)
            valid = [x for x, _ in itertools.islice(it, n_valid)]
            return (f"binarized MNIST (datasets.torch_data.iterate_batches('binarized'): train epochs 0-{epoch - 1}, "
                    "valid)"), train, valid
        except Exception as e:  # noqa: BLE001 - auto falls back, mnist says why
            if source == "mnist":
                raise
            note = f" (MNIST unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]})"
    else:
        note = ""
    return ("synthetic binary bars" + note, synthetic_batches(n, batch, seed + 1),
            synthetic_batches(n_valid, batch, seed + 2))


def _noise(cfg: DRAWConfig, batch: int, seed: int, i: int) -> torch.Tensor:
    return torch.randn(cfg.steps, batch, cfg.z_size, generator=torch.Generator().manual_seed(seed * 1_000_003 + i))


class _Run:
    """One variant's model, optimiser and record."""

    def __init__(self, name: str, cfg: DRAWConfig, lr: float, clip: float):
        self.name = name
        self.seed = 1 if name.endswith("seed1") else 0
        torch.manual_seed(self.seed)
        self.model = DRAW(cfg)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.clip, self.cfg = clip, cfg
        self.losses: list[float] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.mode = Bf16Gemms() if name == "bf16_gemm_sequence" else None
        self.sequence_path = None

    def contexts(self):
        step_path = self.name.endswith("_step") or "_step_" in self.name
        path = draw_sequence.disabled() if step_path else contextlib.nullcontext()
        whole = self.mode if self.mode is not None else (
            products.training(BF16) if self.name == "bf16_products_sequence" else contextlib.nullcontext())
        fwd = torch.autocast("cpu", dtype=BF16) if self.name == "bf16_autocast_step" else contextlib.nullcontext()
        return path, whole, fwd

    def step(self, x: torch.Tensor, i: int):
        noise = _noise(self.cfg, x.shape[0], self.seed, i)
        path, whole, fwd = self.contexts()
        w0, c0 = time.perf_counter(), time.process_time()
        with path, whole:
            if self.sequence_path is None:
                self.sequence_path = draw_sequence.usable(self.model, x, noise)
            with fwd:
                loss = self.model.loss(x, noise)[0]
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.opt.step()
        self.wall.append(time.perf_counter() - w0)
        self.cpu.append(time.process_time() - c0)
        self.losses.append(loss.item())

    @torch.no_grad()
    def evaluate(self, valid: list[torch.Tensor]) -> float:
        """float32 loss (nats/image) on the held-out batches, the same noise for every variant."""
        return statistics.fmean(float(self.model.loss(x, _noise(self.cfg, x.shape[0], 99, j))[0])
                                for j, x in enumerate(valid))


def train_fidelity(attention: bool, steps: int = 300, batch: int = 64, cfg: DRAWConfig | None = None,
                   variants: tuple[str, ...] = VARIANTS, data: str = "auto", window: int = 50,
                   lr: float = 1e-3, clip: float = 10.0, warmup: int = 3, n_valid: int = 8) -> dict:
    """Part 2 for DRAW with or without attention (see the module doc)."""
    cfg = cfg or train_config(attention)
    if REFERENCE not in variants:
        raise ValueError(f"variants must include the reference {REFERENCE!r}")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source, train, valid = data_batches(data, steps, batch, n_valid=n_valid)
        runs = [_Run(v, cfg, lr, clip) for v in variants]
        for i, x in enumerate(train):
            for r in (runs if i % 2 == 0 else runs[::-1]):
                r.step(x, i)
        finals = {r.name: r.evaluate(valid) for r in runs}
    finally:
        torch.set_num_threads(before)
    ref = runs[variants.index(REFERENCE)]
    windows = [(a, min(a + window, steps)) for a in range(0, steps, window)]
    out: dict = {
        "config": {"steps": cfg.steps, "batch": batch, "enc_hidden": cfg.enc_hidden, "dec_hidden": cfg.dec_hidden,
                   "z_size": cfg.z_size, "read_n": cfg.read_n, "write_n": cfg.write_n, "attention": cfg.attention,
                   "train_steps": steps, "lr": lr, "clip_norm": clip, "valid_images": sum(len(v) for v in valid)},
        "data": source, "reference": REFERENCE, "windows": windows, "variants": {},
    }
    for r in runs:
        paired = [a - b for a, b in zip(r.losses, ref.losses)]
        rec = {
            "sequence_path": r.sequence_path,
            "loss_first": r.losses[0], "loss_window_mean": [statistics.fmean(r.losses[a:b]) for a, b in windows],
            "diff_window_mean": [statistics.fmean(paired[a:b]) for a, b in windows],
            "max_abs_diff_first_10": max(abs(d) for d in paired[:10]),
            "valid_loss": finals[r.name], "valid_diff": finals[r.name] - finals[REFERENCE],
            "finite": all(math.isfinite(v) for v in r.losses),
            "losses": r.losses,
            "wall_s": median_iqr(r.wall[warmup:] or r.wall), "cpu_s": median_iqr(r.cpu[warmup:] or r.cpu),
        }
        if r is not ref:
            for clock in ("wall", "cpu"):
                mine, theirs = (getattr(x, clock)[warmup:] or getattr(x, clock) for x in (r, ref))
                rec[f"{clock}_over_ref"] = median_iqr([a / b for a, b in zip(mine, theirs)])
        if r.mode is not None:
            rec["emulated_gemm_calls_per_step"] = {k: v / steps for k, v in r.mode.calls.items()}
        out["variants"][r.name] = rec
    return out


# ---------------------------------------------------------------- report

def _print_gemm(model: str, r: dict) -> None:
    c = r["config"]
    print(f"\n== products of one training step: DRAW {model}, T {c['steps']}, B {c['batch']}, LSTMs {c['enc_hidden']}, "
          f"z {c['z_size']}; {r['gflop_per_step']:.1f} GFLOP/step; one thread, CPU time, {r['rounds']} rounds")
    print(f"{'product':30} {'phase':11} {'m x k x n':>17} {'calls':>5} {'f32 us':>9} {'bf16 us':>9} "
          f"{'in+out cast us':>15} {'f32/bf16 (IQR)':>15} {'+conv (IQR)':>13} {'err f32':>8} {'err bf16':>8} "
          f"{'bf16 in':>8}")
    for s in r["gemms"]:
        e = s["rel_err"]
        print(f"{s['name']:30} {s['phase']:11} {s['m']:>5}x{s['k']:>5}x{s['n']:>5} {s['calls_per_step']:>5} "
              f"{s['f32_us']:>9.1f} {s['bf16_us']:>9.1f} {s['cast_in_us'] + s['cast_out_us']:>15.1f} "
              f"{s['speedup']['median']:>7.2f} ({s['speedup']['iqr']:.2f}) "
              f"{s['speedup_with_conversions']['median']:>6.2f} ({s['speedup_with_conversions']['iqr']:.2f}) "
              f"{e['f32']:>8.1e} {e['bf16']:>8.1e} {e['bf16_inputs']:>8.1e}")
    line = (f"floor: f32 {r['floor_f32_s']['median']:.3f} s, bf16 {r['floor_bf16_s']['median']:.3f} s, "
            f"bf16 + conversions {r['floor_bf16_conv_s']['median']:.3f} s; speed-up {r['floor_speedup']['median']:.2f} "
            f"(IQR {r['floor_speedup']['iqr']:.2f}), with conversions "
            f"{r['floor_speedup_with_conversions']['median']:.2f} "
            f"(IQR {r['floor_speedup_with_conversions']['iqr']:.2f})")
    print(line)
    if "step_s" in r:
        print(f"training step (float32, {'sequence' if r['sequence_path'] else 'per-step'} path, Adam) "
              f"{r['step_s']['median']:.3f} s; GEMM fraction {r['gemm_fraction']['median']:.2f} "
              f"(IQR {r['gemm_fraction']['iqr']:.2f}); best step speed-up with bf16 GEMMs "
              f"{r['step_speedup_bound']['median']:.2f} (IQR {r['step_speedup_bound']['iqr']:.2f}), with conversions "
              f"{r['step_speedup_bound_with_conversions']['median']:.2f} "
              f"(IQR {r['step_speedup_bound_with_conversions']['iqr']:.2f})")


def _print_train(model: str, r: dict) -> None:
    c = r["config"]
    print(f"\n== training fidelity: DRAW {model}, T {c['steps']}, LSTMs {c['enc_hidden']}, z {c['z_size']}, batch "
          f"{c['batch']}, {c['train_steps']} Adam steps (lr {c['lr']}, clip {c['clip_norm']}); data: {r['data']}")
    heads = " ".join(f"{f'{a}-{b}':>9}" for a, b in r["windows"])
    print(f"{'variant':20} {'path':8} {'first':>7} {heads} {'valid':>8} {'valid-ref':>9} {'wall/ref (IQR)':>15} "
          f"{'cpu/ref (IQR)':>14}")
    for name, v in r["variants"].items():
        path = "sequence" if v["sequence_path"] else "per-step"
        wins = " ".join(f"{m:>9.2f}" for m in v["loss_window_mean"])
        ratio = (f"{v['wall_over_ref']['median']:>7.2f} ({v['wall_over_ref']['iqr']:.2f}) "
                 f"{v['cpu_over_ref']['median']:>7.2f} ({v['cpu_over_ref']['iqr']:.2f})") if "wall_over_ref" in v \
            else f"{'1':>7} {'':7} {'1':>7}"
        print(f"{name:20} {path:8} {v['loss_first']:>7.1f} {wins} {v['valid_loss']:>8.2f} {v['valid_diff']:>+9.2f} "
              f"{ratio}")
        if name != r["reference"]:
            print(f"{'  - ' + r['reference']:29} {' '.join(f'{d:>+9.2f}' for d in v['diff_window_mean'])}"
                  f"   (first 10 steps: max |diff| {v['max_abs_diff_first_10']:.2g})")
    if "bf16_gemm_sequence" in r["variants"]:
        print("(bf16_gemm_sequence is an emulation: its time is not a bf16 GEMM option's)")


def main(argv: list[str] | None = None) -> dict:
    from datasets.cliargs import integer

    ap = argparse.ArgumentParser(prog="python -m bench.bf16_study", description=__doc__.split("\n")[0])
    ap.add_argument("--part", nargs="+", default=["gemm", "step", "train"], choices=["gemm", "step", "train"])
    ap.add_argument("--model", nargs="+", default=list(MODELS), choices=list(MODELS),
                    help="DRAW without attention (noattn) and with (attn)")
    ap.add_argument("--rounds", type=integer(1), default=9, help="part gemm: rounds (medians and IQRs over them)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="DRAW's T (default: 64 for gemm, 16 for train)")
    ap.add_argument("--hidden", type=int, default=None, help="both LSTMs (default: 256 for gemm, 128 for train)")
    ap.add_argument("--z-size", type=int, default=None, help="default: 100 for gemm, 20 for train")
    ap.add_argument("--no-step", action="store_true", help="part gemm: skip the training step (no GEMM fraction)")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--data", default="auto", choices=["auto", "mnist", "synthetic"])
    ap.add_argument("--window", type=int, default=50, help="part train: steps per reported loss window")
    ap.add_argument("--json", default=None, help="also write the results here (atomically)")
    args = ap.parse_args(argv)
    res: dict = {"started": records.utc_now(), "commit": records.commit_info(), "machine": records.machine_info(),
                 "cpu": cpu_info(), "native": native.library() is not None, "threads": 1,
                 "load_average_1min": os.getloadavg()[0], "gemm": {}, "step": {}, "train": {}}
    print(f"CPU {res['cpu']['cpu_model']}, flags {' '.join(res['cpu']['flags']) or '-'}, oneDNN bf16 "
          f"{res['cpu']['mkldnn_bf16']}, torch {res['cpu']['torch']}, native loops {res['native']}, load "
          f"{res['load_average_1min']:.2f}", flush=True)
    for model in args.model:
        a = MODELS[model]
        if "gemm" in args.part:
            cfg = DRAWConfig(attention=a, steps=args.steps or 64, enc_hidden=args.hidden or 256,
                             dec_hidden=args.hidden or 256, z_size=args.z_size or 100)
            res["gemm"][model] = r = measure_gemms(a, args.rounds, args.batch, cfg, step=not args.no_step)
            _print_gemm(model, r)
        if "step" in args.part:
            cfg = DRAWConfig(attention=a, steps=args.steps or 64, enc_hidden=args.hidden or 256,
                             dec_hidden=args.hidden or 256, z_size=args.z_size or 100)
            res["step"][model] = r = measure_step(a, args.rounds, args.batch, cfg)
            print(f"\n== training step with bf16 products (the option), DRAW {model}, batch {args.batch}: float32 "
                  f"{r['f32_s']['median']:.3f} s, bf16 {r['bf16_s']['median']:.3f} s (CPU); speed-up "
                  f"{r['speedup']['median']:.2f} (IQR {r['speedup']['iqr']:.2f}) over {args.rounds} rounds", flush=True)
        if "train" in args.part:
            cfg = train_config(a, args.steps or 16, args.hidden or 128, args.z_size or 20)
            res["train"][model] = r = train_fidelity(a, args.train_steps, args.batch, cfg, tuple(args.variants),
                                                     args.data, args.window)
            _print_train(model, r)
    if args.json:
        atomic_write_bytes(args.json, (json.dumps(res, indent=2, sort_keys=True) + "\n").encode())
    return res


if __name__ == "__main__":
    main()
