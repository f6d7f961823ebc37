"""DRAW: parity with the straightforward reference, the known bugs of public ports, shapes, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.common import ConfigError
from models.draw import DRAW, DRAWConfig, kl_standard_normal
from models.reference.naive_draw import NaiveDRAW

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(steps=5, enc_hidden=24, dec_hidden=20, z_size=6)
SHAPES = [  # (height, width, channels, read_n, write_n)
    (28, 28, 1, 2, 5),
    (60, 60, 1, 3, 6),
    (12, 16, 3, 3, 4),
]


def small(attention=True, h=28, w=28, c=1, rn=2, wn=5, **kw):
    return DRAWConfig(height=h, width=w, channels=c, read_n=rn, write_n=wn, attention=attention, **{**SMALL, **kw})


def binary(b, cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, cfg.channels, cfg.height, cfg.width, generator=g) < 0.4).float()


def test_config_round_trip_and_errors():
    cfg = DRAWConfig(attention=False, steps=7)
    assert DRAWConfig.from_dict(cfg.to_dict()) == cfg
    assert DRAWConfig().to_dict() == dict(height=28, width=28, channels=1, steps=64, read_n=2, write_n=5,
                                          enc_hidden=256, dec_hidden=256, z_size=100, attention=True,
                                          window_init="cover", initial_state="zero")
    with pytest.raises(ConfigError, match="stepz"):
        DRAWConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="steps"):
        DRAWConfig(steps=0)
    with pytest.raises(ValueError, match="read_n"):
        DRAWConfig(read_n=1)
    DRAWConfig(read_n=1, attention=False)  # no grid without attention
    with pytest.raises(ValueError, match=r"initial_state must be one of \('zero', 'learned'\), got 'learnt'"):
        DRAWConfig(initial_state="learnt")
    with pytest.raises(ConfigError, match="initial_state must be a string"):
        DRAWConfig.from_dict({"initial_state": True})


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("h,w,c,rn,wn", SHAPES)
def test_parity_with_naive_values_and_gradients(attention, h, w, c, rn, wn):
    """Same weights, same noise: the fused DRAW equals the step-by-step reference in float64."""
    torch.manual_seed(1)
    cfg = small(attention, h, w, c, rn, wn)
    fast = DRAW(cfg).double()
    naive = NaiveDRAW(cfg).double()
    naive.load_state_dict(fast.state_dict())
    assert_parity(fast, naive)


def assert_parity(fast, naive, nonzero_grads=()):
    """Float64 on 3 images with the same noise: values and every parameter's gradient agree; the
    parameters named in ``nonzero_grads`` get a gradient that is not all zero."""
    cfg = fast.config
    x = binary(3, cfg).double()
    noise = torch.randn(cfg.steps, 3, cfg.z_size, dtype=torch.float64)
    out = fast(x, noise)
    canvas, recon, kl = naive(x, noise)
    torch.testing.assert_close(out.canvas_logits, canvas, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.reconstruction, recon, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(out.kl, kl, rtol=1e-10, atol=1e-10)
    fast.loss(x, noise)[0].backward()
    naive.loss(x, noise).backward()
    gn = dict(naive.named_parameters())
    for name, p in fast.named_parameters():
        assert p.grad is not None and (name not in nonzero_grads or p.grad.abs().sum() > 0), name
        torch.testing.assert_close(p.grad, gn[name].grad, rtol=1e-8, atol=1e-10, msg=name)


@pytest.mark.parametrize("attention", [True, False])
def test_gradients_when_the_loss_reaches_only_some_steps(attention):
    """The deferred weight gradients: steps the loss does not reach add nothing, a retained graph
    gives the same gradients again, and a later forward does not disturb a graph not yet run."""
    torch.manual_seed(2)
    cfg = small(attention)
    fast = DRAW(cfg).double()
    naive = NaiveDRAW(cfg).double()
    naive.load_state_dict(fast.state_dict())
    x = binary(3, cfg).double()
    noise = torch.randn(cfg.steps, 3, cfg.z_size, dtype=torch.float64)
    fast.loss(x, noise)[0].backward()  # leaves gradients of every step in reusable buffers
    fast.zero_grad(set_to_none=True)
    out = fast(x, noise, windows=False)
    fast(x, noise).loss.sum()  # another graph, dropped without a backward
    out.kl[:, :2].sum().backward(retain_graph=True)
    naive(x, noise)[2][:, :2].sum().backward()
    gn = dict(naive.named_parameters())
    for name, p in fast.named_parameters():
        want = gn[name].grad if gn[name].grad is not None else torch.zeros_like(p)
        got = p.grad if p.grad is not None else torch.zeros_like(p)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10, msg=name)
    first = {name: p.grad.clone() for name, p in fast.named_parameters() if p.grad is not None}
    out.kl[:, :2].sum().backward()
    for name, g in first.items():
        torch.testing.assert_close(dict(fast.named_parameters())[name].grad, 2 * g, rtol=1e-10, atol=1e-12, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fast(x, noise).kl, out.kl.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("h,w,c,rn,wn", SHAPES)
def test_shapes_and_probabilities(attention, h, w, c, rn, wn):
    torch.manual_seed(0)
    cfg = small(attention, h, w, c, rn, wn)
    m = DRAW(cfg)
    x = binary(4, cfg)
    out = m(x)
    assert out.canvas_logits.shape == (4, c, h, w)
    assert out.kl.shape == (4, cfg.steps) and (out.kl >= 0).all()
    for t in (out.reconstruction, out.log_q, out.log_pz, out.loss, out.log_weight):
        assert t.shape == (4,) and torch.isfinite(t).all()
    if attention:
        for win in (out.read_windows, out.write_windows):
            assert all(v.shape == (4, cfg.steps) for v in win)
    else:
        assert out.read_windows is None and out.write_windows is None
    gen = m.generate(5, steps=3)
    assert gen.shape == (3, 5, c, h, w)
    assert ((gen >= 0) & (gen <= 1)).all() and torch.isfinite(gen).all()
    rec = m.reconstruct(x)
    assert rec.shape == (cfg.steps, 4, c, h, w) and ((rec >= 0) & (rec <= 1)).all()
    loss, parts = m.loss(x)
    assert loss.dim() == 0 and math.isclose(parts["loss"], parts["reconstruction"] + parts["kl"], rel_tol=1e-5)
    assert m.param_count() > 0 and m.flops_per_image(train=True) == 3 * m.flops_per_image()


@pytest.mark.parametrize("initial_state", ["zero", "learned"])
def test_reconstruct_last_canvas_is_forward_canvas(initial_state):
    """reconstruct() (a pass that keeps every canvas) ends where an ordinary pass with the same noise
    does, also from a learned, non-zero c_0."""
    cfg = small(initial_state=initial_state)
    m = DRAW(cfg)
    if initial_state == "learned":
        with torch.no_grad():
            m.canvas_0.normal_()
    x = binary(2, cfg)
    rec = m.reconstruct(x, generator=torch.Generator().manual_seed(5))
    plain = m(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(rec[-1], torch.sigmoid(plain.canvas_logits))
    assert rec.shape[0] == cfg.steps and not torch.allclose(rec[0], rec[-1])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.floats(-3, 3), st.floats(0.1, 4.0), st.integers(0, 2**31 - 1))
def test_kl_matches_torch_distributions(b, z, mu_scale, sig_scale, seed):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, z, generator=g, dtype=torch.float64) * mu_scale
    log_sigma = torch.randn(b, z, generator=g, dtype=torch.float64) * math.log1p(sig_scale)
    want = torch.distributions.kl_divergence(torch.distributions.Normal(mu, log_sigma.exp()),
                                             torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    torch.testing.assert_close(kl_standard_normal(mu, log_sigma), want, rtol=1e-12, atol=1e-12)


def test_model_kl_is_expected_log_ratio():
    """Per image, E_eps[log q(z) - log p(z)] = sum_t KL: ties the sampled densities to the exact KL."""
    torch.manual_seed(0)
    cfg = small(steps=3)
    m = DRAW(cfg).double()
    with torch.no_grad():
        m.posterior.weight.mul_(20)  # a posterior far from the prior: a KL of tens of nats
        x = binary(1, cfg).double().expand(4000, -1, -1, -1)
        out = m(x, windows=False)
    ratio = out.log_q - out.log_pz
    kl = out.kl.sum(1)
    # The posterior of step t depends on z_<t, so the KL varies between samples: E[ratio - KL] = 0.
    assert kl.mean() > 5
    d = ratio - kl
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(d))
    assert d.std() > 0.5  # a real sampling check, not an identity


def test_fresh_noise_per_step_and_per_example():
    """A public-port bug reuses one eps for every step; here each step and each image has its own."""
    torch.manual_seed(0)
    cfg = small(steps=4)
    m = DRAW(cfg).double()
    x = binary(3, cfg).double()
    noise = torch.randn(cfg.steps, 3, cfg.z_size, dtype=torch.float64)
    base = m(x, noise).canvas_logits
    changed = []
    for t in range(cfg.steps):
        nz = noise.clone()
        nz[t, 1] += 1.0
        d = (m(x, nz).canvas_logits - base).abs().flatten(1).amax(1)
        assert d[1] > 1e-6 and d[0] == 0 and d[2] == 0, (t, d)  # only image 1 moves
        changed.append(d[1].item())
    assert len(set(changed)) == cfg.steps  # every step's noise enters on its own
    # Without explicit noise, the model draws one (T, B, z) tensor: all steps and images independent.
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    drawn = torch.randn(cfg.steps, 3, cfg.z_size, generator=g2, dtype=torch.float64)
    assert not torch.equal(drawn[0], drawn[1])
    torch.testing.assert_close(m(x, generator=g1).canvas_logits, m(x, drawn).canvas_logits, rtol=0, atol=0)


def test_first_read_window_is_centred_by_a_zero_offset():
    """With h_dec_0 = 0 and a zero bias, the first glimpse grid sits on the image centre (1-based)."""
    cfg = small(h=28, w=28)
    m = DRAW(cfg)
    with torch.no_grad():
        m.read.head.linear.bias.zero_()
    out = m(binary(2, cfg))
    assert torch.allclose(out.read_windows.gx[:, 0], torch.tensor(14.5))
    assert torch.allclose(out.read_windows.gy[:, 0], torch.tensor(14.5))


def test_bad_input_errors():
    m = DRAW(small())
    with pytest.raises(ValueError, match=r"unsqueeze"):
        m(torch.zeros(2, 28, 28))
    with pytest.raises(ValueError, match="float"):
        m(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(ValueError, match="noise"):
        m(torch.zeros(2, 1, 28, 28), noise=torch.zeros(1, 2, 6))
    with pytest.raises(ValueError, match="n >= 1"):
        m.generate(0)


def test_same_seed_same_numbers():
    cfg = small()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        m = DRAW(cfg)
        outs.append(m(binary(2, cfg)).loss)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def _mnist_binary(test_images, n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 28, 28)) < test_images[:n] / 255.0
    return torch.from_numpy(x.astype(np.float32)).unsqueeze(1)


@pytest.mark.parametrize("attention,cfg_kw,images,factor", [
    (True, dict(steps=8, read_n=2, write_n=5), 1, 4.0),
    (False, dict(steps=4), 2, 20.0),
])
def test_one_batch_overfit(mnist_data, attention, cfg_kw, images, factor):
    torch.manual_seed(0)
    cfg = DRAWConfig(enc_hidden=64, dec_hidden=64, z_size=10, attention=attention, **cfg_kw)
    m = DRAW(cfg)
    x = _mnist_binary(mnist_data[2], images)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, parts = m.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert losses[0] > 500  # about 28 * 28 * ln 2 = 543 nats before training
    assert min(losses[-5:]) < losses[0] / factor, losses[::10]


def test_checkpoint_round_trip(tmp_path):
    """Weights through the harness's checkpoint file; the stored config rebuilds an identical model."""
    from bench import checkpoints

    torch.manual_seed(0)
    cfg = small()
    m = DRAW(cfg)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    x = binary(3, cfg)
    m.loss(x)[0].backward()
    opt.step()
    checkpoints.save(tmp_path / "draw.pt", {"task": {"model": cfg.to_dict()}, "model": m.state_dict()})
    state = checkpoints.load(tmp_path / "draw.pt")
    m2 = DRAW(DRAWConfig.from_dict(state["task"]["model"]))
    m2.load_state_dict(state["model"])
    noise = torch.randn(cfg.steps, 3, cfg.z_size)
    a, b = m(x, noise), m2(x, noise)
    torch.testing.assert_close(a.canvas_logits, b.canvas_logits, rtol=0, atol=0)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        DRAW(small(z_size=7)).load_state_dict(state["model"])


