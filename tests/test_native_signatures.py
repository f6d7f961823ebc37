"""The declared signatures of the native loops: they match the C source, and a call whose tensors do
not fit them raises before any address reaches C."""

from __future__ import annotations

import ctypes
import re

import pytest
import torch

from models.fast import native
from models.fast.native_signatures import SIGNATURES, Buffer, Int, Real, Rows

needs_native = pytest.mark.skipif(native.library() is None,
                                  reason="the native loops are not built (no C compiler, or GLIMPSE_NATIVE=0)")

_C_DEFINITION = re.compile(r"^void FN\((\w+)\)\((.*?)\)\s*\{", re.MULTILINE | re.DOTALL)


def _c_definitions() -> dict[str, list[tuple[str, str]]]:
    """Every exported loop of the C source: name -> [(kind, parameter name)] with kinds as declared."""
    out = {}
    for header in native.SOURCES[1:]:
        for name, params in _C_DEFINITION.findall(header.read_text()):
            parsed = []
            for param in params.split(","):
                *ctype, pname = param.replace("*", " * ").split()
                ctype = " ".join(t for t in ctype if t != "const")
                parsed.append(({"T *": "tensor", "int64_t": "int64", "int": "int", "T": "real",
                                "FN(window_consts) *": "consts"}[ctype], pname))
            out[name] = parsed
    return out


def _declared_kind(arg) -> str:
    if isinstance(arg, (Buffer, Rows)):
        return "tensor"
    if isinstance(arg, Int):
        return "int64" if arg.ctype is ctypes.c_int64 else "int"
    return "real" if isinstance(arg, Real) else "consts"


def test_the_table_declares_every_c_loop_with_its_parameters_in_order():
    c = _c_definitions()
    assert set(c) == set(SIGNATURES)
    for kind, args in SIGNATURES.items():
        assert [(_declared_kind(a), a.name) for a in args] == c[kind], kind


def test_every_size_expression_names_only_integer_arguments_of_its_loop():
    for kind, args in SIGNATURES.items():
        ints = {a.name for a in args if isinstance(a, Int)}
        for a in args:
            exprs = [a.numel] if isinstance(a, Buffer) else [a.rows, a.cols, a.ld] if isinstance(a, Rows) else []
            for expr in exprs:
                names = set(re.findall(r"[A-Za-z_]\w*", expr)) - {"max"}
                assert names <= ints, f"{kind}.{a.name}: {expr} names {names - ints}"


def _rows_call(dtype=torch.float32, batch=4, n=3, size=10):
    mu, r = torch.rand(batch, n, dtype=dtype) * size, torch.rand(batch, dtype=dtype) + 0.5
    f = torch.full((batch, n, size), -7.0, dtype=dtype)
    return [mu, r, f, batch, n, size, 30.0, 1e-9]


def _raises_and_leaves_output(args, match):
    f = args[2]
    before = f.clone()
    with pytest.raises(ValueError, match=match):
        native.kernel("rows_forward", torch.float32)(*args)
    assert torch.equal(f, before), "the loop ran"


@needs_native
def test_a_fitting_call_runs_the_loop():
    args = _rows_call()
    native.kernel("rows_forward", torch.float32)(*args)
    torch.testing.assert_close(args[2].sum(-1), torch.ones(4, 3))


@needs_native
def test_a_tensor_of_another_dtype_is_refused():
    args = _rows_call()
    args[1] = args[1].double()
    _raises_and_leaves_output(args, r"rows_forward: r is torch.float64, the loop takes torch.float32")


@needs_native
def test_a_non_contiguous_tensor_is_refused():
    args = _rows_call()
    args[0] = torch.rand(3, 4).t()  # (4, 3) with transposed strides
    _raises_and_leaves_output(args, r"rows_forward: mu is not contiguous")


@needs_native
def test_a_too_small_output_buffer_is_refused():
    args = _rows_call()
    args[2] = torch.full((4, 3, 9), -7.0)
    _raises_and_leaves_output(args, r"rows_forward: f has 108 elements, the call needs 120 "
                                    r"\(batch \* n \* size with batch=4, n=3, size=10\)")


@needs_native
def test_sizes_larger_than_the_buffers_are_refused():
    args = _rows_call()
    args[3] = 5  # batch 5 over 4 rows of mu
    _raises_and_leaves_output(args, r"rows_forward: mu has 12 elements, the call needs 15")


@needs_native
@pytest.mark.parametrize("position,value,match", [
    (0, None, r"mu is required, got None"),
    (4, -1, r"n must be a non-negative int, got -1"),
    (5, 10.0, r"size must be a non-negative int, got 10.0"),
    (0, [0.0] * 12, r"mu must be a tensor, got list"),
])
def test_missing_tensors_and_bad_integers_are_refused(position, value, match):
    args = _rows_call()
    args[position] = value
    _raises_and_leaves_output(args, match)


@needs_native
def test_strided_rows_must_have_the_declared_row_stride_and_width():
    k = native.kernel("draw_latent_forward", torch.float32)
    batch, zs, lde = 4, 3, 10
    e, eps = torch.randn(batch, lde), torch.randn(batch, zs)
    mu, log_sigma, z = (torch.full((batch, zs), -7.0) for _ in range(3))
    k(e, lde, eps, mu, log_sigma, z, batch, zs)
    torch.testing.assert_close(mu, e[:, :zs])
    with pytest.raises(ValueError, match=r"e must be 2-D rows lde = 12 elements apart"):
        k(e, 12, eps, mu, log_sigma, z, batch, zs)
    with pytest.raises(ValueError, match=r"e is \(4, 5\), the call needs at least \(4, 6\)"):
        k(e[:, :5], lde, eps, mu, log_sigma, z, batch, zs)
    with pytest.raises(ValueError, match=r"e must be 2-D"):
        k(e.t(), lde, eps, mu, log_sigma, z, batch, zs)


@needs_native
def test_the_tensor_wrappers_check_what_their_callers_pass():
    """Shapes the wrappers derive from one argument and trust for the others."""
    with pytest.raises(ValueError, match=r"rows_forward: r is torch.float64"):
        native.rows_forward(torch.rand(4, 3), torch.rand(4, dtype=torch.float64), 10, 30.0, 1e-9)
    with pytest.raises(ValueError, match=r"lstm_forward: gates has 36 elements, the call needs 48"):
        native.lstm_forward(torch.randn(4, 9), torch.randn(4, 3))  # gates (B, 3k) for k = 3
    with pytest.raises(ValueError, match=r"lstm_backward: dh has 8 elements, the call needs 12"):
        native.lstm_backward(torch.randn(4, 2), None, torch.rand(4, 12), torch.randn(4, 3), torch.randn(4, 3), True)


@needs_native
def test_window_constants_of_the_other_dtype_are_refused():
    consts = native.window_consts(torch.float64, **dict.fromkeys(native._CONST_FIELDS, 1.0))
    with pytest.raises(ctypes.ArgumentError):
        native.window_forward(torch.randn(2, 5), 7, 7, 2, consts)


def test_kernel_without_a_library_says_why(monkeypatch):
    monkeypatch.setattr(native, "library", lambda: None)
    with pytest.raises(RuntimeError, match="native loops are not built"):
        native.kernel("rows_forward", torch.float32)
