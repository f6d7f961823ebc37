"""RAM: the retina against a per-image float64 reference, the REINFORCE estimator against exact
expectations, one-batch overfit, determinism, counts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from models.ram import RamConfig, RecurrentAttentionModel
from models.reinforce import gaussian_log_prob, reinforce_loss
from models.retina import integral_image, retina
from models.training import seed_everything


def reference_retina(x: torch.Tensor, loc: torch.Tensor, patch: int, scales: int) -> torch.Tensor:
    """One image at a time: an explicit zero-padded crop of side patch * 2^i, then block means."""
    batch, ch, height, width = x.shape
    out = torch.zeros(batch, scales, ch, patch, patch, dtype=torch.float64)
    for b in range(batch):
        lx, ly = (min(max(float(v), -1.0), 1.0) for v in loc[b])
        for i in range(scales):
            side, k = patch * 2 ** i, 2 ** i
            x0 = math.floor((lx + 1) / 2 * width - side / 2 + 0.5)
            y0 = math.floor((ly + 1) / 2 * height - side / 2 + 0.5)
            crop = torch.zeros(ch, side, side, dtype=torch.float64)
            for r in range(side):
                yy = y0 + r
                if not 0 <= yy < height:
                    continue
                for q in range(side):
                    xx = x0 + q
                    if 0 <= xx < width:
                        crop[:, r, q] = x[b, :, yy, xx]
            for r in range(patch):
                for q in range(patch):
                    out[b, i, :, r, q] = crop[:, r * k:(r + 1) * k, q * k:(q + 1) * k].mean(dim=(1, 2))
    return out


def test_retina_matches_per_image_reference_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(7, 2, 23, 17, generator=g, dtype=torch.float64)
    loc = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [1.0, 1.0], [0.93, -0.4], [-1.7, 2.5], [0.31, 0.77],
                        [-0.05, 0.5]], dtype=torch.float64)
    got = retina(x, loc, patch=3, scales=3)
    assert got.shape == (7, 3, 2, 3, 3) and got.dtype == torch.float64
    # float64 pixels of full precision: the integral image rounds its sums (a few ulp of ~400)
    torch.testing.assert_close(got, reference_retina(x, loc, 3, 3), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [1, 2])
def test_retina_table1_setting_is_exact_on_8bit_pixels(seed):
    """Pixels k / 255 in float32 (the datasets' images): the integral's sums are exact, so every block
    mean equals the reference's float64 mean rounded to float32, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (3, 1, 100, 100), generator=g).float() / 255
    loc = torch.rand(3, 2, generator=g) * 2.4 - 1.2
    want = reference_retina(x.double(), loc.double(), 12, 4).float()
    got = retina(x, loc, 12, 4)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(retina(x, loc, 12, 4, integral_image(x)), want)  # the model's path: one integral


def test_retina_one_bright_pixel():
    """A pixel at row 5, column 9 of a 20 x 20 image; the location (0, 0) centres the patches on pixel (10, 10)."""
    x = torch.zeros(1, 1, 20, 20)
    x[0, 0, 5, 9] = 1.0
    got = retina(x, torch.zeros(1, 2), patch=4, scales=3)
    # scale 0: rows/cols 8..11, the pixel is outside; scale 1: rows/cols 6..13, outside;
    # scale 2: rows/cols 2..17, pooled by 4: block (row 5 -> 0, col 9 -> 1), value 1/16
    assert got[0, :2].sum() == 0
    want = torch.zeros(4, 4)
    want[0, 1] = 1 / 16
    torch.testing.assert_close(got[0, 2, 0], want)


def test_retina_refuses_bad_input():
    with pytest.raises(ValueError, match=r"locations \(B, 2\)"):
        retina(torch.zeros(2, 1, 8, 8), torch.zeros(3, 2), 2, 2)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        retina(torch.zeros(8, 8), torch.zeros(1, 2), 2, 2)


def test_reinforce_expectation_is_the_exact_gradient():
    """Three outcomes: the estimator averaged exactly over the policy equals -grad E[R], for any baseline."""
    theta = torch.tensor([0.3, -0.5, 1.1], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (exact,) = torch.autograd.grad(-(torch.softmax(theta, 0) * rewards).sum(), theta)
    for b in (0.0, 0.7, -3.0):
        p = torch.softmax(theta, 0).detach()
        expected = torch.zeros(3, dtype=torch.float64)
        for a in range(3):
            log_p = torch.log_softmax(theta, 0)[a].view(1, 1)
            (g,) = torch.autograd.grad(reinforce_loss(log_p, rewards[a].view(1), torch.full((1, 1), b,
                                                                                          dtype=torch.float64)), theta)
            expected += p[a] * g
        torch.testing.assert_close(expected, exact, rtol=0, atol=1e-14)
    assert exact.abs().min() > 0.05  # a non-trivial case


def test_reinforce_sampled_mean_matches_exact():
    """Many sampled estimates, in one batch, average to the exact gradient within 5 standard errors."""
    theta = torch.tensor([0.3, -0.5, 1.1], dtype=torch.float64, requires_grad=True)
    rewards = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    (exact,) = torch.autograd.grad(-(torch.softmax(theta, 0) * rewards).sum(), theta)
    g = torch.Generator().manual_seed(0)
    chunks = []
    for _ in range(20):
        a = torch.multinomial(torch.softmax(theta, 0).detach(), 5000, replacement=True, generator=g)
        log_p = torch.log_softmax(theta, 0)[a][:, None]
        (grad,) = torch.autograd.grad(reinforce_loss(log_p, rewards[a], torch.full((5000, 1), 0.3,
                                                                                 dtype=torch.float64)), theta)
        chunks.append(grad)
    chunks = torch.stack(chunks)
    se = chunks.std(0) / math.sqrt(len(chunks))
    assert ((chunks.mean(0) - exact).abs() < 5 * se + 1e-12).all(), (chunks.mean(0), exact, se)


def test_gaussian_score_function_matches_exact_gradient():
    """The model's Gaussian policy: R(l) = -|l - t|^2 has E[R] = -|mu - t|^2 - 2 std^2,
    so grad_mu E[R] = -2 (mu - t)."""
    mu = torch.tensor([[0.3, -0.6]], dtype=torch.float64, requires_grad=True)
    target, std, n = torch.tensor([-0.2, 0.1], dtype=torch.float64), 0.2, 20000
    g = torch.Generator().manual_seed(0)
    chunks = []
    for _ in range(20):
        mean = mu.expand(n, 2)
        sample = mean.detach() + std * torch.randn(n, 2, generator=g, dtype=torch.float64)
        reward = -((sample - target) ** 2).sum(1)
        log_p = gaussian_log_prob(sample, mean, std)[:, None]
        (grad,) = torch.autograd.grad(reinforce_loss(log_p, reward, torch.zeros(n, 1, dtype=torch.float64)), mu)
        chunks.append(-grad[0])
    chunks = torch.stack(chunks)
    exact = -2 * (mu.detach()[0] - target)
    se = chunks.std(0) / math.sqrt(len(chunks))
    assert ((chunks.mean(0) - exact).abs() < 5 * se).all(), (chunks.mean(0), exact, se)
    torch.testing.assert_close(gaussian_log_prob(sample[:3], mean[:3], std),
                               torch.distributions.Normal(mean[:3], std).log_prob(sample[:3]).sum(-1))


SMALL = dict(height=32, width=32, glimpses=3, patch=8, scales=3, glimpse_hidden=32, location_hidden=16,
             glimpse_size=48, hidden=48, num_classes=10)


def test_shapes_and_sampling():
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    x = torch.rand(5, 1, 32, 32)
    out = model(x)
    assert out.logits.shape == (5, 3, 10) and out.locations.shape == out.windows.shape == (5, 3, 2)
    assert out.log_probs.shape == out.baselines.shape == (5, 3)
    assert out.locations.abs().max() <= 1
    model.eval()
    a, b = model(x), model(x)
    assert a.log_probs is None and torch.equal(a.logits, b.logits)  # evaluation: the mean, no noise
    model.train()
    assert not torch.equal(model(x).locations, model(x).locations)  # training: sampled


def test_loss_trains_every_part():
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    loss, _ = model.loss(torch.rand(6, 1, 32, 32), torch.arange(6))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("into_core", [True, False])
def test_reinforce_reaches_the_core_only_when_asked(into_core):
    """The REINFORCE term alone (the cross-entropy and baseline terms left out): with
    reinforce_into_core its gradient reaches the core and the glimpse network, else only the location
    network."""
    model = RecurrentAttentionModel(RamConfig(**SMALL, reinforce_into_core=into_core))
    torch.manual_seed(0)
    out = model(torch.rand(6, 1, 32, 32))
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    reinforce_loss(out.log_probs, reward, out.baselines).backward()
    reached = {name.split(".")[0] for name, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    assert reached == ({"locate", "core", "glimpse"} if into_core else {"locate"})



def test_reinforce_core_scale_scales_only_the_gradient_into_the_core():
    """reinforce_core_scale = k leaves the forward pass and the location network's gradient as they are
    and multiplies the REINFORCE gradient that reaches the core and the glimpse network by k."""
    def reinforce_grads(scale):
        model = RecurrentAttentionModel(RamConfig(**SMALL, reinforce_core_scale=scale)).double()
        model.load_state_dict(reference.state_dict())
        torch.manual_seed(0)
        out = model(x)
        reinforce_loss(out.log_probs, reward, out.baselines).backward()
        return out, {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    reference = RecurrentAttentionModel(RamConfig(**SMALL)).double()
    x = torch.rand(6, 1, 32, 32, dtype=torch.float64)
    reward = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    full_out, full = reinforce_grads(1.0)
    out, scaled = reinforce_grads(0.25)
    assert torch.equal(out.locations, full_out.locations) and torch.equal(out.log_probs, full_out.log_probs)
    assert scaled.keys() == full.keys()
    for name, grad in full.items():
        want = grad if name.startswith("locate") else 0.25 * grad
        torch.testing.assert_close(scaled[name], want, rtol=1e-12, atol=1e-15, msg=name)
    _, none = reinforce_grads(0.0)
    assert {name.split(".")[0] for name, g in none.items() if g.abs().sum() > 0} == {"locate"}
    with pytest.raises(ValueError, match="reinforce_core_scale"):
        RamConfig(reinforce_core_scale=-0.5)


def test_location_network_gets_the_score_function_gradient():
    """In the hybrid loss only the REINFORCE term reaches the location network: its bias gradient is
    the mean over images of sum_t -(R - b_t) (l_t - mu_t) / std^2 * (1 - mu_t^2), R = 1 when right."""
    cfg = RamConfig(**SMALL)
    model = RecurrentAttentionModel(cfg).double()
    x = torch.rand(6, 1, 32, 32, dtype=torch.float64)
    y = torch.arange(6)
    torch.manual_seed(4)
    loss, out = model.loss(x, y)
    loss.backward()
    g = torch.Generator().manual_seed(4)  # the same stream as the global RNG seeded with 4
    h = torch.zeros(6, cfg.hidden, dtype=torch.float64)
    cell = torch.zeros_like(h)
    means, samples = [], []
    with torch.no_grad():
        for _ in range(cfg.glimpses):  # replay the steps: each mean and its unclamped sample
            mean = torch.tanh(model.locate(h))
            sample = mean + cfg.location_std * torch.randn((6, 2), generator=g, dtype=torch.float64)
            h, cell = model.core(model.glimpse(x, sample.clamp(-1, 1)), (h, cell))
            means.append(mean)
            samples.append(sample)
    mean, sample = torch.stack(means, 1), torch.stack(samples, 1)
    torch.testing.assert_close(sample.clamp(-1, 1), out.locations)
    reward = (out.logits[:, -1].argmax(-1) == y).double()
    score = -(reward[:, None, None] - out.baselines[..., None]).detach() * (sample - mean) / cfg.location_std ** 2
    want = (score * (1 - mean ** 2)).sum(1).mean(0)
    torch.testing.assert_close(model.locate.bias.grad, want, rtol=1e-10, atol=1e-12)


def test_bad_images_are_refused():
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 32, 32\)"):
        model(torch.rand(2, 32, 32))
    with pytest.raises(ValueError, match="float images"):
        model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="location_std"):
        RamConfig(location_std=0.0)


def _loss_and_grads(noise_seed: int):
    seed_everything(0)
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    x = torch.rand(8, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.arange(8) % 10
    torch.manual_seed(noise_seed)
    loss, _ = model.loss(x, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_determinism():
    loss_a, grads_a = _loss_and_grads(5)
    loss_b, grads_b = _loss_and_grads(5)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    loss_c, _ = _loss_and_grads(6)
    assert not torch.equal(loss_a, loss_c)  # the location noise comes from the global torch RNG


def test_restoring_the_rng_state_repeats_the_locations():
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    x = torch.rand(4, 1, 32, 32)
    state = torch.get_rng_state()
    first = model(x).locations
    torch.set_rng_state(state)
    assert torch.equal(model(x).locations, first)


def test_overfits_one_batch(one_thread):
    """16 blocky images with random labels: the hybrid loss drives the evaluation loss (locations at
    the mean) from chance to near zero."""
    seed_everything(0)
    cfg = RamConfig(**{**SMALL, "glimpse_hidden": 128, "glimpse_size": 128, "hidden": 128})
    model = RecurrentAttentionModel(cfg)
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(16, 1, 4, 4, generator=g), size=(32, 32), mode="nearest")
    y = torch.randint(0, 10, (16,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.eval()
    first = model.loss(x, y)[0].item()
    model.train()
    for _ in range(300):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    last = model.loss(x, y)[0].item()
    assert first > 2.0 and last < 0.1, (first, last)
    assert torch.equal(model.predict(x)[:, -1], y)


def test_table1_setting_counts():
    model = RecurrentAttentionModel(RamConfig())  # 100 x 100, 8 glimpses, 12 x 12 at 4 scales, LSTM 256
    what = 4 * 144 * 128 + 128
    where = 2 * 128 + 128
    combine = 2 * (128 * 256 + 256)
    lstm = 4 * 256 * (256 + 256) + 2 * 4 * 256
    heads = (256 * 2 + 2) + (256 + 1) + (256 * 10 + 10)
    assert model.param_count() == what + where + combine + lstm + heads
    assert model.flops_per_image(train=True) == 3 * model.flops_per_image()
    assert model(torch.rand(2, 1, 100, 100)).logits.shape == (2, 8, 10)


def test_the_crop_and_pool_reference_gives_the_same_training_step():
    """models/reference/naive_ram.py (crop and pool at every glimpse) and the integral-image model, one
    state dict and one RNG stream: the same locations, loss and gradients (8-bit pixels, float32)."""
    from models.reference.naive_ram import NaiveRAM

    cfg = RamConfig(**SMALL)
    fast, naive = RecurrentAttentionModel(cfg), NaiveRAM(cfg)
    naive.load_state_dict(fast.state_dict())
    x = torch.randint(0, 256, (6, 1, 32, 32)).float() / 255
    y = torch.arange(6)
    results = []
    for model in (fast, naive):
        torch.manual_seed(3)
        loss, out = model.loss(x, y)
        loss.backward()
        results.append((loss, out.locations, {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, loc_a, grad_a), (loss_b, loc_b, grad_b) = results
    torch.testing.assert_close(loc_a, loc_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_model_speed_times_ram_against_its_reference():
    from bench import model_speed

    r = model_speed.measure("ram", 1, rounds=1, batch=4, variants=("fast", "naive"), clock="cpu")
    assert r["batch"] == 4 and r["fast_s"] > 0 and r["naive_s"] > 0 and "naive_over_fast" in r
    assert "fast_torch_path_s" not in r  # RAM has no native loops to switch off


def test_relu_core_is_the_papers_rectifier_network():
    """core="relu": replayed in float64 with nn.RNNCell(relu) at the same locations, h_t and the logits
    agree; the parameter count and FLOPs follow the smaller core."""
    cfg = RamConfig(**SMALL, core="relu")
    model = RecurrentAttentionModel(cfg).double()
    assert isinstance(model.core, torch.nn.RNNCell) and model.core.nonlinearity == "relu"
    x = torch.rand(5, 1, 32, 32, dtype=torch.float64)
    out = model(x, sample=False)
    h = torch.zeros(5, cfg.hidden, dtype=torch.float64)
    hs = []
    with torch.no_grad():
        for t in range(cfg.glimpses):
            loc = torch.tanh(model.locate(h)).clamp(-1, 1)
            torch.testing.assert_close(loc, out.locations[:, t], rtol=1e-12, atol=1e-12)
            h = model.core(model.glimpse(x, loc), h)
            hs.append(h)
    torch.testing.assert_close(model.head(torch.stack(hs, 1)), out.logits, rtol=1e-10, atol=1e-12)
    lstm = RecurrentAttentionModel(RamConfig(**SMALL))
    k, g = cfg.hidden, cfg.glimpse_size
    assert lstm.param_count() - model.param_count() == 3 * k * (g + k) + 3 * 2 * k
    assert model.flops_per_image() < lstm.flops_per_image()
    with pytest.raises(ValueError, match="core must be one of"):
        RamConfig(core="gru")


def test_samples_run_each_image_as_m_episodes():
    """samples = M: the training loss is that of the batch with every image repeated M times (same
    noise stream), each copy drawing its own locations; evaluation runs each image once."""
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([1, 4, 7])
    torch.manual_seed(0)
    single = RecurrentAttentionModel(RamConfig(**SMALL))
    multi = RecurrentAttentionModel(RamConfig(**SMALL, samples=4))
    multi.load_state_dict(single.state_dict())
    torch.manual_seed(9)
    loss_m, out_m = multi.loss(x, y)
    torch.manual_seed(9)
    loss_1, out_1 = single.loss(x.repeat_interleave(4, 0), y.repeat_interleave(4, 0))
    assert out_m.logits.shape[0] == 12 and torch.equal(loss_m, loss_1)
    assert not torch.equal(out_m.locations[0], out_m.locations[1])  # copies of one image explore apart
    multi.eval()
    assert multi.loss(x, y)[1].logits.shape[0] == 3
    assert multi.flops_per_image(train=True) == 4 * single.flops_per_image(train=True)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        RamConfig(samples=0)


def test_given_noise_sets_the_locations_and_is_checked():
    """The harness's keyed noise: the locations are mean + std * noise[t], whatever the global RNG."""
    model = RecurrentAttentionModel(RamConfig(**SMALL))
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(SMALL["glimpses"], 4, 2, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    a = model(x, noise=noise)
    torch.manual_seed(1)
    b = model(x, noise=noise)
    assert torch.equal(a.locations, b.locations)
    std = model.config.location_std
    mean = model.location_mean(torch.zeros(4, model.config.hidden))
    assert torch.allclose(a.locations[:, 0], (mean + std * noise[0]).clamp(-1, 1))
    with pytest.raises(ValueError, match=r"noise must have shape \(T, B, 2\)"):
        model(x, noise=noise[:, :3])