@pytest.mark.parametrize("path", ["step", "sequence"])
def test_pooled_buffers_are_reused_and_freed_with_the_model(path):
    """The pooled buffers of a training pass belong to one model: the step path's (T*B, K) deferred
    weight-gradient buffers (taken when windows are asked for) and the sequence path's workspace
    (models/fast/draw_sequence.py, taken by loss()) are reused by the next pass and released when the
    model is."""
    import gc
    import weakref

    from models.fast import draw_sequence, fused, native

    if path == "sequence" and not native.usable(torch.zeros(1)):
        pytest.skip("the sequence path needs the native loops")
    m = DRAW(small(steps=3))
    x = binary(4, m.config)

    def train_pass(model):
        (model.loss(x)[0] if path == "sequence" else model(x).loss.mean()).backward()

    def buffers(pool):
        return {k: [(free[0][0] if path == "step" else free[0].g_dec).data_ptr()] for k, free in pool.items()}

    train_pass(m)
    pool = (draw_sequence._POOLS if path == "sequence" else fused.POOLS)[m]
    assert pool and all(len(free) == 1 for free in pool.values())  # back in the pool after the backward
    first = buffers(pool)
    train_pass(m)
    assert buffers(pool) == first  # the next pass reused them
    held = next(iter(pool.values()))[0]
    buffer, model = weakref.ref(held[0] if path == "step" else held.g_dec), weakref.ref(m)
    del m, pool, held
    gc.collect()
    assert model() is None and buffer() is None


