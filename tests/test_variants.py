"""The presets on real MNIST: splits, determinism, epochs, labels, leakage, rebuild from metadata."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_generator import reference_render

from datasets import variants as V
from datasets.generator import DIGIT, GENERATOR_VERSION, NPZ_KEYS, SpecError

REPO = Path(__file__).resolve().parent.parent
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# SHA-256 over the first 500 examples of every array (sorted keys) of test, seed 0. These pin the
# generator across machines and numpy versions: if one changes, bump GENERATOR_VERSION.
GOLDEN = {
    "cluttered60": "35973d7e3934def6647c5bd62356d1b89a40deb8d154f2e183520278c179ef2d",
    "twodigit60": "25e182715892d2bf72513fc4999c091bdbcced072ef7e8af12b44883c1f38bd0",
    "binarized": "42093b95f7a94efe59f81217c2546791c78c38814bf06ed5b8b4152fc05110a0",
}


def digest(arrays: dict, n: int | None = None) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(np.ascontiguousarray(arrays[k][:n]).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_hashes_pin_the_generator(mnist_data, name):
    assert GENERATOR_VERSION == 1
    assert digest(V.load_split(name, "test", seed=0), 500) == GOLDEN[name]


def test_same_bytes_in_a_fresh_process_with_other_thread_counts(mnist_data):
    code = ("import hashlib, numpy as np; from datasets import variants as V; a = V.load_split('cluttered60', "
            "'valid', seed=5); h = hashlib.sha256(); [h.update(np.ascontiguousarray(a[k]).tobytes()) "
            "for k in sorted(a)]; print(h.hexdigest())")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest(V.load_split("cluttered60", "valid", seed=5))


def test_chunked_generation_equals_the_whole_split(mnist_data):
    whole = V.load_split("cluttered100", "test", seed=3)
    parts = list(V.iter_chunks("cluttered100", "test", seed=3, chunk=777))
    assert [sl.start for sl, _ in parts] == list(range(0, 10_000, 777))
    for key in NPZ_KEYS:
        assert np.array_equal(np.concatenate([p[key] for _, p in parts]), whole[key]), key


def test_train_epochs_are_fresh_and_reproducible_valid_test_fixed(mnist_data):
    e1 = V.plan_split("cluttered60", "train", seed=0, epoch=1)[1]
    e1b = V.plan_split("cluttered60", "train", seed=0, epoch=1)[1]
    e2 = V.plan_split("cluttered60", "train", seed=0, epoch=2)[1]
    fixed = V.plan_split("cluttered60", "train", seed=0)[1]
    assert np.array_equal(e1.distractor_xy, e1b.distractor_xy) and np.array_equal(e1.digit_source, e1b.digit_source)
    assert not np.array_equal(e1.digit_xy, e2.digit_xy) and not np.array_equal(e1.digit_xy, fixed.digit_xy)
    assert (e1.digit_source != e2.digit_source).mean() > 0.99  # a new permutation too
    for split in ("valid", "test"):
        a = V.plan_split("cluttered60", split, seed=0, epoch=4)[1]
        b = V.plan_split("cluttered60", split, seed=0)[1]
        assert np.array_equal(a.distractor_xy, b.distractor_xy) and V.is_fixed(V.PRESETS["cluttered60"], split, 4)
    still = V.PRESETS["cluttered60"].replace(fresh_train=False)
    assert np.array_equal(V.plan_split(still, "train", 0, epoch=7)[1].digit_xy, fixed.digit_xy)
    assert not V.is_fixed(V.PRESETS["cluttered60"], "train", 0) and V.is_fixed(still, "train", 0)
    info = V.split_info("cluttered60", "train", seed=3, epoch=2)
    assert info["fixed"] is False and info["n"] == 50_000 and info["source_range"] == [0, 50_000]
    assert V.split_info("cluttered60", "valid", epoch=2)["fixed"] and V.split_info(still, "train", 0, 1)["fixed"]


def test_binarized_train_noise_fresh_per_epoch_and_fixed_otherwise(mnist_data):
    def first(split, epoch):
        spec, plan, images = V.plan_split("binarized", split, seed=0, epoch=epoch)
        return V.render(spec, plan, images, slice(0, 200)), plan.digit_source[:200]

    (a, _), (b, _) = first("train", 0), first("train", 1)
    assert set(np.unique(a)) == {0, 255} and not np.array_equal(a, b)
    (c, sc), (d, sd) = first("train", None), first("train", None)
    assert np.array_equal(c, d) and np.array_equal(sc, sd)
    assert np.array_equal(first("test", 3)[0], first("test", None)[0])


def test_splits_sources_and_label_counts(mnist_data):
    train_x, train_y, _, test_y = mnist_data
    for split, (lo, hi), labels in (("train", (0, 50_000), train_y), ("valid", (50_000, 60_000), train_y),
                                    ("test", (0, 10_000), test_y)):
        plan = V.plan_split("cluttered60", split, seed=1)[1]
        assert np.array_equal(np.sort(plan.digit_source[:, 0]), np.arange(lo, hi)), split
        assert plan.distractor_source.min() >= lo and plan.distractor_source.max() < hi, split
        assert np.array_equal(np.bincount(plan.labels, minlength=10), np.bincount(labels[lo:hi], minlength=10))
    assert np.bincount(V.plan_split("cluttered100", "test", seed=1)[1].labels).tolist() == TEST_COUNTS


def test_no_test_digit_reaches_train_or_valid_by_pixel_hash(mnist_data):
    train_x, _, test_x, _ = mnist_data

    def hashes(images):
        return {hashlib.sha1(x.tobytes()).digest() for x in images}

    test_hashes, first50k = hashes(test_x), hashes(train_x[:50_000])
    for split in ("train", "valid"):
        spec, plan, images = V.plan_split("translated60", split, seed=2)
        rows = np.arange(0, len(plan), 7)
        canvases = V.render(spec, plan, images, rows)
        x, y = plan.digit_xy[rows, 0, 0], plan.digit_xy[rows, 0, 1]
        seen = hashes(canvases[i, y[i]:y[i] + DIGIT, x[i]:x[i] + DIGIT] for i in range(rows.size))
        assert not seen & test_hashes
        assert (seen <= first50k) == (split == "train") and (not seen & first50k) == (split == "valid")
    # every crop pixel of a cluttered valid set comes from MNIST train[50000:60000]
    plan = V.plan_split("cluttered100", "valid", seed=2)[1]
    assert plan.distractor_source.min() >= 50_000 and plan.digit_source.min() >= 50_000


def test_images_rebuild_exactly_from_metadata(mnist_data):
    train_x, _, test_x, _ = mnist_data
    for name, split, source in (("cluttered100", "valid", train_x), ("twodigit60", "test", test_x),
                                ("cluttered60", "test", test_x)):
        a = V.load_split(name, split, seed=4)
        rows = slice(0, 300)
        sub = {k: a[k][rows] for k in NPZ_KEYS}
        assert np.array_equal(reference_render(V.PRESETS[name], sub, np.asarray(source)), sub["images"]), name


def test_digit_positions_cover_both_ends(mnist_data):
    plan = V.plan_split("cluttered100", "train", seed=0)[1]
    for key, hi in (("digit_xy", 100 - DIGIT), ("distractor_xy", 100 - 8), ("distractor_crop_xy", DIGIT - 8)):
        xy = getattr(plan, key)
        assert xy.min() == 0 and xy.max() == hi, key
        for axis in (0, 1):
            assert {0, hi} <= set(np.unique(xy[..., axis])), (key, axis)


def test_two_digit_labels_in_placement_order(mnist_data):
    _, train_y, _, test_y = mnist_data
    a = V.load_split("twodigit60", "test", seed=0)
    assert a["labels"].shape == (10_000, 2) and a["labels"].dtype == np.int64
    assert np.array_equal(a["labels"], test_y[a["digit_source"]])
    assert (a["digit_source"][:, 0] != a["digit_source"][:, 1]).all()
    for d in (0, 1):
        assert np.array_equal(np.sort(a["digit_source"][:, d]), np.arange(10_000))
        assert np.bincount(a["labels"][:, d]).tolist() == TEST_COUNTS


def test_npz_dtypes_shapes_and_read_only_cache(mnist_data):
    a = V.load_split("cluttered60", "test", seed=0)
    assert a["images"].dtype == np.uint8 and a["images"].shape == (10_000, 60, 60)
    assert a["labels"].shape == (10_000,)
    shapes = {"digit_source": (10_000, 1), "digit_xy": (10_000, 1, 2), "distractor_source": (10_000, 4),
              "distractor_crop_xy": (10_000, 4, 2), "distractor_xy": (10_000, 4, 2)}
    for key, shape in shapes.items():
        assert a[key].shape == shape and a[key].dtype == np.int64
    assert V.load_split("cluttered60", "test", seed=0) is a
    with pytest.raises(ValueError):
        a["images"][0, 0, 0] = 1


@pytest.mark.parametrize("args, message", [
    (("nope", "test"), "unknown variant 'nope'"),
    (("cluttered60", "validation"), "unknown split 'validation'"),
    (("cluttered60", "test", -1), "seed must be a non-negative integer"),
    (("cluttered60", "train", 0, -2), "epoch must be None"),
])
def test_bad_arguments_are_named(mnist_data, args, message):
    with pytest.raises(SpecError, match=message):
        V.load_split(*args)
