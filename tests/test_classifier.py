"""Glimpse classifier: shapes for every option, parity with the naive reference, overfit,
determinism, checkpoints, FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from models import flops
from models.classifier import ClassifierConfig, GlimpseClassifier, evaluate
from models.reference.naive_classifier import NaiveGlimpseClassifier
from models.training import seed_everything

SMALL = dict(height=12, width=16, glimpses=3, read_n=4, hidden=16, num_classes=5)

OPTIONS = [
    dict(),
    dict(attention=False),
    dict(glimpses=1),
    dict(height=9, width=21),
    dict(channels=3),
    dict(per_step_loss=True),
    dict(channels=2, attention=False, glimpses=1, per_step_loss=True),
]


def images(cfg: ClassifierConfig, batch: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.channels, cfg.height, cfg.width, generator=g, dtype=dtype)


@pytest.mark.parametrize("opts", OPTIONS)
def test_shapes(opts):
    cfg = ClassifierConfig(**{**SMALL, **opts})
    model = GlimpseClassifier(cfg)
    x = images(cfg, 3)
    out = model(x)
    assert out.logits.shape == (3, cfg.glimpses, cfg.num_classes)
    if cfg.attention:
        assert len(out.windows) == cfg.glimpses
        for w in out.windows:
            assert w.fx.shape == (3, cfg.read_n, cfg.width) and w.fy.shape == (3, cfg.read_n, cfg.height)
            assert w.gx.shape == w.gamma.shape == (3,)
    else:
        assert out.windows is None
    loss, _ = model.loss(x, torch.tensor([0, 1, 4]))
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():  # with T = 1, h_0 = 0 never meets weight_hh
        assert p.grad is not None or (name == "lstm.weight_hh" and cfg.glimpses == 1), name
    assert model.predict(x).shape == (3, cfg.glimpses)


@pytest.mark.parametrize("opts", OPTIONS)
def test_parity_with_naive_float64(opts):
    """Same weights in both: logits, loss and every gradient agree."""
    cfg = ClassifierConfig(**{**SMALL, **opts})
    torch.manual_seed(1)
    fast = GlimpseClassifier(cfg).double()
    naive = NaiveGlimpseClassifier(cfg).double()
    naive.load_state_dict(fast.state_dict())
    x = images(cfg, 5, torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    lf, of = fast.loss(x, y)
    ln, on = naive.loss(x, y)
    torch.testing.assert_close(of.logits, on.logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(lf, ln, rtol=1e-9, atol=1e-9)
    lf.backward()
    ln.backward()
    gn = dict(naive.named_parameters())
    for name, p in fast.named_parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad  # weight_hh when T = 1
        torch.testing.assert_close(grad, gn[name].grad, rtol=1e-7, atol=1e-9, msg=name)


def test_parity_default_config_float32():
    cfg = ClassifierConfig()
    torch.manual_seed(2)
    fast, naive = GlimpseClassifier(cfg), NaiveGlimpseClassifier(cfg)
    naive.load_state_dict(fast.state_dict())
    x = images(cfg, 4)
    with torch.no_grad():
        torch.testing.assert_close(fast(x).logits, naive(x).logits, rtol=1e-4, atol=1e-5)


def test_windows_move_with_hidden_state():
    """Step 1's window is the same for every image (h_0 = 0); later windows depend on the image."""
    cfg = ClassifierConfig(**SMALL)
    torch.manual_seed(3)
    out = GlimpseClassifier(cfg)(images(cfg, 4))
    first, second = out.windows[0], out.windows[1]
    assert torch.equal(first.gx, first.gx[:1].expand(4)) and torch.equal(first.fx[0], first.fx[3])
    assert not torch.allclose(second.gx, second.gx[:1].expand(4))


def test_per_step_loss_is_mean_of_step_cross_entropies():
    cfg = ClassifierConfig(**{**SMALL, "per_step_loss": True})
    torch.manual_seed(4)
    model = GlimpseClassifier(cfg)
    x, y = images(cfg, 6), torch.tensor([0, 1, 2, 3, 4, 0])
    loss, out = model.loss(x, y)
    want = torch.stack([F.cross_entropy(out.logits[:, t], y) for t in range(cfg.glimpses)]).mean()
    torch.testing.assert_close(loss, want)
    last, _ = GlimpseClassifier(cfg.replace(per_step_loss=False)).loss(x, y)
    assert last.shape == ()


