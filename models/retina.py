"""RAM's glimpse sensor (Mnih et al. 2014, sec. 3): k square patches around one location, the
i-th (i = 0..k-1) of side g * 2^i pixels, each average-pooled down to g x g.

Coordinates: a location (lx, ly) in [-1, 1]^2 maps to the continuous pixel position
c = (l + 1) / 2 * size, where pixel j spans [j, j + 1); (-1, -1) is the top-left corner of the
image, (0, 0) its centre, (1, 1) the bottom-right corner. Locations outside [-1, 1] are clamped.
A patch of side S has its top-left pixel at floor(c - S / 2 + 0.5): patches lie on the pixel
grid, so a patch is an exact crop and pooling is an exact block mean. Pixels outside the image
read as zero.

The batch is sensed without a loop over images, from the image's integral (summed-area table)
S[r, c] = sum of x[:r, :c]: a block's sum is S at its four corners, and a corner outside the image
clamps to its edge, which is the zero padding. The integral is taken once per image
(`integral_image`) and serves every glimpse of a sequence, so a glimpse reads (patch + 1)^2 corners
per scale instead of (patch * 2^i)^2 pixels. It accumulates in float64 (float32 on MPS, which has
no float64): for images (up to 4 M pixels) of float32 pixels in [0, 1] on a grid of k / 255, every
partial sum is exact, so each block mean is the exact mean rounded once to the image's dtype.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def patch_origin(loc: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """Top-left pixel (integer, may be negative) of the side x side patch around ``loc`` along an axis
    of ``size`` pixels; ``loc`` (...,) in [-1, 1] (clamped)."""
    centre = (loc.clamp(-1.0, 1.0) + 1.0) / 2.0 * size
    return torch.floor(centre - side / 2 + 0.5).long()


def integral_image(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images -> (B, C, H + 1, W + 1) summed-area tables, S[:, :, r, c] = x[:, :, :r, :c].sum()."""
    if x.dim() != 4:
        raise ValueError(f"retina expects images (B, C, H, W), got shape {tuple(x.shape)}")
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    return F.pad(x.detach().to(acc), (1, 0, 1, 0)).cumsum(2).cumsum(3)


def retina(x: torch.Tensor, loc: torch.Tensor, patch: int, scales: int,
           integral: torch.Tensor | None = None) -> torch.Tensor:
    """Glimpses (B, scales, C, patch, patch) of images ``x`` (B, C, H, W) around ``loc`` (B, 2) = (lx, ly).

    ``integral``: ``integral_image(x)``, when the caller takes several glimpses of the same images."""
    if x.dim() != 4:
        raise ValueError(f"retina expects images (B, C, H, W), got shape {tuple(x.shape)}")
    if loc.shape != (x.shape[0], 2):
        raise ValueError(f"retina expects locations (B, 2) for {x.shape[0]} images, got shape {tuple(loc.shape)}")
    if patch < 1 or scales < 1:
        raise ValueError(f"retina needs patch >= 1 and scales >= 1, got patch={patch}, scales={scales}")
    batch, channels, height, width = x.shape
    table = integral_image(x) if integral is None else integral
    loc = loc.detach()
    blocks = 2 ** torch.arange(scales, device=x.device)  # each scale's pooling block side
    steps = blocks[:, None] * torch.arange(patch + 1, device=x.device)  # (scales, patch + 1) corner offsets

    def corner_lines(l: torch.Tensor, size: int) -> torch.Tensor:  # (B, scales, patch + 1), clamped to the image
        origins = torch.stack([patch_origin(l, size, patch * 2 ** i) for i in range(scales)], dim=1)
        return (origins[:, :, None] + steps).clamp(0, size)

    rows, cols = corner_lines(loc[:, 1], height), corner_lines(loc[:, 0], width)
    # every scale's corners in one gather from each flattened table (B * C, (H + 1)(W + 1))
    index = (rows[:, :, :, None] * (width + 1) + cols[:, :, None, :]).reshape(batch, 1, -1)
    index = index.expand(-1, channels, -1).reshape(batch * channels, -1)
    corners = table.reshape(batch * channels, -1).gather(1, index)
    corners = corners.view(batch, channels, scales, patch + 1, patch + 1)
    sums = corners[..., 1:, 1:] - corners[..., :-1, 1:] - corners[..., 1:, :-1] + corners[..., :-1, :-1]
    means = sums / (blocks * blocks).to(sums.dtype)[:, None, None]
    return means.transpose(1, 2).to(x.dtype)


def retina_flops(channels: int, patch: int, scales: int) -> int:
    """The sensor's nominal cost, as plain crops and average pooling: one add per pixel of each pooled
    patch, one divide per output pixel (the integral image reads fewer: the figure stays the model's,
    not the implementation's)."""
    return sum(channels * ((patch * 2 ** i) ** 2 + patch * patch) for i in range(1, scales))
