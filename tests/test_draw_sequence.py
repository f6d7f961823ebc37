"""DRAW's sequence path (models/fast/draw_sequence.py: the whole pass as one node, native BPTT) against
the step-by-step autograd path of the same model, with and without attention, and when each path is
taken.

The parity with the independent reference (models/reference/naive_draw.py) is in tests/test_draw.py, whose
training-loss tests go through this path."""

from __future__ import annotations

import pytest
import torch

from models.fast import draw_sequence, fused, native
from models.draw import DRAW, DRAWConfig

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not native.usable(torch.zeros(1)), reason="needs the native CPU loops")]

CONFIGS = [  # odd sizes on purpose: non-square images, several channels, read_n > write_n
    dict(steps=4, height=9, width=7, enc_hidden=6, dec_hidden=5, z_size=3, read_n=2, write_n=3),
    dict(steps=5, height=8, width=11, channels=3, enc_hidden=7, dec_hidden=6, z_size=4, read_n=3, write_n=2),
    dict(steps=3, height=30, width=30, enc_hidden=12, dec_hidden=10, z_size=5, read_n=2, write_n=5),
]
NO_ATTENTION = [{**kw, "attention": False} for kw in CONFIGS]  # whole-image read, linear whole-canvas write


def _data(cfg, b, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(b, cfg.channels, cfg.height, cfg.width, generator=g) < 0.4).to(dtype)
    return x, torch.randn(cfg.steps, b, cfg.z_size, generator=g, dtype=dtype)


def _objective(out):
    """Every output of the pass reaches it: canvas (reconstruction), mu and log sigma (KL, log q), z."""
    return (out.loss + 0.3 * out.log_pz - 0.2 * out.log_q + 0.1 * out.kl[:, -1]).mean()


def _grads(model, fn):
    model.zero_grad(set_to_none=True)
    value = fn()
    value.backward()
    return value.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}


def _calls(fn, name="_forward") -> int:
    """How many times ``fn()`` calls draw_sequence.<name> (_forward: the sequence path at all;
    DRAWSequence.apply: as an autograd node)."""
    seen = []
    owner = draw_sequence.DRAWSequence if name == "apply" else draw_sequence
    real = getattr(owner, name)

    def spy(*args):
        seen.append(1)
        return real(*args)

    setattr(owner, name, spy)
    try:
        fn()
    finally:
        setattr(owner, name, real)
    return len(seen)


def _uses_sequence(model, fn) -> bool:
    return _calls(fn) > 0


