"""bench/location_probe.py: the linear probes of where the digit is, against closed-form references, and
end to end through `python -m bench.attention_errors --probe` on small classifier and RAM checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import attention_errors, location_probe
from datasets.cliargs import UsageError
from models.classifier import ClassifierConfig, GlimpseClassifier
from models.ram import RamConfig, RecurrentAttentionModel
from tests.test_attention_errors import tiny_checkpoint


def _ridge_r2_reference(features, target, split, alpha):
    """Ridge with an unpenalised intercept in closed form (centre, then solve the normal equations)."""
    x, y = features[:split], target[:split]
    mx, my = x.mean(0), y.mean(0)
    w = np.linalg.solve((x - mx).T @ (x - mx) + alpha * np.eye(x.shape[1]), (x - mx).T @ (y - my))
    pred = (features[split:] - mx) @ w + my
    held = target[split:]
    return np.mean(1 - ((pred - held) ** 2).sum(0) / ((held - held.mean(0)) ** 2).sum(0))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(10, 60), d=st.integers(1, 6), seed=st.integers(0, 2 ** 16))
def test_held_out_r2_is_the_closed_form_ridge_s(n, d, seed):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, d))
    target = features @ rng.normal(size=(d, 2)) + rng.normal(size=(n, 2))
    split = int(n * location_probe.TRAIN_SHARE)
    assert location_probe.held_out_r2(features, target) == pytest.approx(
        _ridge_r2_reference(features, target, split, location_probe.RIDGE_ALPHA), rel=1e-7, abs=1e-9)


def test_r2_is_one_for_the_centres_themselves_and_zero_for_their_mean():
    target = np.array([[1.0, 2], [3, 7], [5, 1], [2, 2]])
    assert location_probe.r2(target, target) == 1.0
    assert location_probe.r2(np.broadcast_to(target.mean(0), target.shape), target) == 0.0


def test_features_that_hold_the_centre_read_near_one_and_noise_near_zero_or_below():
    rng = np.random.default_rng(0)
    centre = rng.uniform(10, 90, size=(2000, 2))
    knows = np.concatenate([centre / 50 - 1, rng.normal(size=(2000, 30))], 1)
    assert location_probe.held_out_r2(knows, centre) > 0.99
    assert location_probe.held_out_r2(rng.normal(size=(2000, 30)), centre) < 0.02


def test_too_few_images_or_one_place_is_refused_with_what_to_change():
    with pytest.raises(UsageError, match="--limit"):
        location_probe.held_out_r2(np.zeros((4, 3)), np.arange(8.0).reshape(4, 2))
    with pytest.raises(UsageError, match="do not vary"):
        location_probe.r2(np.zeros((5, 2)), np.ones((5, 2)))


@pytest.mark.parametrize("kind", ["classifier", "ram"])
def test_the_recorded_states_are_those_the_head_reads(kind):
    torch.manual_seed(0)
    model = (GlimpseClassifier(ClassifierConfig(height=32, width=32, glimpses=3, read_n=4, hidden=16))
             if kind == "classifier" else
             RecurrentAttentionModel(RamConfig(height=32, width=32, glimpses=3, patch=6, scales=2, glimpse_hidden=16,
                                               location_hidden=8, glimpse_size=16, hidden=16))).eval()
    recorder = location_probe.StateRecorder(model)
    x = torch.rand(5, 1, 32, 32)
    with torch.no_grad():
        logits = model(x).logits
        model(x[:2])
    states = recorder.take()
    assert states.shape == (7, 3, 16)
    torch.testing.assert_close(model.head(torch.from_numpy(states[:5]).float()), logits)
    with torch.no_grad():
        model(x)
    assert len(recorder.states) == 2, "take() removes the hook"


@pytest.mark.parametrize("kind", ["classifier", "ram"])
def test_probe_runs_end_to_end_and_prints_one_line_per_glimpse(kind, tmp_path, capsys, mnist_data):
    path = tiny_checkpoint(tmp_path, kind)
    r = attention_errors.analyse(str(path), "valid", limit=60, probe=True)
    pr = r["probe"]
    assert len(pr["state_r2"]) == len(pr["glimpse_r2"]) == 3 and all(v <= 1 for v in pr["state_r2"])
    assert (pr["first_retina_r2"] is None) == (kind == "classifier")
    plain = attention_errors.analyse(str(path), "valid", limit=60)
    assert "probe" not in plain and plain["error"] == r["error"] and plain["per_step"] == r["per_step"]
    text = attention_errors.format_result(r)
    assert text.count("\n") == attention_errors.format_result(plain).count("\n") + 1 + 3 + (kind == "ram")
    assert attention_errors.main([str(path), "--limit", "3", "--probe"]) == 2
    assert "raise --limit" in capsys.readouterr().err