# -- learned initial states: c_0, h^enc_0, h^dec_0 as learned biases (the paper, sec. 2.1) ------------

INITIAL = ("canvas_0", "h_enc_0", "h_dec_0")


def learned(attention=True, dtype=torch.float64, seed=0, **kw):
    """A DRAW with initial_state="learned" whose initial states are random (zero at initialisation
    would hide a state that is not used), and a NaiveDRAW with the same weights."""
    torch.manual_seed(seed)
    cfg = small(attention, initial_state="learned", **kw)
    m = DRAW(cfg).to(dtype)
    with torch.no_grad():
        for name in INITIAL:
            getattr(m, name).normal_()
    naive = NaiveDRAW(cfg).to(dtype)
    naive.load_state_dict(m.state_dict())
    return m, naive


def test_initial_state_parameters_exist_only_when_learned():
    """A "zero" model keeps the state dict of the checkpoints written before the option existed;
    "learned" adds exactly c_0 (C, H, W), h^enc_0 and h^dec_0, zero at initialisation."""
    cfg = small(c=3, h=12, w=16, rn=3, wn=4)
    zero, learnt = DRAW(cfg), DRAW(cfg.replace(initial_state="learned"))
    assert not set(zero.state_dict()) & set(INITIAL)
    assert [k for k in learnt.state_dict() if k not in INITIAL] == list(zero.state_dict())
    assert set(learnt.state_dict()) - set(zero.state_dict()) == set(INITIAL)
    assert [tuple(learnt.state_dict()[k].shape) for k in INITIAL] == [(3, 12, 16), (24,), (20,)]
    assert all(not getattr(learnt, k).any() for k in INITIAL)
    assert learnt.param_count() == zero.param_count() + 3 * 12 * 16 + 24 + 20
    with pytest.raises(RuntimeError, match="Missing key"):
        learnt.load_state_dict(zero.state_dict())


