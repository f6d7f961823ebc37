"""The attention kernel against an independent float64 loop reference, gradcheck, adjoint, identity,
extreme inputs and the known bugs of public ports (ANCHORS.md)."""

from __future__ import annotations

import math

import pytest
import torch

from models import attention as att
from models.reference import attention_reference as ref
from models.fast import native


@pytest.fixture(autouse=True, params=["native", "torch"])
def kernel_path(request):
    """Every test here runs on both paths: the native CPU loops (the default where built) and the
    PyTorch code (CUDA, other dtypes, torch.compile, no compiler)."""
    if request.param == "torch":
        with native.disabled():
            yield
    elif native.library() is None:
        pytest.skip("the native loops are not built here")
    else:
        yield


def _params(b: int, seed: int, spread: float = 1.6) -> torch.Tensor:
    """Random raw window numbers; |g~| up to `spread` puts windows partly or wholly outside."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.empty(b, 5, dtype=torch.float64)
    p[:, :2].uniform_(-spread, spread, generator=gen)
    p[:, 2].uniform_(-1.5, 1.5, generator=gen)  # log sigma2
    p[:, 3].uniform_(-1.0, 0.5, generator=gen)  # log delta~
    p[:, 4].uniform_(-0.5, 0.5, generator=gen)  # log gamma
    return p


def _ref_windows(params: torch.Tensor, h: int, w: int, n: int) -> list[tuple[float, ...]]:
    return [ref.params_to_window_loop(p.tolist(), h, w, n) for p in params]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_filterbank_matches_loop_reference_inside_and_outside(dtype, tol):
    h, w, n = 9, 13, 4
    params = _params(16, seed=1, spread=2.5)
    win = att.window_from_params(params.to(dtype), h, w, n)
    outside = 0
    for b, (gx, gy, sigma2, delta, gamma) in enumerate(_ref_windows(params, h, w, n)):
        outside += not (0 < gx < w + 1)
        for f, g, size in ((win.fx, gx, w), (win.fy, gy, h)):
            expect = torch.tensor(ref.filterbank_loop(g, delta, sigma2, n, size), dtype=torch.float64)
            torch.testing.assert_close(f[b].double(), expect, atol=tol, rtol=0)
    assert outside >= 3, "the random windows must include some centred outside the image"


def test_float32_matches_float64_where_plain_exp_underflows():
    # A window 15 pixels left of the image with sigma2 = 1: every weight is below exp(-110),
    # which underflows in float32 (a plain exp gives a zero row) but not in float64.
    g, delta, sigma2 = torch.tensor([-15.0]), torch.tensor([1.0]), torch.tensor([1.0])
    f32 = att.filterbank(g, delta, sigma2, 3, 10)
    expect = torch.tensor(ref.filterbank_loop(-15.0, 1.0, 1.0, 3, 10), dtype=torch.float64)
    assert expect.sum(-1).min() > 0.999
    torch.testing.assert_close(f32[0].double(), expect, atol=1e-6, rtol=0)
    assert ref.filterbank_batched(g, delta, sigma2, 3, 10).sum() == 0  # what the plain version does


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-11), (torch.float32, 1e-5)])
def test_read_write_match_loop_reference(dtype, tol):
    b, c, h, w, n = 3, 2, 7, 10, 3
    params = _params(b, seed=2)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(b, c, h, w, generator=gen, dtype=torch.float64)
    p = torch.randn(b, c, n, n, generator=gen, dtype=torch.float64)
    win = att.window_from_params(params.to(dtype), h, w, n)
    rw = _ref_windows(params, h, w, n)
    torch.testing.assert_close(att.read(x.to(dtype), win.fx, win.fy, win.gamma).double(),
                               ref.read_loop(x, rw, n), atol=tol, rtol=tol)
    torch.testing.assert_close(att.write(p.to(dtype), win.fx, win.fy, win.gamma).double(),
                               ref.write_loop(p, rw, h, w), atol=tol, rtol=tol)


def test_window_transforms_match_reference():
    params = _params(5, seed=4)
    win = att.window_from_params(params, 11, 17, 6)
    for b, expect in enumerate(_ref_windows(params, 11, 17, 6)):
        got = (win.gx[b], win.gy[b], win.sigma2[b], win.delta[b], win.gamma[b])
        assert [float(v) for v in got] == pytest.approx(expect, rel=1e-12)


def test_gradcheck_filterbank():
    gen = torch.Generator().manual_seed(5)
    g = (torch.rand(4, generator=gen, dtype=torch.float64) * 30 - 5).requires_grad_()
    delta = (torch.rand(4, generator=gen, dtype=torch.float64) * 3 + 0.3).requires_grad_()
    sigma2 = (torch.rand(4, generator=gen, dtype=torch.float64) * 3 + 0.2).requires_grad_()
    assert torch.autograd.gradcheck(lambda g, d, s: att.filterbank(g, d, s, 5, 23), (g, delta, sigma2))


@pytest.mark.parametrize("op", ["read", "write"])
def test_gradcheck_read_write_through_window_params(op):
    b, c, h, w, n = 2, 2, 6, 8, 3
    params = _params(b, seed=6).requires_grad_()
    gen = torch.Generator().manual_seed(7)
    shape = (b, c, h, w) if op == "read" else (b, c, n, n)
    data = torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    def f(data, params):
        win = att.window_from_params(params, h, w, n)
        return getattr(att, op)(data, win.fx, win.fy, win.gamma)

    assert torch.autograd.gradcheck(f, (data, params))


def test_adjoint():
    b, c, h, w, n = 4, 3, 12, 15, 5
    params = _params(b, seed=8)
    params[:, 4] = 0.0  # gamma = 1
    win = att.window_from_params(params, h, w, n)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(b, c, h, w, generator=gen, dtype=torch.float64)
    p = torch.randn(b, c, n, n, generator=gen, dtype=torch.float64)
    lhs = (att.read(x, win.fx, win.fy, win.gamma) * p).sum(dim=(1, 2, 3))
    rhs = (x * att.write(p, win.fx, win.fy, win.gamma)).sum(dim=(1, 2, 3))
    torch.testing.assert_close(lhs, rhs, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("size", [1, 7, 8])
def test_identity_read(size):
    # n = H = W, delta~ = 1, centred, tiny sigma: the grid lands on every pixel and read(x) = x.
    params = torch.tensor([[0.0, 0.0, math.log(1e-6), 0.0, 0.0]]).repeat(2, 1)
    win = att.window_from_params(params, size, size, size)
    if size > 1:
        torch.testing.assert_close(win.delta, torch.ones(2))
    x = torch.rand(2, 3, size, size)
    torch.testing.assert_close(att.read(x, win.fx, win.fy, win.gamma), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n,h,w", [(4, 20, 20), (5, 20, 31), (12, 100, 100)])
def test_centred_grid_is_symmetric_about_image_centre(n, h, w):
    # Catches the 0-based grid index (i - N/2 - 0.5 with i = 0..N-1 shifts the grid by one stride).
    params = torch.tensor([[0.0, 0.0, 1.0, -0.5, 0.0]], dtype=torch.float64)
    win = att.window_from_params(params, h, w, n)
    for f, size in ((win.fx[0], w), (win.fy[0], h)):
        centroid = f @ torch.arange(1, size + 1, dtype=torch.float64)  # (n,) 1-based
        torch.testing.assert_close(centroid + centroid.flip(0), torch.full((n,), size + 1.0, dtype=torch.float64))
        torch.testing.assert_close(centroid.mean(), torch.tensor((size + 1) / 2, dtype=torch.float64))


def test_rows_are_gaussians_with_variance_sigma2():
    # Catches squaring the whole exponent: the second difference of log F is exactly -1/sigma2.
    sigma2 = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    f = att.filterbank(torch.full((3,), 15.3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), sigma2, 3, 30)
    logf = f[:, :, 10:20].log()  # within 6 pixels of every mu: far above the cutoff
    second = logf[..., 2:] - 2 * logf[..., 1:-1] + logf[..., :-2]
    torch.testing.assert_close(second, (-1 / sigma2).view(3, 1, 1).expand_as(second), atol=1e-9, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["sigma_tiny", "sigma_huge", "g_far_left", "g_far_right", "delta_huge",
                                  "params_extreme"])
def test_extreme_inputs_give_finite_values_and_gradients(case, dtype):
    b, h, w, n = 4, 9, 11, 3
    params = torch.zeros(b, 5, dtype=dtype)
    params[:, 0] = torch.tensor([-0.3, 0.0, 0.2, 0.45])
    if case == "sigma_tiny":
        params[:, 2] = math.log(1e-8)
    elif case == "sigma_huge":
        params[:, 2] = math.log(1e6)
    elif case == "g_far_left":
        params[:, :2] = -1e6
    elif case == "g_far_right":
        params[:, :2] = 1e6
    elif case == "delta_huge":
        params[:, 3] = math.log(1e10)
    else:  # raw numbers far beyond float32's exp range
        params[:, 2:5] = torch.tensor([-200.0, 300.0, 0.0])
        params[1, 2:5] = torch.tensor([200.0, -300.0, 0.0])
    params.requires_grad_()
    x = torch.rand(b, 2, h, w, dtype=dtype, requires_grad=True)
    p = torch.rand(b, 2, n, n, dtype=dtype, requires_grad=True)
    win = att.window_from_params(params, h, w, n)
    for f in (win.fx, win.fy):
        assert torch.isfinite(f).all()
        torch.testing.assert_close(f.sum(-1), torch.ones(b, n, dtype=dtype))
    r = att.read(x, win.fx, win.fy, win.gamma)
    c = att.write(p, win.fx, win.fy, win.gamma)
    assert torch.isfinite(r).all() and torch.isfinite(c).all()
    (r.square().sum() + c.square().sum()).backward()
    for t in (params, x, p):
        assert torch.isfinite(t.grad).all(), case


@pytest.mark.parametrize("sigma2", [1e-6, 1e-8, 1e-10, 1e-12, 1e-20])
def test_tiny_sigma_picks_the_nearest_pixel(sigma2):
    # sigma2 -> 0: each row is one-hot on the pixel nearest mu. (Computed as m - d^2 with m the
    # squared distance to the peak, float32 rounding of m alone exceeds the cutoff for sigma2 < 1e-9
    # and the rows come out flat.)
    gen = torch.Generator().manual_seed(14)
    g = torch.rand(256, generator=gen) * 80 + 10
    delta = torch.rand(256, generator=gen) * 3
    f = att.filterbank(g, delta, torch.full((256,), sigma2), 6, 100)
    mu = g[:, None] + (torch.arange(1, 7) - 3.5) * delta[:, None]
    away_from_ties = ((mu - mu.floor()) - 0.5).abs() > 1e-3
    assert (f.argmax(-1) == mu.round().long() - 1)[away_from_ties].all()
    assert (f.amax(-1)[away_from_ties] > 0.999).all()


def test_half_way_between_pixels_with_tiny_sigma_splits_the_weight():
    f = att.filterbank(torch.tensor([4.5]), torch.ones(1), torch.tensor([1e-10]), 1, 8)
    torch.testing.assert_close(f[0, 0, 3:5], torch.tensor([0.5, 0.5]))


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        att.filterbank(torch.zeros(3), torch.zeros(2), torch.ones(3), 4, 10)
    win = att.window_from_params(torch.zeros(2, 5), 8, 9, 3)
    with pytest.raises(ValueError, match="needs fx"):
        att.read(torch.zeros(2, 1, 9, 8), win.fx, win.fy, win.gamma)
    with pytest.raises(ValueError, match="write"):
        att.write(torch.zeros(2, 1, 4, 4), win.fx, win.fy, win.gamma)


def test_bfloat16_close_to_float32():
    b, c, h, w, n = 8, 2, 28, 28, 5
    params = _params(b, seed=10).bfloat16().float()  # the same raw numbers for both
    x = torch.rand(b, c, h, w)
    p = torch.randn(b, c, n, n)
    w32 = att.window_from_params(params.float(), h, w, n)
    w16 = att.window_from_params(params.bfloat16(), h, w, n)
    assert w16.fx.dtype == torch.bfloat16
    r32, r16 = att.read(x, w32.fx, w32.fy, w32.gamma), att.read(x.bfloat16(), w16.fx, w16.fy, w16.gamma)
    c32, c16 = att.write(p, w32.fx, w32.fy, w32.gamma), att.write(p.bfloat16(), w16.fx, w16.fy, w16.gamma)
    assert r16.dtype == c16.dtype == torch.bfloat16
    # bf16 keeps 8 significant bits: each of ~5 roundings (inputs, F, intermediate, output) is off by
    # up to 2^-9 of the sum of |terms|, which is read/write applied to |input|.
    assert ((r16.float() - r32).abs() <= 0.02 * att.read(x.abs(), w32.fx, w32.fy, w32.gamma)).all()
    assert ((c16.float() - c32).abs() <= 0.02 * att.write(p.abs(), w32.fx, w32.fy, w32.gamma)).all()


def test_deterministic():
    params = _params(6, seed=11).float().requires_grad_()
    x = torch.rand(6, 1, 30, 30)
    outs = []
    for _ in range(2):
        params.grad = None
        win = att.window_from_params(params, 30, 30, 4)
        r = att.read(x, win.fx, win.fy, win.gamma)
        r.sum().backward()
        outs.append((r.detach().clone(), params.grad.clone()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_training_after_inference_mode_uses_cached_constants_safely():
    params = _params(3, seed=15).float()
    with torch.inference_mode():
        att.window_from_params(params, 17, 19, 7)  # fills the constant caches for these sizes
    p = params.clone().requires_grad_()
    win = att.window_from_params(p, 17, 19, 7)
    att.read(torch.rand(3, 1, 17, 19), win.fx, win.fy, win.gamma).sum().backward()
    assert torch.isfinite(p.grad).all()


def test_square_image_shortcut_equals_separate_filterbanks():
    params = _params(5, seed=12)
    with native.disabled():  # the PyTorch path's one filterbank call for both axes: bit for bit
        win = att.window_from_params(params, 20, 20, 4)
        assert torch.equal(win.fx, att.filterbank(win.gx, win.delta, win.sigma2, 4, 20))
        assert torch.equal(win.fy, att.filterbank(win.gy, win.delta, win.sigma2, 4, 20))
    win = att.window_from_params(params, 20, 20, 4)  # the native window where built: to rounding
    torch.testing.assert_close(win.fx, att.filterbank(win.gx, win.delta, win.sigma2, 4, 20), atol=1e-6, rtol=0)
    torch.testing.assert_close(win.fy, att.filterbank(win.gy, win.delta, win.sigma2, 4, 20), atol=1e-6, rtol=0)


def test_modules_read_write_and_full_versions():
    torch.manual_seed(0)
    h = torch.randn(3, 16)
    imgs = [torch.rand(3, 2, 12, 10), torch.rand(3, 2, 12, 10)]
    rd = att.make_read(True, 16, 12, 10, 4, channels=2, num_images=2)
    feats, win = rd(imgs, h)
    assert feats.shape == (3, rd.out_features) == (3, 2 * 2 * 16)
    separate = torch.cat([att.read(x, win.fx, win.fy, win.gamma).flatten(1) for x in imgs], dim=1)
    torch.testing.assert_close(feats, separate)
    full, none = att.make_read(False, 16, 12, 10, 4, channels=2, num_images=2)(imgs, h)
    assert none is None and full.shape == (3, 2 * 2 * 12 * 10)
    wr = att.make_write(True, 16, 12, 10, 4, channels=2)
    canvas, wwin = wr(h)
    assert canvas.shape == (3, 2, 12, 10) and wwin.fx.shape == (3, 4, 10) and wwin.fy.shape == (3, 4, 12)
    canvas, none = att.make_write(False, 16, 12, 10, 4, channels=2)(h)
    assert none is None and canvas.shape == (3, 2, 12, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    params = _params(4, seed=13).float()
    x = torch.rand(4, 3, 20, 25)
    cpu = att.window_from_params(params, 20, 25, 5)
    gpu = att.window_from_params(params.cuda(), 20, 25, 5)
    torch.testing.assert_close(gpu.fx.cpu(), cpu.fx, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(att.read(x.cuda(), gpu.fx, gpu.fy, gpu.gamma).cpu(),
                               att.read(x, cpu.fx, cpu.fy, cpu.gamma), atol=1e-5, rtol=1e-4)


def test_filterbank_under_torch_compile_matches_eager():
    """torch.compile once traced the cached constants with the wrong length (F came out (B, n, n))."""
    g, delta, sigma2 = torch.rand(4) * 10, torch.rand(4) + 0.5, torch.rand(4) + 0.5
    compiled = torch.compile(lambda g, d, s: att.filterbank(g, d, s, 3, 17))
    out = compiled(g, delta, sigma2)
    assert out.shape == (4, 3, 17)
    torch.testing.assert_close(out, att.filterbank(g, delta, sigma2, 3, 17))


def test_window_init_cover_starts_with_smooth_whole_image_windows():
    """'cover': sigma = stride / 2 at h = 0, grid centred and spanning the image; 'default': sigma ~ 1."""
    h = torch.zeros(1, 8)
    for size, n in ((100, 12), (28, 2), (28, 5)):
        win = att.WindowHead(8, size, size, n)(h)
        stride = (size - 1) / (n - 1)
        assert win.delta.item() == pytest.approx(stride)
        assert math.sqrt(win.sigma2.item()) == pytest.approx(stride / 2)
        assert win.gx.item() == pytest.approx((size + 1) / 2) and win.gamma.item() == pytest.approx(1.0)
        assert 0.3 < att.WindowHead(8, size, size, n, init="default")(h).sigma2.item() < 3.0
    with pytest.raises(ValueError, match="window init"):
        att.WindowHead(8, 10, 10, 3, init="wide")
