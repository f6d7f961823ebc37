"""Feeding the benchmark variants to PyTorch: a lazy batch iterator and a ``Dataset`` wrapper.

``iterate_batches`` draws a split's layout up front (small integer arrays) and composites each
batch when it is asked for, so a cluttered100 train epoch never sits in memory whole, and a
batch holds exactly the bytes ``load_split`` gives for the same examples.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from datasets.generator import Spec, SpecError, render
from datasets.variants import SPLITS, plan_split, seed_sequence

_SHUFFLE_STREAM = 2
_TABLE = torch.from_numpy(np.divide(np.arange(256, dtype=np.uint8), np.float32(255), dtype=np.float32))


def _to_tensors(images: np.ndarray, labels: np.ndarray,
                device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.from_numpy(np.ascontiguousarray(labels))
    if torch.device(device).type == "cpu":
        # numpy's single-threaded cast: torch's OpenMP cast is ~10x slower on a busy shared CPU
        return torch.from_numpy(np.divide(images[:, None], np.float32(255), dtype=np.float32)), y
    # elsewhere move uint8 (4x fewer bytes than float32) and convert on the device through a table,
    # because a device's scalar division may round differently (x * (1/255)) from the CPU path
    x = torch.from_numpy(images).to(device, non_blocking=True).unsqueeze(1)
    return _TABLE.to(device)[x.long()], y.to(device, non_blocking=True)


def example_order(n: int, split: str, seed: int = 0, epoch: int | None = None, shuffle: bool = False,
                  limit: int | None = None, shard: tuple[int, int] | None = None) -> np.ndarray:
    """Indices (into the split's plan) that one rank visits, in visiting order.

    ``limit`` keeps the first ``limit`` examples; ``shuffle`` permutes them with a stream seeded
    by (seed, split, epoch), so each epoch has its own order even for a fixed set; ``shard=(r, W)``
    keeps positions r, r + W, ... of that order, so the W ranks partition it.
    """
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise SpecError(f"limit must be a positive integer or None, got {limit!r}")
        n = min(n, int(limit))
    order = np.arange(n)
    if shuffle:
        code = 0 if epoch is None else int(epoch) + 1
        order = np.random.default_rng(seed_sequence(seed, split, _SHUFFLE_STREAM, code)).permutation(order)
    if shard is not None:
        try:
            rank, world = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise SpecError(f"shard must be (rank, world_size), got {shard!r}") from None
        if world < 1 or not 0 <= rank < world:
            raise SpecError(f"shard {shard!r}: need world_size >= 1 and 0 <= rank < world_size")
        order = order[rank::world]
    return order


def iterate_batches(name: str | Spec, split: str, batch_size: int, seed: int = 0, epoch: int | None = None,
                    shuffle: bool = False, device: str | torch.device = "cpu",
                    data_dir: str | os.PathLike | None = None, drop_last: bool = False,
                    limit: int | None = None, shard: tuple[int, int] | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)``: x float32 (B, 1, H, W) in [0, 1] on ``device``, y int64 (B,) or (B, 2).

    ``epoch=None`` gives the fixed set; ``epoch=e`` on train gives epoch e's fresh clutter
    (for presets with ``fresh_train``). Generation happens batch by batch, in this thread.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise SpecError(f"batch_size must be a positive integer, got {batch_size!r}")
    spec, plan, images = plan_split(name, split, seed, epoch, data_dir)
    order = example_order(len(plan), split, seed, epoch, shuffle, limit, shard)
    if drop_last and shard is not None:  # every rank stops after the same number of full global batches
        total = example_order(len(plan), split, limit=limit).size
        order = order[:total // (batch_size * int(shard[1])) * batch_size]
    for start in range(0, order.size, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and idx.size < batch_size:
            return
        yield _to_tensors(render(spec, plan, images, idx), plan.labels[idx], device)


class GlimpseDataset(torch.utils.data.Dataset):
    """Map-style dataset of one split; item i is example i of ``load_split`` as (x (1, H, W), y).

    ``set_epoch(e)`` switches a train split to epoch e's fresh clutter (call it before each
    epoch, as with ``DistributedSampler``). ``__getitems__`` renders a whole batch at once, which
    a DataLoader uses automatically; ``iterate_batches`` is still the faster path.
    """

    def __init__(self, name: str | Spec, split: str, seed: int = 0, epoch: int | None = None,
                 data_dir: str | os.PathLike | None = None, limit: int | None = None) -> None:
        if split not in SPLITS:
            raise SpecError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        self.name, self.split, self.seed, self.data_dir = name, split, seed, data_dir
        self.limit = limit
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int | None) -> None:
        self.epoch = epoch
        self.spec, self.plan, self.images = plan_split(self.name, self.split, self.seed, epoch, self.data_dir)
        self._n = example_order(len(self.plan), self.split, limit=self.limit).size

    def __len__(self) -> int:
        return self._n

    def _rows(self, indices) -> np.ndarray:
        rows = np.asarray(indices, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self._n):
            raise IndexError(f"index out of range for a dataset of {self._n} examples")
        return rows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])[0]
        return x, y

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        rows = self._rows(indices)
        x, y = _to_tensors(render(self.spec, self.plan, self.images, rows), self.plan.labels[rows], "cpu")
        return list(zip(x, y))
