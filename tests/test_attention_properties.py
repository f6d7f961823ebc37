"""Hypothesis properties of the attention kernel over wide ranges of windows, sizes and dtypes."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from models import attention as att

DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])
finite = dict(allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(g=st.floats(-1e6, 1e6, **finite), delta=st.floats(0.0, 1e9, **finite),
       log_sigma2=st.floats(-30.0, 30.0, **finite), n=st.integers(1, 13), size=st.integers(1, 40), dtype=DTYPES)
@example(g=0.0, delta=1.5, log_sigma2=-24.0, n=3, size=2, dtype=torch.float32)  # a centre halfway between pixels
def test_rows_are_distributions_for_any_window(g, delta, log_sigma2, n, size, dtype):
    sigma2 = torch.tensor([log_sigma2], dtype=torch.float64).exp()
    f = att.filterbank(torch.tensor([g], dtype=dtype), torch.tensor([delta], dtype=dtype), sigma2.to(dtype), n, size)
    assert f.shape == (1, n, size) and f.dtype == dtype
    assert torch.isfinite(f).all() and (f >= 0).all()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-5
    assert ((f.double().sum(-1) - 1).abs() <= tol).all()


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12), n=st.integers(1, 5),
       seed=st.integers(0, 2**31 - 1), value=st.floats(-5, 5, **finite))
def test_read_of_constant_image_and_mass_of_write(b, c, h, w, n, seed, value):
    gen = torch.Generator().manual_seed(seed)
    params = torch.randn(b, 5, generator=gen, dtype=torch.float64) * 2
    win = att.window_from_params(params, h, w, n)
    # rows sum to 1, so every glimpse pixel of a constant image is gamma * value
    r = att.read(torch.full((b, c, h, w), value, dtype=torch.float64), win.fx, win.fy, win.gamma)
    assert r.shape == (b, c, n, n)
    torch.testing.assert_close(r, (win.gamma * value).view(b, 1, 1, 1).expand_as(r))
    # ... and the canvas update carries the patch's total mass / gamma
    p = torch.randn(b, c, n, n, generator=gen, dtype=torch.float64)
    canvas = att.write(p, win.fx, win.fy, win.gamma)
    assert canvas.shape == (b, c, h, w)
    torch.testing.assert_close(canvas.sum(dim=(2, 3)), p.sum(dim=(2, 3)) / win.gamma.view(b, 1))


@settings(max_examples=25, deadline=None)
@given(params=st.lists(st.floats(-40, 40, **finite), min_size=5, max_size=5), dtype=DTYPES)
def test_gradients_finite_for_any_raw_window(params, dtype):
    p = torch.tensor([params], dtype=dtype, requires_grad=True)
    x = torch.rand(1, 1, 10, 14).to(dtype)
    win = att.window_from_params(p, 10, 14, 3)
    out = att.read(x, win.fx, win.fy, win.gamma)
    # gamma = exp(40) is a legal (huge) intensity; normalise it away so the loss stays in range
    (out / win.gamma.detach().view(1, 1, 1, 1)).sum().backward()
    assert torch.isfinite(p.grad).all()
