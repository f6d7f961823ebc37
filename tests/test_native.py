"""The native CPU loops (models/fast/native.py) against the PyTorch path they replace, and their build."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from models import attention as att
from models import lstm
from models.fast import native

needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler: the native loops are not built")


@pytest.fixture()
def fresh_build(monkeypatch, tmp_path):
    """An empty build cache (and an empty temporary-directory fallback) and a fresh library() lookup."""
    monkeypatch.setenv("GLIMPSE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    native.library.cache_clear()
    yield tmp_path / "cache"
    native.library.cache_clear()


def _rows_inputs(batch, n, size, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # centres from far left to far right of the image, r from very wide to sub-pixel filters
    mu = (torch.rand(batch, n, generator=g, dtype=dtype) * 3 - 1) * size
    r = torch.exp(torch.empty(batch, dtype=dtype).uniform_(-6, 4, generator=g))
    return mu, r


@needs_native
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(256, 12, 100), (200, 2, 28), (7, 5, 300), (3, 1, 1), (5, 3, 17)])
def test_filterbank_rows_match_the_torch_path(shape, dtype, tol):
    batch, n, size = shape
    mu, r = _rows_inputs(batch, n, size, dtype, seed=sum(shape))
    cut = att._cutoff(dtype, size)
    want = att._rows_forward(mu, r, size, cut)
    got = native.rows_forward(mu, r, size, cut, att._threshold(cut))
    torch.testing.assert_close(got, want, atol=tol, rtol=0)
    torch.testing.assert_close(got.sum(-1), torch.ones(batch, n, dtype=dtype), atol=tol * size, rtol=0)
    grad = torch.randn(want.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for g_native, g_torch in zip(native.rows_backward(grad, want, mu, r), att._rows_backward(grad, want, mu, r)):
        scale = g_torch.abs().max().clamp(min=1)
        torch.testing.assert_close(g_native / scale, g_torch / scale, atol=50 * tol, rtol=0)


@needs_native
@settings(max_examples=30, deadline=None)
@given(gx=st.floats(-2e3, 2e3), log_sigma2=st.floats(-30, 30), log_delta=st.floats(-10, 10),
       n=st.integers(1, 13), size=st.integers(1, 120))
# a centre halfway between two pixels with a tiny sigma: the exponent rounds above 0 at the second one
@example(gx=0.0, log_sigma2=-27.5, log_delta=0.0, n=4, size=2)
@example(gx=0.0, log_sigma2=-27.5, log_delta=0.0, n=4, size=100)
def test_filterbank_rows_agree_for_any_window(gx, log_sigma2, log_delta, n, size):
    """Same zero pattern and values (float64) whatever the window: the factored exponent and the cutoff
    are computed the same way in both paths."""
    g, d, s2 = (torch.tensor([v], dtype=torch.float64) for v in (gx, math.exp(log_delta), math.exp(log_sigma2)))
    with_native = att.filterbank(g, d, s2, n, size)
    with native.disabled():
        with_torch = att.filterbank(g, d, s2, n, size)
    torch.testing.assert_close(with_native, with_torch, atol=1e-12, rtol=0)


@needs_native
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
@pytest.mark.parametrize("missing", [None, "dh", "dc"])
def test_lstm_pointwise_matches_the_torch_path(dtype, tol, missing):
    g = torch.Generator().manual_seed(3)
    gates0 = torch.randn(33, 4 * 19, generator=g, dtype=dtype) * 4
    c0 = torch.randn(33, 19, generator=g, dtype=dtype)
    w_h, w_c = (torch.randn(33, 19, generator=g, dtype=dtype) for _ in range(2))

    def run():
        gates, c_prev = gates0.clone().requires_grad_(), c0.clone().requires_grad_()
        h, c = lstm.lstm_pointwise(gates, c_prev)
        loss = (0 if missing == "dh" else (h * w_h).sum()) + (0 if missing == "dc" else (c * w_c).sum())
        loss.backward()
        return h, c, gates.grad, c_prev.grad

    got = run()
    with native.disabled():
        want = run()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def _window_outputs_and_grads(params, height, width, n, seed=0):
    """The Window and d(loss)/d(params) for a loss that uses every output of window_from_params;
    ``params`` is passed with its strides (models pass column slices of a larger output)."""
    p = params.detach().requires_grad_()  # detach keeps the strides
    win = att.window_from_params(p, height, width, n)
    g = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=g, dtype=t.dtype)).sum() for t in win)
    return win, torch.autograd.grad(loss, p)[0]


def _extreme_params(batch, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    params = torch.randn(batch, 5, generator=g, dtype=dtype) * torch.tensor([1.5, 1.5, 3, 1, 1], dtype=dtype)
    params[0, 2:5] = torch.tensor([-200.0, 300.0, 0.0])  # past the log clamps
    params[1, :2] = 1e6  # centre far outside: clamped grid
    params[2, 2] = math.log(1e-8)  # sub-pixel filters
    params[3, 3] = math.log(1e10)  # stride far past the image
    params[4, 0] = 150.0  # centre clamped to the margin, which depends on sigma2
    return params


@needs_native
@pytest.mark.parametrize("hwn", [(100, 100, 12), (28, 28, 2), (28, 28, 5), (9, 11, 3), (13, 7, 1)])
def test_window_matches_the_torch_path(hwn):
    """Every output and the gradient, in float64 to 1e-12 including the clamped extremes, and in
    float32 on ordinary windows. In float32 the two paths round the grid centres differently by an
    ulp (torch's addcmul may fuse the multiply-add), about 4e-6 px at g = 50, and a filter of
    sigma2 = 0.1 turns that into relative changes of ~4e-5 in F: hence the float32 tolerance."""
    h, w, n = hwn
    # Ordinary windows as a column slice of a wider output whose other columns are past the log
    # clamps: reading the slice as if it were contiguous would zero gradients.
    wide = torch.full((64, 7), 1e3)
    wide[:, 1:6] = torch.randn(64, 5, generator=torch.Generator().manual_seed(n)) * 0.7
    ordinary = wide[:, 1:6]
    cases = [(_extreme_params(64, torch.float64, seed=h + n), 1e-12), (ordinary, 1e-4)]
    for params, tol in cases:
        win_native, grad_native = _window_outputs_and_grads(params, h, w, n)
        with native.disabled():
            win_torch, grad_torch = _window_outputs_and_grads(params, h, w, n)
        for name, a, b in zip(att.Window._fields, win_native, win_torch):
            torch.testing.assert_close(a, b, atol=tol * float(b.detach().abs().max().clamp(min=1)), rtol=tol,
                                       msg=lambda m, name=name: f"{name}: {m}")
        assert torch.isfinite(grad_native).all()
        scale = grad_torch.abs().max().clamp(min=1)
        torch.testing.assert_close(grad_native / scale, grad_torch / scale, atol=10 * tol, rtol=0)


@needs_native
@pytest.mark.parametrize("hwn", [(9, 7, 3), (6, 6, 2), (5, 8, 1)])
def test_gradcheck_native_window(hwn):
    """Float64 gradcheck of the hand-written window backward, including a grid whose centre is
    clamped to the margin (its gradient goes to sigma2) and gradients reaching only some outputs."""
    h, w, n = hwn
    g = torch.Generator().manual_seed(h * w)
    params = torch.randn(4, 5, generator=g, dtype=torch.float64) * 0.5
    params[1, 0] = 150.0
    params.requires_grad_()
    torch.autograd.gradcheck(lambda p: att.window_from_params(p, h, w, n), (params,))
    torch.autograd.gradcheck(lambda p: att.window_from_params(p, h, w, n).fx, (params,))
    torch.autograd.gradcheck(lambda p: att.window_from_params(p, h, w, n).gamma, (params,))


@pytest.mark.parametrize("path", ["native", "torch"])
def test_gradcheck_window_and_lstm(path):
    """Float64 gradcheck of the window's filterbanks and of the LSTM gate algebra on both paths."""
    if path == "native" and native.library() is None:
        pytest.skip("the native loops are not built here")
    g = torch.Generator().manual_seed(5)
    params = (torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    gates = torch.randn(4, 12, generator=g, dtype=torch.float64, requires_grad=True)
    c_prev = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    with native.disabled() if path == "torch" else contextlib.nullcontext():
        torch.autograd.gradcheck(lambda p: att.window_from_params(p, 9, 7, 3)[5:], (params,))
        torch.autograd.gradcheck(lstm.lstm_pointwise, (gates, c_prev))


def test_not_used_for_other_dtypes_mixed_dtypes_or_when_disabled():
    assert not native.usable(torch.zeros(2, dtype=torch.bfloat16))
    assert not native.usable(torch.zeros(2), torch.zeros(2, dtype=torch.float64))
    with native.disabled():
        assert not native.usable(torch.zeros(2))
    assert native.usable(torch.zeros(2)) == (native.library() is not None)


def test_disabled_by_environment(monkeypatch, fresh_build):
    monkeypatch.setenv("GLIMPSE_NATIVE", "0")
    assert native.library() is None
    assert not native.usable(torch.zeros(2))
    assert not fresh_build.exists()


def test_a_failed_build_warns_once_and_falls_back(monkeypatch, fresh_build):
    monkeypatch.delenv("GLIMPSE_NATIVE", raising=False)
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match="building the native CPU kernels failed"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.library() is None  # cached: no second warning, no second build
    assert not list(fresh_build.iterdir())  # the failed build left nothing behind
    mu, r = _rows_inputs(4, 3, 10, torch.float32, seed=0)
    f = att.filterbank(mu[:, 0], torch.ones(4), 1 / (2 * r ** 2), 3, 10)  # still works, on the torch path
    torch.testing.assert_close(f.sum(-1), torch.ones(4, 3))


def test_a_missing_compiler_is_named_not_taken_for_a_folder_problem(monkeypatch, fresh_build):
    monkeypatch.delenv("GLIMPSE_NATIVE", raising=False)
    monkeypatch.setenv("CC", str(fresh_build.parent / "no-such-cc"))
    with pytest.warns(RuntimeWarning, match=r"the C compiler '.*no-such-cc' was not found; set CC") as seen:
        assert native.library() is None
    assert "no writable folder" not in str(seen[0].message)


@needs_native
def test_unwritable_cache_falls_back_to_a_private_temporary_folder(fresh_build):
    fresh_build.parent.joinpath("cache").write_text("a file where the cache folder should be")
    assert native.library() is not None
    tmp = fresh_build.parent / "tmp"
    built = list(tmp.glob("glimpse-native-*/glimpse_native_*.so"))
    assert len(built) == 1 and not built[0].parent.stat().st_mode & 0o077


@needs_native
def test_a_temporary_folder_others_can_write_is_not_trusted(fresh_build):
    fresh_build.parent.joinpath("cache").write_text("not a folder")
    shared = fresh_build.parent / "tmp" / f"glimpse-native-{native.os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="no writable folder"):
        assert native.library() is None
    assert not list(shared.iterdir())


@needs_native
def test_build_is_cached_and_atomic(fresh_build):
    lib = native.library()
    assert lib is not None
    built = [p.name for p in fresh_build.iterdir()]
    assert len(built) == 1 and built[0].startswith("glimpse_native_") and built[0].endswith(".so")
    native.library.cache_clear()
    assert native.library() is not None
    assert [p.name for p in fresh_build.iterdir()] == built


@needs_native
def test_loading_leaves_denormals_alone():
    """A shared library linked with -ffast-math sets flush-to-zero for the whole process on load
    (GCC's crtfastmath); the build must not, or every model's float semantics would change."""
    assert "-ffast-math" not in native.FLAGS
    native.library()
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    assert (tiny * 1.5).item() > 0


@needs_native
def test_no_second_openmp_runtime():
    """The library links OpenMP only when a libgomp.so.1 (PyTorch's) is already loaded, and binds to
    it: one file of that name stays mapped, not PyTorch's and the system's side by side. (Copies
    under other names, such as scikit-learn's libgomp-<hash>.so.1, are theirs.)"""
    native.library()
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    gomp = {line.split()[-1] for line in maps.splitlines() if line.endswith("/libgomp.so.1")}
    assert len(gomp) <= 1, gomp
    assert (native._openmp_flag() == "-fopenmp") == bool(gomp)