def assert_float64_pass_unchanged_within(kw, context):
    """A float64 pass of a model of config ``kw`` at an odd batch (5) on the sequence path: its value
    and every parameter's gradient are those of the same pass within ``context``, to float64 rounding."""
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg).double()
    x, noise = _data(cfg, 5, torch.float64)
    assert _uses_sequence(model, lambda: model(x, noise, windows=False))
    got, got_g = _grads(model, lambda: _objective(model(x, noise, windows=False)))
    with context:
        want, want_g = _grads(model, lambda: _objective(model(x, noise, windows=False)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for k in want_g:
        torch.testing.assert_close(got_g[k], want_g[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("kw", CONFIGS + NO_ATTENTION)
def test_float64_parity_with_the_autograd_path(kw):
    """Values and every parameter's gradient equal those of the PyTorch-only step path (autograd
    through every op, native loops off) to float64 rounding."""
    assert_float64_pass_unchanged_within(kw, native.disabled())


@pytest.mark.parametrize("attention", [True, False])
def test_float32_paper_size_matches_the_step_path(attention):
    """The paper's model at batch 10 in float32: loss and gradients agree with the step path (native
    window and LSTM loops, autograd elsewhere) to float32 tolerance."""
    torch.manual_seed(0)
    cfg = DRAWConfig(attention=attention)
    model = DRAW(cfg)
    x, noise = _data(cfg, 10, torch.float32)
    got, got_g = _grads(model, lambda: _objective(model(x, noise, windows=False)))
    want, want_g = _grads(model, lambda: _objective(model(x, noise, windows=True)))  # windows: the step path
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)
    for k in want_g:
        assert (got_g[k] - want_g[k]).norm() <= 1e-5 * want_g[k].norm() + 1e-7, k


@pytest.mark.parametrize("kw", CONFIGS + NO_ATTENTION)
def test_evaluation_forward_matches_the_step_path(kw):
    """Under no_grad the forward keeps two slots of intermediates, not T: same outputs (float64)."""
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg).double()
    x, noise = _data(cfg, 3, torch.float64)
    with torch.no_grad():
        assert _uses_sequence(model, lambda: model(x, noise, windows=False))
        got, want = model(x, noise, windows=False), model(x, noise, windows=True)
    for name in ("canvas_logits", "kl", "reconstruction", "log_q", "log_pz"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("attention", [True, False])
def test_gradcheck_of_the_sequence_node(attention):
    """Float64 gradcheck of DRAWSequence itself with respect to all four fused weights."""
    torch.manual_seed(0)
    cfg = DRAWConfig(steps=3, height=6, width=5, enc_hidden=3, dec_hidden=3, z_size=2, read_n=2, write_n=2,
                     attention=attention)
    model = DRAW(cfg).double()
    x, noise = _data(cfg, 2, torch.float64)
    g = draw_sequence.Geometry(cfg.steps, 2, cfg.channels, cfg.height, cfg.width, cfg.read_n, cfg.write_n,
                               cfg.enc_hidden, cfg.dec_hidden, cfg.z_size, attention)
    with torch.no_grad():
        p = fused.weights(model)
        weights = [torch.cat([p["w_dec"].t(), p["b_dec"][:, None]], 1).t(),
                   torch.cat([p["w_enc"].t(), p["b_enc"][:, None]], 1).t(), p["w_read"], p["w_z"]]
    weights = [w.detach().clone().requires_grad_() for w in weights]

    def f(*ws):
        canvas, mu, log_sigma, z = draw_sequence.DRAWSequence.apply(x, noise, *ws, g, model)
        return canvas, mu, log_sigma, z

    assert torch.autograd.gradcheck(f, weights, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("kw", [CONFIGS[0], NO_ATTENTION[0]])
def test_when_the_sequence_path_is_taken(kw):
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg)
    x, noise = _data(cfg, 3, torch.float32)
    assert _uses_sequence(model, lambda: model.loss(x, noise))  # training
    assert not _uses_sequence(model, lambda: model(x, noise))  # windows asked for
    assert not _uses_sequence(model, lambda: model(x, noise, windows=False, canvases=True))
    assert _calls(lambda: model.loss(x, noise), "apply") == 1  # training: one autograd node
    with torch.no_grad():  # evaluation: the forward alone, keeping no intermediates
        assert _uses_sequence(model, lambda: model.loss(x, noise))
        assert _calls(lambda: model.loss(x, noise), "apply") == 0
    with native.disabled():
        assert not _uses_sequence(model, lambda: model.loss(x, noise))
    with draw_sequence.disabled():  # the per-step path with the native loops (side-by-side timings)
        assert not _uses_sequence(model, lambda: model.loss(x, noise))
    assert _uses_sequence(model, lambda: model.loss(x, noise))
    assert not _uses_sequence(model, lambda: model.loss(x.clone().requires_grad_(), noise))  # gradient for x
    plain = DRAW(DRAWConfig(**{**CONFIGS[0], "attention": False}))
    assert _uses_sequence(plain, lambda: plain.loss(x, noise))  # without attention too
    learned = DRAW(DRAWConfig(**{**CONFIGS[0], "initial_state": "learned"}))
    assert not _uses_sequence(learned, lambda: learned.loss(x, noise))  # learned c_0, h_0: the step path
    with torch.no_grad():
        assert not _uses_sequence(learned, lambda: learned.loss(x, noise))


@pytest.mark.parametrize("kw", [CONFIGS[1], NO_ATTENTION[1]])
def test_two_graphs_alive_at_once_keep_their_own_buffers(kw):
    """A second forward before the first graph's backward takes another workspace from the pool:
    the gradients of both together equal their sum taken one by one."""
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg).double()
    x, noise = _data(cfg, 4, torch.float64)
    x2, noise2 = _data(cfg, 4, torch.float64, seed=1)
    _, g1 = _grads(model, lambda: model.loss(x, noise)[0])
    _, g2 = _grads(model, lambda: model.loss(x2, noise2)[0])
    _, both = _grads(model, lambda: model.loss(x, noise)[0] + model.loss(x2, noise2)[0])
    for k in both:
        torch.testing.assert_close(both[k], g1[k] + g2[k], rtol=1e-12, atol=1e-14, msg=k)


@pytest.mark.parametrize("kw", [CONFIGS[2], NO_ATTENTION[2]])
def test_same_inputs_same_numbers(kw):
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg)
    x, noise = _data(cfg, 6, torch.float32)
    a, ga = _grads(model, lambda: model.loss(x, noise)[0])
    b, gb = _grads(model, lambda: model.loss(x, noise)[0])
    assert torch.equal(a, b) and all(torch.equal(ga[k], gb[k]) for k in ga)


@pytest.mark.parametrize("kw", [CONFIGS[2], NO_ATTENTION[2]])
def test_threads_do_not_change_the_numbers(kw):
    """The native loops split the batch over torch.get_num_threads() threads; each row's arithmetic
    stays the same, so 1 and 2 give identical values and gradients. Torch itself stays at one
    thread (the fixture), so only the native loops see the 2."""
    torch.manual_seed(0)
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg)
    x, noise = _data(cfg, 40, torch.float32)
    one, g_one = _grads(model, lambda: model.loss(x, noise)[0])
    real = draw_sequence.torch.get_num_threads
    draw_sequence.torch.get_num_threads = lambda: 2  # only the native loops read it here
    try:
        two, g_two = _grads(model, lambda: model.loss(x, noise)[0])
    finally:
        draw_sequence.torch.get_num_threads = real
    assert torch.equal(one, two) and all(torch.equal(g_one[k], g_two[k]) for k in g_one)


@pytest.mark.parametrize("kw", [CONFIGS[0], NO_ATTENTION[0]])
@pytest.mark.parametrize("grad", [True, False])
def test_a_pass_checks_its_buffers_before_the_native_loops_run(grad, kw):
    """draw_sequence.run trusts its caller for the noise's shape: noise for a smaller latent must be
    refused by the loops' signature check (it would be read past its end), with and without the
    autograd node."""
    cfg = DRAWConfig(**kw)
    model = DRAW(cfg)
    x, _ = _data(cfg, 5, torch.float32)
    small = torch.randn(cfg.steps, 5, cfg.z_size - 1)
    with torch.set_grad_enabled(grad), pytest.raises(ValueError, match=r"draw_latent_forward: eps has 10 elements"):
        draw_sequence.run(model, x, small, fused.weights(model))
