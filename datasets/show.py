"""Draw a grid of samples of a variant: digit boxes outlined, distractor crops dashed, labels written."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np

from datasets.fileio import atomic_write_bytes
from datasets.generator import DIGIT, Spec, render
from datasets.variants import plan_split, variant_name

DIGIT_COLOURS = ("#ff3b30", "#34c759", "#0a84ff", "#ffcc00")


def draw_grid(name: str | Spec, n: int = 64, out: str | os.PathLike = "grid.png", split: str = "test",
              seed: int = 0, epoch: int | None = None, data_dir: str | os.PathLike | None = None) -> Path:
    """Render the first ``n`` examples of a split into a PNG at ``out`` (written atomically)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    spec, plan, images = plan_split(name, split, seed, epoch, data_dir)
    n = min(int(n), len(plan))
    idx = np.arange(n)
    canvases = render(spec, plan, images, idx)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.5 * rows * spec.height / spec.width + 0.4),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(canvases[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        for k in range(spec.n_distractors):
            x, y = plan.distractor_xy[i, k]
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), spec.crop, spec.crop, fill=False, lw=0.5,
                                   ls="--", ec="#8e8e93"))
        for d in range(spec.n_digits):
            x, y = plan.digit_xy[i, d]
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), DIGIT, DIGIT, fill=False, lw=1.0,
                                   ec=DIGIT_COLOURS[d % len(DIGIT_COLOURS)]))
        labels = np.atleast_1d(plan.labels[i])
        ax.set_title(" ".join(str(int(v)) for v in labels), fontsize=8, pad=2)
    epoch_text = f", epoch {epoch}" if epoch is not None else ""
    fig.suptitle(f"{variant_name(name)} {split} (seed {seed}{epoch_text}): {spec.height}x{spec.width}, "
                 f"{spec.n_digits} digit(s), {spec.n_distractors} distractor(s)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
