"""Named benchmark variants, their splits and seeds, and whole-split or chunked generation.

Splits: train = MNIST train[0:50000], valid = MNIST train[50000:60000], test = MNIST test.
Digits, second digits and distractor crops of a split all come from that split only.

Seeds: every random stream is ``SeedSequence(seed, spawn_key=(split, stream, epoch_code))`` with
``epoch_code = 0`` for the fixed set and ``e + 1`` for train epoch ``e``. Train epochs are fresh
when ``spec.fresh_train`` (the default); valid and test are always the fixed set (their
``epoch`` argument is ignored), and so is train with ``epoch=None``.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Iterator

import numpy as np

from datasets import mnist
from datasets.generator import GENERATOR_VERSION, Plan, Spec, SpecError, draw_plan, render

PRESETS: dict[str, Spec] = {
    "cluttered100": Spec(height=100, width=100, n_digits=1, n_distractors=8, crop=8),
    "cluttered60": Spec(height=60, width=60, n_digits=1, n_distractors=4, crop=8),
    "translated60": Spec(height=60, width=60, n_digits=1, n_distractors=0),
    "twodigit60": Spec(height=60, width=60, n_digits=2, n_distractors=0),
    "binarized": Spec(height=28, width=28, n_digits=1, n_distractors=0, binarize=True),
}
# split -> (MNIST split, first index, end index)
SPLITS: dict[str, tuple[str, int, int]] = {
    "train": ("train", 0, 50_000),
    "valid": ("train", 50_000, 60_000),
    "test": ("test", 0, 10_000),
}
_SPLIT_CODE = {"train": 0, "valid": 1, "test": 2}
_PLAN_STREAM, _BINARIZE_STREAM = 0, 1
_CACHE_SIZE = 3  # whole fixed splits kept in memory (cluttered100 test is 100 MB)
_cache: OrderedDict = OrderedDict()


def get_spec(name: str | Spec) -> Spec:
    if isinstance(name, Spec):
        return name
    if name not in PRESETS:
        raise SpecError(f"unknown variant {name!r}; choose one of {sorted(PRESETS)} or pass a Spec")
    return PRESETS[name]


def variant_name(name: str | Spec) -> str:
    """The preset's name, or ``custom-<hash>`` for a Spec that is not a preset."""
    if isinstance(name, str):
        get_spec(name)
        return name
    for key, spec in PRESETS.items():
        if spec == name:
            return key
    digest = mnist.sha256_bytes(repr(sorted(name.to_dict().items())).encode())[:10]
    return f"custom-{digest}"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise SpecError(f"unknown split {split!r}; use one of {list(SPLITS)}")


def check_seed(seed: int, epoch: int | None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer, got {seed!r}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0):
        raise SpecError(f"epoch must be None (the fixed set) or a non-negative integer, got {epoch!r}")


def epoch_code(spec: Spec, split: str, epoch: int | None) -> int:
    """0 for the fixed set, e + 1 for a fresh train epoch e."""
    if split != "train" or epoch is None or not spec.fresh_train:
        return 0
    return int(epoch) + 1


def is_fixed(spec: Spec, split: str, epoch: int | None) -> bool:
    return epoch_code(spec, split, epoch) == 0


def split_info(name: str | Spec, split: str, seed: int = 0, epoch: int | None = None) -> dict:
    """What a record should say about the data it used (JSON-safe)."""
    spec = get_spec(name)
    _check_split(split)
    check_seed(seed, epoch)
    mnist_split, lo, hi = SPLITS[split]
    return {"variant": variant_name(name), "spec": spec.to_dict(), "split": split, "seed": int(seed),
            "epoch": None if epoch is None else int(epoch), "fixed": is_fixed(spec, split, epoch),
            "mnist_split": mnist_split, "source_range": [lo, hi], "n": hi - lo,
            "generator_version": GENERATOR_VERSION}


def seed_sequence(seed: int, split: str, stream: int, code: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=(_SPLIT_CODE[split], stream, code))


def source_images(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The full MNIST array (in memory) and labels that a split's sources index."""
    _check_split(split)
    images, labels = mnist.load(SPLITS[split][0], data_dir)
    key = ("pool", str(mnist.mnist_dir(data_dir)), SPLITS[split][0])
    if key not in _pool_cache:
        _pool_cache[key] = (np.array(images), labels)  # read the memmap into memory once
    return _pool_cache[key]


_pool_cache: dict = {}


def plan_split(name: str | Spec, split: str, seed: int = 0, epoch: int | None = None,
               data_dir: str | os.PathLike | None = None) -> tuple[Spec, Plan, np.ndarray]:
    """Draw the layout of a whole split: returns (spec, plan, MNIST images the plan indexes)."""
    spec = get_spec(name)
    _check_split(split)
    check_seed(seed, epoch)
    images, labels = source_images(split, data_dir)
    _, lo, hi = SPLITS[split]
    code = epoch_code(spec, split, epoch)
    plan = draw_plan(spec, labels, lo, hi, np.random.default_rng(seed_sequence(seed, split, _PLAN_STREAM, code)))
    if spec.binarize:
        plan.binarize_seed = seed_sequence(seed, split, _BINARIZE_STREAM, code)
    return spec, plan, images


def iter_chunks(name: str | Spec, split: str, seed: int = 0, epoch: int | None = None,
                chunk: int = 1024, data_dir: str | os.PathLike | None = None
                ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Yield (slice, arrays) for consecutive chunks of a split; bytes equal ``load_split``'s."""
    if chunk < 1:
        raise SpecError(f"chunk must be >= 1, got {chunk}")
    spec, plan, images = plan_split(name, split, seed, epoch, data_dir)
    for start in range(0, len(plan), chunk):
        sl = slice(start, min(start + chunk, len(plan)))
        yield sl, {"images": render(spec, plan, images, sl), **plan.arrays(sl)}


def generate_split(spec: Spec, plan: Plan, images: np.ndarray, chunk: int = 1024) -> dict[str, np.ndarray]:
    """Render a whole plan into one array, chunk by chunk (bounded scratch memory)."""
    out = np.empty((len(plan), spec.height, spec.width), dtype=np.uint8)
    for start in range(0, len(plan), chunk):
        stop = min(start + chunk, len(plan))
        render(spec, plan, images, slice(start, stop), out=out[start:stop])
    return {"images": out, **plan.arrays()}


def load_split(name: str | Spec, split: str, seed: int = 0, epoch: int | None = None,
               data_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """A whole split as the npz arrays: images uint8 (N, H, W), labels, and the layout metadata.

    Fixed sets (valid, test, train with epoch=None) are cached in-process; the returned arrays
    are read-only so a caller cannot corrupt the cache.
    """
    spec = get_spec(name)
    _check_split(split)
    check_seed(seed, epoch)
    code = epoch_code(spec, split, epoch)
    key = (spec, split, int(seed), code, str(mnist.mnist_dir(data_dir)))
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    spec, plan, images = plan_split(spec, split, seed, epoch, data_dir)
    arrays = generate_split(spec, plan, images)
    for a in arrays.values():
        a.flags.writeable = False
    if code == 0:
        _cache[key] = arrays
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return arrays


def clear_cache() -> None:
    _cache.clear()
    _pool_cache.clear()
