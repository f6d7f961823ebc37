"""The torch feeding path: same bytes as load_split, lazy epochs, shuffling, sharding, Dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datasets import variants as V
from datasets.generator import SpecError
from datasets.torch_data import GlimpseDataset, example_order, iterate_batches


def as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0] * 255).round().to(torch.uint8).numpy()


def test_batches_hold_load_split_bytes(mnist_data):
    ref = V.load_split("cluttered60", "test", seed=1)
    batches = list(iterate_batches("cluttered60", "test", 700, seed=1, limit=2000))
    assert [len(y) for _, y in batches] == [700, 700, 600]
    x, y = batches[0]
    assert x.dtype == torch.float32 and x.shape == (700, 1, 60, 60) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[:5], torch.from_numpy(np.array(ref["images"][:5])).unsqueeze(1).float() / 255)
    assert np.array_equal(np.concatenate([as_uint8(x) for x, _ in batches]), ref["images"][:2000])
    assert np.array_equal(np.concatenate([y.numpy() for _, y in batches]), ref["labels"][:2000])


def test_fresh_train_epoch_batches_equal_the_whole_epoch(mnist_data):
    ref = V.load_split("binarized", "train", seed=2, epoch=5)  # binarization noise keyed by index
    got = list(iterate_batches("binarized", "train", 512, seed=2, epoch=5, shuffle=True, limit=3000))
    order = example_order(50_000, "train", seed=2, epoch=5, shuffle=True, limit=3000)
    assert np.array_equal(np.concatenate([as_uint8(x) for x, _ in got]), ref["images"][order])
    assert np.array_equal(np.concatenate([y.numpy() for _, y in got]), ref["labels"][order])
    x, _ = got[0]
    assert set(torch.unique(x).tolist()) == {0.0, 1.0}


def test_shuffle_orders_depend_on_seed_and_epoch_and_cover_everything():
    base = example_order(1000, "train", seed=0, epoch=0, shuffle=True)
    assert np.array_equal(np.sort(base), np.arange(1000)) and not np.array_equal(base, np.arange(1000))
    assert np.array_equal(base, example_order(1000, "train", seed=0, epoch=0, shuffle=True))
    assert not np.array_equal(base, example_order(1000, "train", seed=0, epoch=1, shuffle=True))
    assert not np.array_equal(base, example_order(1000, "train", seed=1, epoch=0, shuffle=True))
    assert np.array_equal(example_order(1000, "test", limit=10), np.arange(10))


@pytest.mark.parametrize("world", [1, 3, 4])
def test_shards_partition_the_order(world):
    full = example_order(1001, "train", seed=0, epoch=2, shuffle=True)
    shards = [example_order(1001, "train", seed=0, epoch=2, shuffle=True, shard=(r, world)) for r in range(world)]
    for r, s in enumerate(shards):
        assert np.array_equal(s, full[r::world])
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(1001))


def test_sharded_batches_are_disjoint_and_complete(mnist_data):
    seen = []
    for rank in range(2):
        for x, _ in iterate_batches("translated60", "valid", 64, shuffle=True, epoch=1, limit=301, shard=(rank, 2)):
            seen.append(as_uint8(x))
    imgs = np.concatenate(seen)
    ref = V.load_split("translated60", "valid")["images"][:301]
    assert imgs.shape[0] == 301
    assert sorted(map(bytes, imgs)) == sorted(map(bytes, ref))


def test_drop_last(mnist_data):
    sizes = [len(y) for _, y in iterate_batches("translated60", "test", 64, limit=200, drop_last=True)]
    assert sizes == [64, 64, 64]


def test_dataset_and_dataloader(mnist_data):
    ds = GlimpseDataset("twodigit60", "test", seed=0, limit=100)
    ref = V.load_split("twodigit60", "test", seed=0)
    assert len(ds) == 100
    x, y = ds[7]
    assert x.shape == (1, 60, 60) and y.tolist() == ref["labels"][7].tolist()
    assert np.array_equal(as_uint8(x[None]), ref["images"][7:8])
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=32)))
    assert xb.shape == (32, 1, 60, 60) and yb.shape == (32, 2)
    assert np.array_equal(as_uint8(xb), ref["images"][:32])
    with pytest.raises(IndexError):
        ds[100]
    train = GlimpseDataset("cluttered60", "train", epoch=0, limit=10)
    before = train[0][0].clone()
    train.set_epoch(1)
    assert not torch.equal(before, train[0][0])


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": 8, "limit": 0}, "limit must be a positive integer"),
    ({"batch_size": 8, "shard": (2, 2)}, "0 <= rank < world_size"),
    ({"batch_size": 8, "shard": 3}, "shard must be"),
])
def test_bad_arguments(mnist_data, kwargs, message):
    with pytest.raises(SpecError, match=message):
        next(iterate_batches("translated60", "test", **kwargs))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_path_matches_cpu(mnist_data):
    cpu = next(iterate_batches("cluttered100", "test", 256))
    gpu = next(iterate_batches("cluttered100", "test", 256, device="cuda"))
    assert gpu[0].device.type == "cuda" and torch.equal(gpu[0].cpu(), cpu[0]) and torch.equal(gpu[1].cpu(), cpu[1])
