"""The precision of the matrix products of DRAW's training pass on the sequence path.

Float32 (the default, the paper's) or bfloat16 operands: with ``bfloat16`` every per-step product
of the training pass and every weight gradient reads bf16 copies of its operands (the weights cast
once per pass, each activation or gradient row as it is complete) and its bf16 result is converted
back into the float32 workspace, where the native loops, the canvas and the optimiser stay float32.
On CPUs with avx512_bf16 or AMX (oneDNN) the products then run about twice as fast; elsewhere torch
emulates them, slower than float32, so ``check`` refuses the setting there. Evaluation (bounds,
errors, samples) never uses it: a model trained with bf16 products is scored in float32.

``docs/performance.md`` has the speed and fidelity measurements (``bench.bf16_study``)."""

from __future__ import annotations

import contextlib

import torch

SETTINGS = {"float32": None, "bfloat16": torch.bfloat16}
_state = {"dtype": None}


def training_dtype() -> torch.dtype | None:
    """The operand dtype of training passes now (None: the pass's own dtype)."""
    return _state["dtype"]


def name_of(dtype: torch.dtype | None) -> str:
    return next(k for k, v in SETTINGS.items() if v == dtype) if dtype in SETTINGS.values() else str(dtype)


BF16_FEATURES = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 flags; arm64 Features


def bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 natively: an instruction for it (avx512_bf16, AMX, arm64 bf16)
    and oneDNN taking bf16. (oneDNN alone also says yes on AVX-512 CPUs without such instructions,
    where it converts to float32 and gains nothing.)"""
    from models.fast.native_cpu import cpu_flags

    probe = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(BF16_FEATURES & cpu_flags() and torch.backends.mkldnn.is_available() and probe is not None
                and probe())


def check(name: str) -> torch.dtype | None:
    """The dtype of setting ``name``, or ValueError naming what is wrong and what to do."""
    if name not in SETTINGS:
        raise ValueError(f"training products {name!r}: expected one of {', '.join(SETTINGS)}")
    if SETTINGS[name] is torch.bfloat16 and not bf16_supported():
        raise ValueError("training products 'bfloat16': this CPU has no native bf16 matrix products "
                         "(avx512_bf16 or AMX), so torch would emulate them, slower than float32; "
                         "train with float32 products here")
    return SETTINGS[name]


def set_training_dtype(dtype: torch.dtype | None) -> None:
    """Process-wide (``bench run --training-products``)."""
    _state["dtype"] = dtype


@contextlib.contextmanager
def training(dtype: torch.dtype | None):
    """Within this block training passes take their products' operands in ``dtype`` (tests also use
    the pass's own dtype: then every copy is exact and the results must match the plain products)."""
    before = _state["dtype"]
    _state["dtype"] = dtype
    try:
        yield
    finally:
        _state["dtype"] = before


class Products:
    """``out = a @ b`` (``+ add``, or ``+= `` with ``accumulate``) with a and b already in the operand
    dtype. ``dtype`` None: torch's products straight into ``out``; else the product is formed in that
    dtype in a scratch buffer and converted into ``out``. ``cast`` copies a row into its operand
    copy (nothing to do when the operands are the buffers themselves)."""

    def __init__(self, dtype: torch.dtype | None):
        self.dtype = dtype
        self._scratch: dict[tuple, torch.Tensor] = {}

    def cast(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if self.dtype is not None:
            dst.copy_(src)

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        return w if self.dtype is None else w.detach().to(self.dtype)

    def mm(self, a, b, out, add=None, accumulate=False) -> None:
        if self.dtype is None:
            if accumulate:
                out.addmm_(a, b)
            elif add is not None:
                torch.addmm(add, a, b, out=out)
            else:
                torch.mm(a, b, out=out)
            return
        shape = (a.shape[0], b.shape[1])
        p = self._scratch.get(shape)
        if p is None:
            p = self._scratch[shape] = torch.empty(shape, dtype=self.dtype)
        torch.mm(a, b, out=p)
        if accumulate:
            out.add_(p)
        elif add is not None:
            torch.add(add, p, out=out)
        else:
            out.copy_(p)

    def gram(self, a, b, out_dtype: torch.dtype, out: torch.Tensor | None = None) -> torch.Tensor:
        """a^T b in ``out_dtype``, or into ``out`` (the weight gradients: a and b hold every step's rows)."""
        if self.dtype is None:
            return torch.mm(a.t(), b, out=out) if out is not None else a.t() @ b
        p = a.t() @ b
        if out is not None:
            return out.copy_(p)
        return p.to(out_dtype)
