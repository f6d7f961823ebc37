"""The C loops' signatures (models/fast/native_kernels_body.h, models/fast/native_draw_body.h), declared once.

models/fast/native.py takes the ctypes argument types from this table, and checks every tensor against it
before its address goes to C: the dtype of the loop, the layout the loop assumes, and at least as
many elements as the call's integer arguments make the loop read or write. C cannot tell how long
a buffer is, so a wrong tensor would be read or written past its end; here it raises ValueError.

Sizes are Python expressions in the names of the call's integer arguments.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Buffer:
    """A contiguous tensor of at least ``numel`` elements; None (NULL) only when ``optional``."""
    name: str
    numel: str
    optional: bool = False


@dataclass(frozen=True)
class Rows:
    """A 2-D view of at least ``rows`` x ``cols`` whose rows lie ``ld`` elements apart (an integer
    argument) and whose columns are adjacent: a column block of a wider contiguous matrix."""
    name: str
    rows: str
    cols: str
    ld: str
    optional: bool = False


@dataclass(frozen=True)
class Int:
    """An int64 count, size, offset or stride (never negative); ``c_int`` for flags and threads."""
    name: str
    ctype: type = ctypes.c_int64


@dataclass(frozen=True)
class Real:
    """A scalar of the loop's floating type."""
    name: str


@dataclass(frozen=True)
class Consts:
    """A pointer to the loop's window-constants struct (native.window_consts)."""
    name: str


def _flag(name: str) -> Int:
    return Int(name, ctypes.c_int)


def _ints(*names: str) -> tuple[Int, ...]:
    return tuple(Int(n) for n in names)


_BK, _B4K = "batch * k", "4 * batch * k"
_PIXELS, _READ = "b1 * c * h * w", "b1 * 2 * c * rn * rn"
_WINDOW_OUT = (Buffer("wparams", "5 * b1"), Buffer("wv", "5 * b1"), Buffer("wfx", "b1 * wn * w"),
               Buffer("wfy", "b1 * wn * h"), Buffer("patch", "b1 * c * wn * wn"), Buffer("rparams", "5 * b1"),
               Buffer("rv", "5 * b1"), Buffer("rfx", "b1 * rn * w"), Buffer("rfy", "b1 * rn * h"))
_D_COLS = "max(col_read + 5, col_write + 5, col_patch + c * wn * wn)"  # D_t's column blocks (draw_sequence)
_CANVAS_TAIL = (*_ints("b0", "b1", "c", "h", "w", "rn", "wn"), Consts("rk"), Consts("wk"), _flag("threads"))

SIGNATURES: dict[str, tuple] = {
    "rows_forward": (Buffer("mu", "batch * n"), Buffer("r", "batch"), Buffer("f", "batch * n * size"),
                     *_ints("batch", "n", "size"), Real("cut"), Real("threshold")),
    "rows_backward": (Buffer("grad", "batch * n * size"), Buffer("f", "batch * n * size"),
                      Buffer("mu", "batch * n"), Buffer("r", "batch"), Buffer("grad_mu", "batch * n"),
                      Buffer("grad_r", "batch"), *_ints("batch", "n", "size")),
    "window_forward": (Buffer("params", "5 * batch"), Buffer("v", "5 * batch"), Buffer("fx", "batch * n * w"),
                       Buffer("fy", "batch * n * h"), *_ints("batch", "n", "h", "w"), Consts("k")),
    "window_backward": (Buffer("params", "5 * batch"), Buffer("v", "5 * batch"), Buffer("fx", "batch * n * w"),
                        Buffer("fy", "batch * n * h"), Buffer("dv", "5 * batch", optional=True),
                        Buffer("dfx", "batch * n * w", optional=True), Buffer("dfy", "batch * n * h", optional=True),
                        Buffer("dparams", "5 * batch"), *_ints("batch", "n", "h", "w"), Consts("k")),
    "lstm_forward": (Buffer("gates", _B4K), Buffer("c_prev", _BK), Buffer("act", _B4K), Buffer("c", _BK),
                     Buffer("tc", _BK), Buffer("h", _BK), *_ints("batch", "k")),
    "lstm_backward": (Buffer("dh", _BK, optional=True), Buffer("dc", _BK, optional=True), Buffer("act", _B4K),
                      Buffer("c_prev", _BK), Buffer("tc", _BK), Buffer("da", _B4K),
                      Buffer("dc_prev", _BK, optional=True), *_ints("batch", "k")),
    "lstm_forward_strided": (Rows("ga", "batch", "4 * k", "lda"), Int("lda"),
                             Rows("gb", "batch", "4 * k", "ldb", optional=True), Int("ldb"), Buffer("c_prev", _BK),
                             Buffer("act", _B4K), Buffer("c", _BK), Buffer("tc", _BK), Rows("h", "batch", "k", "ldh"),
                             *_ints("ldh", "batch", "k"), _flag("threads")),
    "lstm_backward_strided": (Buffer("dh", _BK, optional=True), Buffer("dc", _BK, optional=True),
                              Buffer("act", _B4K), Buffer("c_prev", _BK), Buffer("tc", _BK),
                              Rows("da", "batch", "4 * k", "ld1"), Int("ld1"),
                              Rows("da2", "batch", "4 * k", "ld2", optional=True), Int("ld2"),
                              Buffer("dc_prev", _BK, optional=True), *_ints("batch", "k"), _flag("threads")),
    "draw_canvas_forward": (Buffer("x", _PIXELS), Buffer("canvas", _PIXELS), Buffer("sig", _PIXELS),
                            Rows("d", "b1", _D_COLS, "ldd"), *_ints("ldd", "col_read", "col_write", "col_patch"),
                            _flag("do_write"), _flag("do_read"), *_WINDOW_OUT, Buffer("r", _READ), *_CANVAS_TAIL),
    "draw_canvas_backward": (Buffer("x", _PIXELS), Buffer("x_t", _PIXELS), Buffer("sig", _PIXELS),
                             Buffer("dcanvas", _PIXELS), Buffer("dr", _READ), Rows("g", "b1", _D_COLS, "ldg"),
                             *_ints("ldg", "col_read", "col_write", "col_patch"), _flag("do_write"),
                             _flag("do_read"), *_WINDOW_OUT, Buffer("scratch", "b1 * (10 + max(rn, wn) * (w + h))"),
                             *_CANVAS_TAIL),
    "draw_latent_forward": (Rows("e", "batch", "2 * zs", "lde"), Int("lde"), Buffer("eps", "batch * zs"),
                            Buffer("mu", "batch * zs"), Buffer("log_sigma", "batch * zs"), Buffer("z", "batch * zs"),
                            *_ints("batch", "zs")),
    "draw_latent_backward": (Buffer("dz", "batch * zs"), Buffer("dmu", "batch * zs"), Buffer("dls", "batch * zs"),
                             Buffer("log_sigma", "batch * zs"), Buffer("eps", "batch * zs"),
                             Rows("g", "batch", "2 * zs", "ldg"), *_ints("ldg", "batch", "zs")),
}