def test_bad_input_is_a_clear_error():
    model = GlimpseClassifier(ClassifierConfig(**SMALL))
    with pytest.raises(ValueError, match=r"expects images \(B, 1, 12, 16\), got \(2, 12, 16\)"):
        model(torch.rand(2, 12, 16))
    with pytest.raises(ValueError, match="float images"):
        model(torch.zeros(2, 1, 12, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="glimpses must be >= 1"):
        ClassifierConfig(glimpses=0)


def _train(seed: int, steps: int, per_step: bool = False) -> tuple[GlimpseClassifier, list[float]]:
    seed_everything(seed)
    # Random-noise images are memorised through sharp pixel samples; the smooth "cover" windows
    # average the noise away at first, so this machinery test starts from the ports' init.
    cfg = ClassifierConfig(**{**SMALL, "per_step_loss": per_step, "window_init": "default"})
    model = GlimpseClassifier(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    x, y = images(cfg, 16, seed=seed), torch.arange(16) % cfg.num_classes
    losses = []
    for _ in range(steps):
        loss = model.loss(x, y)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        losses.append(loss.item())
    return model, losses


@pytest.mark.parametrize("per_step", [False, True])
def test_overfits_one_batch(per_step):
    _, losses = _train(0, 80, per_step)
    # With the loss at every step, step 1 (one window shared by all images) learns slowest.
    assert losses[-1] < losses[0] / (10 if per_step else 20), losses[::10]


def test_same_seed_same_parameters():
    a, _ = _train(5, 4)
    b, _ = _train(5, 4)
    c, _ = _train(6, 4)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(a.head.weight, c.head.weight)


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    """Weights and Adam state through the harness's checkpoint file; the stored config rebuilds the model."""
    from bench import checkpoints

    model, _ = _train(7, 2)
    cfg = model.config
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.loss(images(cfg, 4), torch.arange(4))[0].backward()
    opt.step()
    checkpoints.save(tmp_path / "clf.pt", {"task": {"model": cfg.to_dict()}, "model": model.state_dict(),
                                           "optimizer": opt.state_dict()})
    state = checkpoints.load(tmp_path / "clf.pt")
    model2 = GlimpseClassifier(ClassifierConfig.from_dict(state["task"]["model"]))
    opt2 = torch.optim.Adam(model2.parameters(), lr=1e-3)
    model2.load_state_dict(state["model"])
    opt2.load_state_dict(state["optimizer"])
    x = images(cfg, 5, seed=9)
    assert torch.equal(model(x).logits, model2(x).logits)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        GlimpseClassifier(cfg.replace(read_n=6)).load_state_dict(state["model"])


def test_flops_hand_count():
    """A config small enough to count by hand: 1 channel, 2x3 image, n=2, hidden 1, 2 classes, T=2."""
    cfg = ClassifierConfig(height=2, width=3, glimpses=2, read_n=2, hidden=1, num_classes=2)
    model = GlimpseClassifier(cfg)
    lstm = 2 * (4 + 1) * 4 + 4 + 5 + 4  # input 2*2 glimpse + hidden 1 -> 4 gates; bias; pointwise
    window = (2 * 1 * 5 + 5) + 10 + (2 * 2 + 6 * 2 * 3) + (2 * 2 + 6 * 2 * 2)  # head, transforms, Fx, Fy
    read = 2 * 2 * 3 * 2 + 2 * 2 * 2 * 2 + 4  # (2x3)@(3x2), (2x2)@(2x2), gamma
    head = 2 * 1 * 2 + 2 + 5 * 2  # linear + softmax cross-entropy
    per_step = lstm + window + read + head
    assert model.flops_per_image() == 2 * per_step
    assert model.flops_per_image(train=True) == 3 * 2 * per_step
    assert model.param_count() == (4 * 4 + 4 * 1 + 4 + 4) + (5 * 1 + 5) + (2 * 1 + 2)
    full = GlimpseClassifier(cfg.replace(attention=False))
    assert full.flops_per_image() == 2 * (flops.lstm_cell(6, 1) + head)


def test_default_config_counts():
    model = GlimpseClassifier()
    assert model.config.to_dict() == dict(height=100, width=100, channels=1, glimpses=8, read_n=12, hidden=256,
                                          num_classes=10, attention=True, per_step_loss=False, window_init="cover")
    # LSTM (144 + 256) x 1024 + 2 biases, window head 256 x 5 + 5, softmax 256 x 10 + 10
    assert model.param_count() == 400 * 1024 + 2 * 1024 + 256 * 5 + 5 + 2570
    assert 8 * 2 * 400 * 1024 < model.flops_per_image() < 8 * 2 * 400 * 1024 + 8 * 400_000


def test_evaluate_matches_predict():
    cfg = ClassifierConfig(**SMALL)
    torch.manual_seed(8)
    model = GlimpseClassifier(cfg)
    x, y = images(cfg, 11), torch.arange(11) % cfg.num_classes
    err = evaluate(model, x, y, batch_size=4)
    want = (model.predict(x) != y[:, None]).double().mean(dim=0)
    assert err.shape == (cfg.glimpses,)
    torch.testing.assert_close(err, want)


def test_a_classifier_without_attention_is_recorded_as_such():
    from bench.suites import ClassifierJob
    from bench.tasks import ClassifierTask

    for attention, kind in ((True, "soft"), (False, "none")):
        job = ClassifierJob(dataset="cluttered60", glimpses=(2,), model=ClassifierConfig(attention=attention))
        task = ClassifierTask(job, 2, 0)
        assert task.metric_params(task.build())["attention_type"] == kind


def test_images_of_another_float_type_than_the_weights_are_refused_clearly():
    model = GlimpseClassifier(ClassifierConfig(height=8, width=8, read_n=2, hidden=4, glimpses=2))
    with pytest.raises(ValueError, match=r"images are torch.float64 and its weights torch.float32: cast"):
        model(torch.rand(2, 1, 8, 8, dtype=torch.float64))
