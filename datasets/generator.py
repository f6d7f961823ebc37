"""The cluttered / translated / multi-digit MNIST generator (ANCHORS.md, "Cluttered MNIST generator").

Generation has two stages so that a training loop can make an epoch chunk by chunk:

1. ``draw_plan`` draws every random parameter of a split up front (digit sources, digit
   positions, distractor sources, crop origins and positions): small integer arrays.
2. ``render`` composites any subset of examples from the plan and the MNIST images.
   Rendering has no random state of its own except the binarization noise, which is keyed by
   the example's index (one PCG64 stream, advanced to ``index * H * W``), so any chunking or
   order gives byte-identical images.

Conventions: positions are top-left ``(x, y)`` = (column, row); all bounds are inclusive, so
a digit's x takes every value in ``0 .. W - 28``. Compositing is integer:
``pixel = min(255, sum of everything placed there)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

GENERATOR_VERSION = 1
DIGIT = 28  # MNIST digits are 28 x 28
NPZ_KEYS = ("images", "labels", "digit_source", "digit_xy",
            "distractor_source", "distractor_crop_xy", "distractor_xy")
_MAX_SWAP_ROUNDS = 10_000


class SpecError(ValueError):
    """An invalid generator parameter; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Spec:
    """Every parameter of a benchmark variant. Positions are drawn uniformly over all valid places."""

    height: int = 100
    width: int = 100
    n_digits: int = 1
    n_distractors: int = 8
    crop: int = 8  # side of the square distractor crop
    binarize: bool = False  # pixels Bernoulli(intensity / 255), stored as {0, 255}
    fresh_train: bool = True  # train epoch e gets new clutter/binarization; False: one fixed set

    def __post_init__(self) -> None:
        for name in ("height", "width", "n_digits", "n_distractors", "crop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SpecError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
        for name in ("binarize", "fresh_train"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise SpecError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.height < DIGIT or self.width < DIGIT:
            raise SpecError(
                f"canvas {self.height}x{self.width} is smaller than a {DIGIT}x{DIGIT} digit; "
                f"use height and width >= {DIGIT}"
            )
        if self.n_digits < 1:
            raise SpecError(f"n_digits must be >= 1 (got {self.n_digits}); every image needs a digit to label")
        if self.n_distractors < 0:
            raise SpecError(f"n_distractors must be >= 0 (got {self.n_distractors})")
        if not 1 <= self.crop <= DIGIT:
            raise SpecError(
                f"crop must be between 1 and {DIGIT} (the digit size), got {self.crop}; "
                "a distractor is a crop taken inside one digit"
            )

    def to_dict(self) -> dict:
        return {k: (bool(v) if isinstance(v, (bool, np.bool_)) else int(v))
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Spec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpecError(f"unknown Spec field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def replace(self, **changes) -> "Spec":
        return dataclasses.replace(self, **changes)


@dataclass
class Plan:
    """The random parameters of ``n`` examples (indices are into the full MNIST split array)."""

    labels: np.ndarray  # int64 (N,) for one digit, (N, D) otherwise, in placement order
    digit_source: np.ndarray  # int64 (N, D)
    digit_xy: np.ndarray  # int64 (N, D, 2)
    distractor_source: np.ndarray  # int64 (N, K)
    distractor_crop_xy: np.ndarray  # int64 (N, K, 2)
    distractor_xy: np.ndarray  # int64 (N, K, 2)
    binarize_seed: np.random.SeedSequence | None = None  # keys the per-pixel Bernoulli noise

    def __len__(self) -> int:
        return self.digit_source.shape[0]

    def arrays(self, idx: slice | np.ndarray = slice(None)) -> dict[str, np.ndarray]:
        return {k: getattr(self, k)[idx] for k in NPZ_KEYS[1:]}


def _distinct_columns(perms: np.ndarray, d: int, rng: np.random.Generator) -> None:
    """Swap entries of column ``d`` (a permutation) until no row repeats an earlier column's digit."""
    n = perms.shape[0]
    for _ in range(_MAX_SWAP_ROUNDS):
        clash = np.flatnonzero((perms[:, :d] == perms[:, d:d + 1]).any(axis=1))
        if clash.size == 0:
            return
        partner = rng.integers(0, n, size=clash.size)
        for i, j in zip(clash.tolist(), partner.tolist()):
            perms[i, d], perms[j, d] = perms[j, d], perms[i, d]
    raise SpecError(f"could not give {d + 1} distinct digits to every image of a pool of {n}; use a larger pool")


def draw_plan(spec: Spec, labels: np.ndarray, lo: int, hi: int, rng: np.random.Generator) -> Plan:
    """Draw the layout of ``hi - lo`` examples whose digits all come from ``labels[lo:hi]``.

    Each digit column is a seeded permutation of the pool (every digit used exactly once per
    column); later columns are rearranged so an image never shows the same MNIST digit twice.
    The draw order below is part of the generator version: changing it changes every dataset.
    """
    n = hi - lo
    if n < spec.n_digits:
        raise SpecError(f"a pool of {n} digits cannot fill images of {spec.n_digits} distinct digits")
    D, K, c = spec.n_digits, spec.n_distractors, spec.crop
    perms = np.empty((n, D), dtype=np.int64)
    for d in range(D):
        perms[:, d] = rng.permutation(n)
        if d:
            _distinct_columns(perms, d, rng)
    digit_source = perms + lo
    digit_xy = rng.integers(0, [spec.width - DIGIT, spec.height - DIGIT], size=(n, D, 2), endpoint=True)
    distractor_source = rng.integers(lo, hi, size=(n, K))  # hi exclusive: every pool digit can be picked
    distractor_crop_xy = rng.integers(0, DIGIT - c, size=(n, K, 2), endpoint=True)
    distractor_xy = rng.integers(0, [spec.width - c, spec.height - c], size=(n, K, 2), endpoint=True)
    lab = np.asarray(labels, dtype=np.int64)[digit_source]
    return Plan(
        labels=lab[:, 0] if D == 1 else lab,
        digit_source=digit_source,
        digit_xy=digit_xy.astype(np.int64),
        distractor_source=distractor_source.astype(np.int64),
        distractor_crop_xy=distractor_crop_xy.astype(np.int64),
        distractor_xy=distractor_xy.astype(np.int64),
    )


def _place(out: np.ndarray, xy: np.ndarray, patches: np.ndarray) -> None:
    """out (B, H, W) uint8: add patch b at top-left xy[b], saturating at 255; one patch per image.

    Works on the patch windows only (a strided view of every window, indexed per image), so the
    cost is proportional to the patch pixels, not the canvas. Saturating uint8 addition
    ``a + min(p, 255 - a)`` equals ``min(255, a + p)`` and makes the running sum exactly
    ``min(255, sum of everything placed)``.
    """
    s = patches.shape[1]
    win = sliding_window_view(out, (s, s), axis=(1, 2), writeable=True)
    b = np.arange(out.shape[0])
    region = win[b, xy[:, 1], xy[:, 0]]  # a copy, (B, s, s)
    region += np.minimum(patches, 255 - region)
    win[b, xy[:, 1], xy[:, 0]] = region  # distinct images per slot: no write collides


def _bernoulli_noise(seed: np.random.SeedSequence, rows: np.ndarray, size: int) -> np.ndarray:
    """Uniform doubles (len(rows), size): row i is draws [i*size, (i+1)*size) of one PCG64 stream."""
    out = np.empty((rows.size, size))
    state = np.random.PCG64(seed).state
    start = 0
    # one generator per run of consecutive indices (the whole chunk when iterating in order)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    bg = np.random.PCG64(0)  # reused: constructing one per run costs more than the draws
    gen = np.random.Generator(bg)
    for stop in [*breaks.tolist(), rows.size]:
        bg.state = state
        bg.advance(int(rows[start]) * size)
        out[start:stop] = gen.random((stop - start, size))
        start = stop
    return out


def render(spec: Spec, plan: Plan, images: np.ndarray, idx: slice | np.ndarray | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Composite examples ``idx`` of ``plan`` (default all) into uint8 (B, H, W).

    ``images`` is the full MNIST split array (N, 28, 28) that the plan's sources index.
    """
    rows = np.arange(len(plan))[idx if idx is not None else slice(None)]
    rows = np.atleast_1d(rows)
    B, H, W = rows.size, spec.height, spec.width
    if out is None:
        out = np.empty((B, H, W), dtype=np.uint8)
    elif out.shape != (B, H, W) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous uint8 array of shape {(B, H, W)}, got {out.dtype} {out.shape}")
    if B == 0:
        return out
    out[...] = 0
    for d in range(spec.n_digits):
        _place(out, plan.digit_xy[rows, d], images[plan.digit_source[rows, d]])
    if spec.n_distractors:
        crops = sliding_window_view(images, (spec.crop, spec.crop), axis=(1, 2))
        for k in range(spec.n_distractors):
            cxy = plan.distractor_crop_xy[rows, k]
            _place(out, plan.distractor_xy[rows, k], crops[plan.distractor_source[rows, k], cxy[:, 1], cxy[:, 0]])
    if spec.binarize:
        if plan.binarize_seed is None:
            raise ValueError("a binarized spec needs plan.binarize_seed")
        u = _bernoulli_noise(plan.binarize_seed, rows, H * W).reshape(B, H, W)
        # P(u * 255 < v) = v / 255 for v in 0..255 (v is already min(255, sum))
        np.multiply(u * 255.0 < out, 255, out=out, casting="unsafe")
    return out