@pytest.mark.parametrize("attention", [True, False])
@pytest.mark.parametrize("h,w,c,rn,wn", [SHAPES[0], SHAPES[2]])
def test_learned_initial_states_parity_with_naive(attention, h, w, c, rn, wn):
    """Float64, same weights and noise: DRAW with learned c_0, h^enc_0, h^dec_0 equals the reference,
    values and every parameter's gradient, the initial states' included."""
    fast, naive = learned(attention, h=h, w=w, c=c, rn=rn, wn=wn)
    assert_parity(fast, naive, nonzero_grads=INITIAL)


@pytest.mark.parametrize("attention", [True, False])
def test_learned_initial_states_gradcheck(attention):
    """Float64 gradcheck of a tiny learned-init DRAW's per-image loss w.r.t. every parameter."""
    m, _ = learned(attention, h=6, w=5, rn=2, wn=2, steps=3, enc_hidden=3, dec_hidden=3, z_size=2)
    x = binary(2, m.config).double()
    noise = torch.randn(3, 2, 2, dtype=torch.float64)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def loss(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (x, noise), {"windows": False}).loss

    assert torch.autograd.gradcheck(loss, params, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_first_read_window_and_encoder_input_come_from_h_dec_0():
    """Step 1 reads where h^dec_0 points: its window is W_read [h^dec_0, 1], and moving h^dec_0 moves it."""
    from models.attention import window_from_params

    m, _ = learned()
    cfg, x = m.config, binary(2, m.config).double()
    with torch.no_grad():
        want = window_from_params(m.read.head.linear(m.h_dec_0)[None], cfg.height, cfg.width, cfg.read_n)
        got = m(x).read_windows
        for k in ("gx", "gy", "sigma2", "delta", "gamma"):
            torch.testing.assert_close(getattr(got, k)[:, 0], getattr(want, k).expand(2), rtol=1e-12, atol=1e-12)
        m.h_dec_0.add_(0.5)
        assert not torch.allclose(m(x).read_windows.gx[:, 0], got.gx[:, 0])


def test_generate_starts_from_the_learned_initial_states():
    """generate(n, steps=1): z_1 ~ N(0, I), h^dec_1 = LSTM_dec(h^dec_0, z_1), c_1 = c_0 + write(h^dec_1)."""
    m, _ = learned()
    cfg = m.config
    got = m.generate(4, steps=1, generator=torch.Generator().manual_seed(7))[0]
    z = torch.randn(4, cfg.z_size, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        h, _ = m.decoder(z, (m.h_dec_0.expand(4, -1), torch.zeros(4, cfg.dec_hidden, dtype=torch.float64)))
        want = torch.sigmoid(m.canvas_0 + m.write(h)[0])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_learned_initial_states_train_through_the_step_path(monkeypatch):
    """The sequence path does not take learned initial states: loss() steps through _step, and Adam
    on one batch lowers the loss and moves c_0, h^enc_0 and h^dec_0."""
    from models.fast import draw_sequence

    def refuse(*args):
        raise AssertionError("the sequence path took a learned-init model")

    monkeypatch.setattr(draw_sequence, "run", refuse)
    m, _ = learned(dtype=torch.float32, steps=4)
    x = binary(4, m.config)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss, parts = m.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(parts["loss"])
    assert losses[-1] < 0.95 * losses[0], losses  # about 636 -> 594 nats
    moved = dict(m.named_parameters())
    start, _ = learned(dtype=torch.float32, steps=4)
    assert all(not torch.equal(moved[k], getattr(start, k)) for k in INITIAL)


DRAW_CHECKPOINTS = sorted((REPO / "results" / "checkpoints").rglob("draw-*.pt"))


@pytest.mark.parametrize("path", DRAW_CHECKPOINTS, ids=[f"{p.parent.name}/{p.stem}" for p in DRAW_CHECKPOINTS])
def test_committed_checkpoints_load_strictly(path):
    """Every committed DRAW checkpoint, finished or a continuation still training, loads with
    strict=True into the model its stored config builds (which predates initial_state, so "zero"),
    and a continuation's Adam state fits the parameters in order."""
    from bench import checkpoints

    state = checkpoints.load(path)
    cfg = DRAWConfig.from_dict(state["task"]["model"])
    assert cfg.initial_state == "zero"
    m = DRAW(cfg)
    m.load_state_dict(state["model"], strict=True)
    if state.get("best_state") is not None:
        m.load_state_dict(state["best_state"], strict=True)
    if "optimizer" in state:
        opt = torch.optim.Adam(m.parameters())
        opt.load_state_dict(state["optimizer"])
        for p in m.parameters():
            assert opt.state[p]["exp_avg"].shape == p.shape
