"""NLL bounds: IWAE <= ELBO, K = 1 is the one-sample ELBO, the scale of an untrained model, inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.bounds import as_images, elbo_bound, iwae_bound
from models.draw import DRAW, DRAWConfig

CFG = DRAWConfig(steps=4, enc_hidden=24, dec_hidden=20, z_size=6)


pytestmark = pytest.mark.usefixtures("one_thread")


def model(seed=0, spread=1.0):
    torch.manual_seed(seed)
    m = DRAW(CFG)
    with torch.no_grad():
        m.posterior.weight.mul_(spread)  # spread > 1: a posterior away from the prior, a visible IWAE gap
    return m


def data(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) < 0.3).float()


def test_elbo_parts_add_up_and_match_forward():
    m = model()
    x = data(10)
    r = elbo_bound(m, [x[:4], x[4:]], seed=1)
    assert r["n_images"] == 10 and len(r["kl_per_step"]) == CFG.steps
    assert math.isclose(r["nll_elbo"], r["reconstruction"] + r["kl"], rel_tol=1e-12)
    assert math.isclose(sum(r["kl_per_step"]), r["kl"], rel_tol=1e-9)
    # Same noise stream as elbo_bound's: one generator, batch after batch.
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        outs = [m(xb, generator=g) for xb in (x[:4], x[4:])]
    want = torch.cat([o.loss for o in outs]).double().mean().item()
    assert math.isclose(r["nll_elbo"], want, rel_tol=1e-6)
    assert m.training  # the mode is restored


def test_iwae_k1_equals_the_one_sample_elbo_for_the_same_noise():
    m = model(spread=3.0)
    x = data(6)
    got = iwae_bound(m, [x], k=1, seed=7, progress=False)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        lw = m(x, noise=torch.randn(CFG.steps, 6, CFG.z_size, generator=g)).log_weight
    assert got["k"] == 1 and got["n_images"] == 6
    assert got["nll_iwae"] == pytest.approx(-lw.double().mean().item(), rel=1e-6)


def test_noise_and_reduce_hooks():
    """A NoiseFn gets (start, count, samples) in evaluation order and its eps are the ones used;
    reduce sees the float64 sums (images last) before they are divided."""
    m = model(spread=3.0)
    x = data(7)
    eps = torch.randn(CFG.steps, 7 * 3, CFG.z_size, generator=torch.Generator().manual_seed(3))
    calls, seen = [], []

    def noise(start, count, samples):
        calls.append((start, count, samples))
        rows = slice(start * samples, (start + count) * samples)
        return eps[:, rows]

    def reduce(sums):
        seen.append(sums.clone())
        return sums * 2  # e.g. two processes with the same numbers: the averages do not change

    one = eps[:, :7]  # one sample per image
    r = elbo_bound(m, [x[:3], x[3:]], noise=lambda a, c, s: one[:, a:a + c], reduce=reduce)
    with torch.no_grad():
        want = m(x, noise=one).loss.double().mean().item()
    assert r["nll_elbo"] == pytest.approx(want, rel=1e-6) and r["n_images"] == 14
    assert seen[0].dtype == torch.float64 and seen[0][-1] == 7
    got = iwae_bound(m, [x], k=3, chunk=6, noise=noise, progress=False)
    assert calls == [(0, 2, 3), (2, 2, 3), (4, 2, 3), (6, 1, 3)]  # chunk 6 rows = 2 images of 3 samples
    with torch.no_grad():
        lw = m(x.repeat_interleave(3, 0), noise=eps).log_weight.double().view(7, 3)
    want = -(torch.logsumexp(lw, 1) - math.log(3)).mean().item()
    assert got["nll_iwae"] == pytest.approx(want, rel=1e-6)
    assert got["nll_elbo_mc"] == pytest.approx(-lw.mean().item(), rel=1e-6)  # the same samples, averaged


def test_one_sample_elbo_is_unbiased_for_the_analytic_elbo():
    """mean over samples of -log w = -ELBO (the analytic-KL estimate), to within sampling error."""
    m = model(spread=10.0)
    x = data(1).expand(3000, -1, -1, -1)
    with torch.no_grad():
        out = m(x, generator=torch.Generator().manual_seed(0))
    d = (-out.log_weight - out.loss).double()
    assert out.kl.sum(1).mean() > 2
    assert abs(d.mean()) < 4 * d.std() / math.sqrt(len(d))


def test_iwae_is_below_elbo_and_tightens_with_k():
    m = model(spread=3.0)
    x = data(4)
    elbo = elbo_bound(m, [x.repeat_interleave(200, 0)], seed=0)["nll_elbo"]  # 200 samples per image
    iw = {k: iwae_bound(m, [x], k=k, chunk=512, seed=k, progress=False)["nll_iwae"] for k in (2, 200)}
    gap = elbo - iw[200]
    assert gap > 0.5, (elbo, iw)  # with K = 200 clearly tighter than the ELBO
    assert iw[200] < iw[2] < elbo + 0.2, (elbo, iw)
    paired = iwae_bound(m, [x], k=200, chunk=512, seed=200, progress=False)
    assert paired["nll_elbo_mc"] == pytest.approx(elbo, abs=0.5)  # the same ELBO, from the IWAE's samples
    assert paired["nll_elbo_mc"] - paired["nll_iwae"] == pytest.approx(gap, abs=0.5)


def test_untrained_model_scores_about_543_nats(mnist_data):
    """An untrained DRAW predicts about 0.5 per pixel: 28 * 28 * ln 2 = 543.4 nats, plus a small KL."""
    torch.manual_seed(0)
    m = DRAW(DRAWConfig(steps=8))  # paper sizes, fewer steps
    rng = np.random.default_rng(0)
    imgs = (rng.random((64, 28, 28)) < mnist_data[2][:64] / 255.0).astype(np.uint8) * 255  # binarized, uint8
    r = elbo_bound(m, [imgs[:32], imgs[32:]])
    assert abs(r["reconstruction"] - 28 * 28 * math.log(2)) < 15, r["reconstruction"]
    assert 0 < r["kl"] < 10 and r["n_images"] == 64


def test_limit_chunking_and_progress_lines():
    m = model()
    x = data(9)
    lines = []
    r = iwae_bound(m, [x[:5], (x[5:], torch.zeros(4))], k=3, chunk=6, limit=7, progress=True, log=lines.append)
    assert r["n_images"] == 7
    assert lines and "7/7 images" in lines[-1] and "IWAE k=3" in lines[-1]
    assert elbo_bound(m, [x], limit=2)["n_images"] == 2
    # Chunked differently with each image's noise keyed by its place: the same bound to rounding
    n = x.shape[0]
    eps = torch.randn(CFG.steps, n * 2, CFG.z_size, generator=torch.Generator().manual_seed(4))
    keyed = lambda start, count, samples: eps[:, start * samples:(start + count) * samples]  # noqa: E731
    a = iwae_bound(m, [x], k=2, chunk=2, noise=keyed, progress=False)["nll_iwae"]
    b = iwae_bound(m, [x], k=2, chunk=100, noise=keyed, progress=False)["nll_iwae"]
    assert a == pytest.approx(b, rel=1e-6)
    assert a != pytest.approx(iwae_bound(m, [x.flip(0)[:1].expand_as(x)], k=2, chunk=2, noise=keyed,
                                         progress=False)["nll_iwae"], rel=1e-6)  # other images: another bound


def test_input_handling_and_errors():
    assert as_images(np.full((2, 28, 28), 255, np.uint8)).shape == (2, 1, 28, 28)
    assert as_images(np.full((2, 28, 28), 255, np.uint8)).max() == 1.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_images(torch.full((2, 1, 4, 4), 3.0))
    with pytest.raises(ValueError, match="shape"):
        as_images(torch.zeros(28, 28))
    with pytest.raises(ValueError, match="dtype"):
        as_images(torch.zeros(2, 28, 28, dtype=torch.int64))
    m = model()
    with pytest.raises(ValueError, match="no images"):
        elbo_bound(m, [])
    with pytest.raises(ValueError, match="k"):
        iwae_bound(m, [data(2)], k=0)
    with pytest.raises(ValueError, match="limit"):
        elbo_bound(m, [data(2)], limit=0)


def test_float64_images_meet_a_float32_model():
    """Binarized MNIST read with np.loadtxt is float64: the bounds take it as the model's float32."""
    from models.draw import DRAW, DRAWConfig

    torch.manual_seed(0)
    m = DRAW(DRAWConfig(steps=2, height=6, width=6, enc_hidden=4, dec_hidden=4, z_size=2, read_n=2, write_n=2))
    x = (np.random.default_rng(0).random((4, 6, 6)) < 0.5).astype(np.float64)
    assert elbo_bound(m, [x])["nll_elbo"] == elbo_bound(m, [x.astype(np.float32)])["nll_elbo"]
    assert iwae_bound(m, [x], k=3)["nll_iwae"] == iwae_bound(m, [x.astype(np.float32)], k=3)["nll_iwae"]
