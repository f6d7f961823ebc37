"""bench/convergence.py: the verdict on whether a model's validation figure was still improving when its
training ended, against curves whose answer is known, and a property against a direct reading of the rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import convergence


def curve(values, metric="valid_error", first_epoch=1):
    return [{"epoch": first_epoch + i, "images_seen": 50_000 * (first_epoch + i), metric: v}
            for i, v in enumerate(values)]


def test_a_curve_still_falling_is_improving_and_says_by_how_much():
    result = convergence.verdict(curve([0.10 - 0.002 * i for i in range(30)]), "valid_error")
    assert result["status"] == "improving" and result["best_epoch"] == 30
    assert result["gain"] == pytest.approx(0.02)
    assert convergence.describe(result) == "still improving (best valid fell 2.00 pts in the last 10 epochs)"


def test_a_curve_with_no_new_best_in_ten_epochs_is_flat():
    values = [0.10, 0.08, 0.05, 0.06, 0.055] + [0.052, 0.058] * 5
    result = convergence.verdict(curve(values), "valid_error")
    assert result["status"] == "flat" and result["best_epoch"] == 3 and result["best"] == 0.05
    assert convergence.describe(result) == "flat for the last 10 epochs (best valid at epoch 3)"


def test_a_gain_within_the_tolerance_is_flat_and_one_beyond_it_is_not():
    flat = curve([90.0] * 5 + [89.95] + [90.0] * 9, "valid_nll_elbo")  # 0.05 nats: within 0.1
    assert convergence.verdict(flat, "valid_nll_elbo")["status"] == "flat"
    assert convergence.describe(convergence.verdict(flat, "valid_nll_elbo")).startswith("flat (best valid fell only")
    falling = curve([90.0] * 5 + [89.8] + [90.0] * 9, "valid_nll_elbo")
    assert convergence.verdict(falling, "valid_nll_elbo")["status"] == "improving"



@pytest.mark.parametrize("before, after", [(0.0486, 0.0476), (0.0523, 0.0513), (0.0100, 0.0090)])
def test_a_gain_of_exactly_the_tolerance_is_flat_however_it_rounds(before, after):
    # 10 of 10,000 validation images; 0.0523 - 0.0513 is 0.0010000000000000009 in float64
    result = convergence.verdict(curve([before] * 5 + [after] * 10), "valid_error")
    assert result["status"] == "flat" and result["gain"] == pytest.approx(0.001)
    assert convergence.verdict(curve([before] * 5 + [after - 0.0001] * 10), "valid_error")["status"] == "improving"

def test_ten_epochs_or_fewer_are_too_short_to_judge():
    assert convergence.verdict(curve([0.5] * 10), "valid_error")["status"] == "short"
    assert convergence.verdict([], "valid_error") == {"metric": "valid_error", "window": 10, "tolerance": 0.001,
                                                      "last_epoch": None, "status": "short"}


def test_a_restart_replaces_the_epochs_it_went_back_over():
    """An extension restarted its decay from epoch 6: the first sitting's epochs 6-15 (which had fallen)
    are no longer the model's history, the second sitting's (flat) are."""
    first = curve([0.2, 0.15, 0.12, 0.11, 0.10, 0.09, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02, 0.01, 0.005])
    second = curve([0.10] * 15, first_epoch=6)
    kept = convergence.latest_epochs(first + second, "valid_error")
    assert [e["epoch"] for e in kept] == list(range(1, 21)) and kept[-1] is second[-1]
    assert convergence.verdict(first + second, "valid_error")["status"] == "flat"


def test_partial_epochs_and_points_without_the_metric_are_left_out():
    points = curve([0.3] * 12 + [0.1])
    points[-1]["partial_epoch"] = True
    points.insert(3, {"epoch": 3.5, "images_seen": 0, "train_loss": 1.0})
    assert convergence.verdict(points, "valid_error")["status"] == "flat"


def test_the_metric_is_read_off_the_curve_and_an_unknown_one_needs_a_tolerance():
    assert convergence.metric_of(curve([1.0], "valid_nll_elbo")) == "valid_nll_elbo"
    assert convergence.metric_of(curve([0.1])) == "valid_error"
    assert convergence.metric_of([{"epoch": 1, "train_loss": 2.0}]) is None
    with pytest.raises(ValueError, match="no tolerance known for 'valid_auc'"):
        convergence.verdict(curve([0.1], "valid_auc"), "valid_auc")
    assert convergence.verdict(curve([0.1] * 12, "valid_auc"), "valid_auc", tolerance=0.0)["status"] == "flat"


@given(st.lists(st.floats(0.0, 1.0), min_size=11, max_size=40), st.integers(1, 10))
def test_the_verdict_follows_the_rule(values, window):
    """Improving exactly when the best of the last ``window`` points beats the best before them by more
    than the tolerance; the best reported is the curve's best."""
    result = convergence.verdict(curve(values), "valid_error", window=window)
    gain = min(values[:-window]) - min(values[-window:])
    assert result["status"] == ("improving" if gain > 0.001 + convergence.ROUNDING else "flat")
    assert result["best"] == min(values)
    assert values[result["best_epoch"] - 1] == min(values)
