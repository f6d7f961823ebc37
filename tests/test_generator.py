"""The generator on synthetic pools: parameters, layout bounds, compositing, chunking, binarization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datasets.generator import DIGIT, NPZ_KEYS, Plan, Spec, SpecError, draw_plan, render


def reference_render(spec: Spec, arrays: dict, images: np.ndarray) -> np.ndarray:
    """An independent compositor: one image at a time, plain slices, a wide integer canvas."""
    n = arrays["digit_source"].shape[0]
    out = np.zeros((n, spec.height, spec.width), dtype=np.int64)
    c = spec.crop
    for i in range(n):
        for d in range(spec.n_digits):
            x, y = arrays["digit_xy"][i, d]
            out[i, y:y + DIGIT, x:x + DIGIT] += images[arrays["digit_source"][i, d]]
        for k in range(spec.n_distractors):
            cx, cy = arrays["distractor_crop_xy"][i, k]
            x, y = arrays["distractor_xy"][i, k]
            out[i, y:y + c, x:x + c] += images[arrays["distractor_source"][i, k], cy:cy + c, cx:cx + c]
    return np.minimum(out, 255).astype(np.uint8)


def synthetic_pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, DIGIT, DIGIT), dtype=np.uint8)
    images[rng.random(images.shape) < 0.5] = 0  # sparse like digits, with overlapping sums above 255
    return images, rng.integers(0, 10, size=n)


def make(spec: Spec, pool: int = 40, lo: int = 3, hi: int = 33, seed: int = 0) -> tuple[Plan, np.ndarray, np.ndarray]:
    images, labels = synthetic_pool(pool, seed)
    plan = draw_plan(spec, labels, lo, hi, np.random.default_rng(seed))
    if spec.binarize:
        plan.binarize_seed = np.random.SeedSequence(seed)
    return plan, images, labels


@settings(max_examples=40, deadline=None)
@given(h=st.integers(28, 64), w=st.integers(28, 64), crop=st.integers(1, 28), k=st.integers(0, 4),
       d=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_any_canvas_and_crop_layout_bounds_and_compositing(h, w, crop, k, d, seed):
    spec = Spec(height=h, width=w, n_digits=d, n_distractors=k, crop=crop)
    lo, hi = 5, 5 + 3 + 2 * d
    plan, images, labels = make(spec, pool=hi + 4, lo=lo, hi=hi, seed=seed)
    n = hi - lo
    a = plan.arrays()
    assert a["digit_source"].shape == (n, d) and a["digit_xy"].shape == (n, d, 2)
    assert a["distractor_source"].shape == (n, k) and a["distractor_xy"].shape == (n, k, 2)
    assert all(a[key].dtype == np.int64 for key in a)
    for col in range(d):  # every pool digit exactly once per column
        assert sorted(a["digit_source"][:, col]) == list(range(lo, hi))
    if d > 1:  # never the same MNIST digit twice in one image
        assert all(len(set(row)) == d for row in a["digit_source"].tolist())
    assert np.array_equal(np.atleast_2d(a["labels"].T).T.reshape(n, d), labels[a["digit_source"]])
    limits = np.array([w, h])
    assert (a["digit_xy"] >= 0).all() and (a["digit_xy"] <= limits - DIGIT).all()
    assert (a["distractor_xy"] >= 0).all() and (a["distractor_xy"] <= limits - crop).all()
    assert (a["distractor_crop_xy"] >= 0).all() and (a["distractor_crop_xy"] <= DIGIT - crop).all()
    assert ((a["distractor_source"] >= lo) & (a["distractor_source"] < hi)).all()

    whole = render(spec, plan, images)
    assert whole.dtype == np.uint8 and whole.shape == (n, h, w)
    assert np.array_equal(whole, reference_render(spec, a, images))
    cut = np.random.default_rng(seed).integers(1, n)
    assert np.array_equal(np.concatenate([render(spec, plan, images, slice(0, cut)),
                                          render(spec, plan, images, slice(cut, None))]), whole)
    perm = np.random.default_rng(seed + 1).permutation(n)
    assert np.array_equal(render(spec, plan, images, perm), whole[perm])


def test_every_position_reachable_both_ends_inclusive():
    spec = Spec(height=40, width=34, n_digits=1, n_distractors=3, crop=5)
    plan, _, _ = make(spec, pool=4000, lo=0, hi=4000)
    for key, hi in (("digit_xy", (34 - DIGIT, 40 - DIGIT)), ("distractor_xy", (34 - 5, 40 - 5)),
                    ("distractor_crop_xy", (DIGIT - 5, DIGIT - 5))):
        xy = getattr(plan, key).reshape(-1, 2)
        for axis in (0, 1):
            assert np.array_equal(np.unique(xy[:, axis]), np.arange(hi[axis] + 1)), key
    many, _, _ = make(spec.replace(n_distractors=40), pool=60, lo=10, hi=60)  # 2000 draws over 50 digits
    assert np.array_equal(np.unique(many.distractor_source), np.arange(10, 60))  # first and last can be picked


def test_compositing_saturates_in_integers():
    spec = Spec(height=28, width=28, n_digits=1, n_distractors=2, crop=28)
    images = np.full((3, DIGIT, DIGIT), 100, dtype=np.uint8)
    images[1] = 200
    plan = Plan(labels=np.zeros(1, np.int64), digit_source=np.array([[1]]), digit_xy=np.zeros((1, 1, 2), np.int64),
                distractor_source=np.array([[0, 2]]), distractor_crop_xy=np.zeros((1, 2, 2), np.int64),
                distractor_xy=np.zeros((1, 2, 2), np.int64))
    assert (render(spec, plan, images) == 255).all()  # 200 + 100 + 100 clips to 255, no wrap-around
    plan.distractor_source[:] = 0
    plan.digit_source[:] = 0
    images[0] = 50
    assert (render(spec, plan, images) == 150).all()


def test_plan_is_deterministic_and_seed_sensitive():
    spec = Spec(height=60, width=60, n_digits=2, n_distractors=4)
    a, _, _ = make(spec, seed=7)
    b, _, _ = make(spec, seed=7)
    c, _, _ = make(spec, seed=8)
    for key in NPZ_KEYS[1:]:
        assert np.array_equal(getattr(a, key), getattr(b, key))
    assert not np.array_equal(a.digit_xy, c.digit_xy)


def test_binarization_values_probability_and_chunk_invariance():
    spec = Spec(height=28, width=28, n_digits=1, n_distractors=0, binarize=True)
    images = np.zeros((2000, DIGIT, DIGIT), dtype=np.uint8)
    images[:, :14] = 51  # p = 0.2
    images[:, 14:20] = 255  # always on
    plan = draw_plan(spec, np.zeros(2000, np.int64), 0, 2000, np.random.default_rng(0))
    plan.binarize_seed = np.random.SeedSequence(3)
    x = render(spec, plan, images)
    assert set(np.unique(x)) == {0, 255}
    assert (x[:, 14:20] == 255).all() and (x[:, 20:] == 0).all()
    frac = (x[:, :14] == 255).mean()  # 784,000 Bernoulli(0.2) draws: sd 0.00045
    assert abs(frac - 0.2) < 0.003
    idx = np.random.default_rng(1).permutation(2000)[:300]
    assert np.array_equal(render(spec, plan, images, idx), x[idx])
    chunks = [render(spec, plan, images, slice(s, s + 333)) for s in range(0, 2000, 333)]
    assert np.array_equal(np.concatenate(chunks), x)
    plan.binarize_seed = np.random.SeedSequence(4)
    assert not np.array_equal(render(spec, plan, images), x)


def test_binarized_render_needs_a_seed():
    spec = Spec(height=28, width=28, n_distractors=0, binarize=True)
    plan, images, _ = make(spec.replace(binarize=False))
    with pytest.raises(ValueError, match="binarize_seed"):
        render(spec, plan, images)


@pytest.mark.parametrize("kwargs, message", [
    ({"height": 27}, "smaller than a 28x28 digit"),
    ({"width": 20}, "smaller than a 28x28 digit"),
    ({"n_distractors": -1}, "n_distractors must be >= 0"),
    ({"n_digits": 0}, "n_digits must be >= 1"),
    ({"n_digits": -2}, "n_digits must be >= 1"),
    ({"crop": 29}, "crop must be between 1 and 28"),
    ({"crop": 0}, "crop must be between 1 and 28"),
    ({"height": 60.0}, "height must be an integer"),
    ({"n_distractors": True}, "n_distractors must be an integer"),
    ({"binarize": "yes"}, "binarize must be True or False"),
])
def test_invalid_parameters_give_clear_errors(kwargs, message):
    with pytest.raises(SpecError, match=message):
        Spec(**kwargs)


def test_spec_round_trips_and_rejects_unknown_fields():
    spec = Spec(height=60, width=50, n_digits=2, n_distractors=3, crop=6, binarize=True, fresh_train=False)
    assert Spec.from_dict(spec.to_dict()) == spec
    with pytest.raises(SpecError, match="unknown Spec field"):
        Spec.from_dict({"canvas": 60})


def test_pool_too_small_for_distinct_digits():
    spec = Spec(height=60, width=60, n_digits=3, n_distractors=0)
    with pytest.raises(SpecError, match="cannot fill"):
        draw_plan(spec, np.zeros(10, np.int64), 0, 2, np.random.default_rng(0))


def test_render_rejects_a_bad_out_buffer():
    spec = Spec(height=60, width=60, n_distractors=1)
    plan, images, _ = make(spec)
    with pytest.raises(ValueError, match="C-contiguous uint8"):
        render(spec, plan, images, slice(0, 4), out=np.empty((4, 60, 60), np.int16))
