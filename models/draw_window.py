"""Draw attention windows on an image: each window's grid outline, and the path of glimpse centres.

The outline of a window is the square spanned by its outermost filter centres mu_1 .. mu_N in x
and y (paper coordinates are 1-based; matplotlib's pixel centres are 0-based, so 1 is subtracted).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def window_outline(gx: float, gy: float, delta: float, n: int) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the grid's outline in 0-based pixel coordinates: mu_1 - 1 and mu_N - 1."""
    half = (n - 1) / 2 * delta  # mu_N - g = (N - N/2 - 0.5) delta
    return gx - half - 1, gy - half - 1, gx + half - 1, gy + half - 1


def _as_tuples(windows: Any, index: int) -> list[tuple[float, float, float, int]]:
    """(gx, gy, delta, n) per window from a Window (fields (B,) or (B, T)), a list of them, or tuples."""
    if hasattr(windows, "gx"):
        n = int(windows.fx.shape[-2])
        gx, gy, delta = (torch.as_tensor(getattr(windows, k)).detach().float().cpu() for k in ("gx", "gy", "delta"))
        if gx.dim() == 1:
            gx, gy, delta = gx[index:index + 1], gy[index:index + 1], delta[index:index + 1]
        elif gx.dim() == 2:  # (B, T): the glimpse sequence of one example
            gx, gy, delta = gx[index], gy[index], delta[index]
        else:
            raise ValueError(f"draw_windows: window fields must be (B,) or (B, T), got gx of shape {tuple(gx.shape)}")
        return [(float(a), float(b), float(d), n) for a, b, d in zip(gx, gy, delta)]
    out = []
    for w in windows:
        out.extend(_as_tuples(w, index) if hasattr(w, "gx") else [tuple(w)])
    for w in out:
        if len(w) != 4:
            raise ValueError(f"draw_windows: expected (gx, gy, delta, n) tuples or Windows, got {w!r}")
    return out


def draw_windows(ax, image, windows: Any, index: int = 0, color: str | Sequence[str] | None = None,
                 path: bool = True, numbers: bool = True, linewidth: float = 1.5):
    """Show ``image`` ((H, W), (C, H, W) or (H, W, C)) on ``ax`` and outline every window on it.

    ``windows``: a `Window` (fields (B,) -> example ``index``; fields (B, T) -> that example's T
    glimpses), a list of Windows, or a list of (gx, gy, delta, n) tuples in paper (1-based) pixels.
    With ``path`` the glimpse centres are joined in order; with ``numbers`` each outline is numbered.
    Returns the outlines as (x0, y0, x1, y1) in 0-based pixel coordinates.
    """
    from matplotlib.patches import Rectangle

    img = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, dtype=float)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"draw_windows: image must be (H, W), (C, H, W) or (H, W, C), got shape {img.shape}")
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
    h, w = img.shape[:2]
    tuples = _as_tuples(windows, index)
    colors = [color] * len(tuples) if isinstance(color, str) else color
    if colors is None:
        cmap = __import__("matplotlib").colormaps["autumn"]
        colors = [cmap(i / max(len(tuples) - 1, 1)) for i in range(len(tuples))]
    outlines = []
    for i, (gx, gy, delta, n) in enumerate(tuples):
        x0, y0, x1, y1 = window_outline(gx, gy, delta, n)
        outlines.append((x0, y0, x1, y1))
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colors[i], linewidth=linewidth))
        if numbers:
            ax.text(x0, y0, str(i + 1), color=colors[i], fontsize=8, va="bottom", ha="left")
    if path and len(tuples) > 1:
        ax.plot([t[0] - 1 for t in tuples], [t[1] - 1 for t in tuples], "-o", color="cyan", markersize=2,
                linewidth=0.8)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return outlines