class Signature:
    """One loop's declared arguments: its ctypes argument types, and the check of a call's arguments
    that turns tensors into addresses."""

    def __init__(self, kind: str, args: tuple, dtype: torch.dtype, scalar: type, consts: type):
        self.kind, self.args, self.dtype = kind, args, dtype
        self.argtypes = [self._ctype(a, scalar, consts) for a in args]
        ints = [a.name for a in args if isinstance(a, Int)]
        self._int_positions = [i for i, a in enumerate(args) if isinstance(a, Int)]
        self._tensors = [(i, a, isinstance(a, Buffer)) for i, a in enumerate(args) if isinstance(a, (Buffer, Rows))]
        # Every tensor's required sizes from the integers in one compiled function: the check runs
        # on every call of a loop, so it stays a few attribute reads and compares per tensor.
        sizes = [a.numel if dense else f"({a.rows}, {a.cols}, {a.ld})" for _, a, dense in self._tensors]
        self._sizes = eval(f"lambda {', '.join(ints)}: ({', '.join(sizes)},)", {"max": max})  # noqa: S307

    @staticmethod
    def _ctype(arg, scalar: type, consts: type):
        if isinstance(arg, (Buffer, Rows)):
            return ctypes.c_void_p
        if isinstance(arg, Int):
            return arg.ctype
        return scalar if isinstance(arg, Real) else ctypes.POINTER(consts)

    def addresses(self, args: tuple) -> list:
        """``args`` with every tensor replaced by its address, after checking each against the
        declaration; ValueError naming the loop, the argument and what is wrong otherwise."""
        if len(args) != len(self.args):
            names = ", ".join(a.name for a in self.args)
            raise TypeError(f"native {self.kind} takes {len(self.args)} arguments ({names}), got {len(args)}")
        ints = [args[i] for i in self._int_positions]
        for i, value in zip(self._int_positions, ints):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"native {self.kind}: {self.args[i].name} must be a non-negative int, got {value!r}")
        out, dtype, tensor = list(args), self.dtype, torch.Tensor
        for (i, spec, dense), need in zip(self._tensors, self._sizes(*ints)):
            t = args[i]
            # The common case in one expression; anything else gets the full check and its message.
            if (dense and t.__class__ is tensor and t.dtype is dtype and t.is_cpu and t.is_contiguous()
                    and t.numel() >= need):
                out[i] = t.data_ptr()
                continue
            if t is None:
                if not spec.optional:
                    raise ValueError(f"native {self.kind}: {spec.name} is required, got None")
                continue
            self._check(spec, t, need, ints)
            out[i] = t.data_ptr()
        return out

    def _check(self, spec, t, need, ints) -> None:
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"native {self.kind}: {spec.name} must be a tensor, got {type(t).__name__}")
        if t.dtype != self.dtype:
            raise ValueError(f"native {self.kind}: {spec.name} is {t.dtype}, the loop takes {self.dtype}; "
                             f"convert it with .to({self.dtype})")
        if not t.is_cpu:
            raise ValueError(f"native {self.kind}: {spec.name} is on {t.device}; the native loops take CPU tensors")
        if isinstance(spec, Buffer):
            if not t.is_contiguous():
                raise ValueError(f"native {self.kind}: {spec.name} is not contiguous (strides {t.stride()}); "
                                 f"pass .contiguous()")
            if t.numel() < need:
                raise ValueError(f"native {self.kind}: {spec.name} has {t.numel()} elements, the call needs "
                                 f"{need} ({spec.numel} with {self._ints_text(ints)})")
            return
        rows, cols, ld = need
        if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1) or (t.shape[0] > 1 and t.stride(0) != ld):
            raise ValueError(f"native {self.kind}: {spec.name} must be 2-D rows {spec.ld} = {ld} elements apart with "
                             f"adjacent columns, got shape {tuple(t.shape)} strides {t.stride()}")
        if t.shape[0] < rows or t.shape[1] < cols:
            raise ValueError(f"native {self.kind}: {spec.name} is {tuple(t.shape)}, the call needs at least "
                             f"({rows}, {cols}) (({spec.rows}, {spec.cols}) with {self._ints_text(ints)})")

    def _ints_text(self, ints: list) -> str:
        return ", ".join(f"{self.args[i].name}={v}" for i, v in zip(self._int_positions, ints))
