"""RAM's glimpse sensor (Mnih et al. 2014, sec. 3): k square patches around one location, the
i-th (i = 0..k-1) of side g * 2^i pixels, each average-pooled down to g x g.

Coordinates: a location (lx, ly) in [-1, 1]^2 maps to the continuous pixel position
c = (l + 1) / 2 * size, where pixel j spans [j, j + 1); (-1, -1) is the top-left corner of the
image, (0, 0) its centre, (1, 1) the bottom-right corner. Locations outside [-1, 1] are clamped.
A patch of side S has its top-left pixel at floor(c - S / 2 + 0.5): patches lie on the pixel
grid, so a patch is an exact crop and pooling is an exact block mean. Pixels outside the image
read as zero.

The batch is cropped without a loop over images: the image is zero-padded once, and each scale
is one gather with per-image row and column indices, then one ``avg_pool2d``.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def patch_origin(loc: torch.Tensor, size: int, side: int) -> torch.Tensor:
    """Top-left pixel (integer, may be negative) of the side x side patch around ``loc`` along an axis
    of ``size`` pixels; ``loc`` (...,) in [-1, 1] (clamped)."""
    centre = (loc.clamp(-1.0, 1.0) + 1.0) / 2.0 * size
    return torch.floor(centre - side / 2 + 0.5).long()


def retina(x: torch.Tensor, loc: torch.Tensor, patch: int, scales: int) -> torch.Tensor:
    """Glimpses (B, scales, C, patch, patch) of images ``x`` (B, C, H, W) around ``loc`` (B, 2) = (lx, ly)."""
    if x.dim() != 4:
        raise ValueError(f"retina expects images (B, C, H, W), got shape {tuple(x.shape)}")
    if loc.shape != (x.shape[0], 2):
        raise ValueError(f"retina expects locations (B, 2) for {x.shape[0]} images, got shape {tuple(loc.shape)}")
    if patch < 1 or scales < 1:
        raise ValueError(f"retina needs patch >= 1 and scales >= 1, got patch={patch}, scales={scales}")
    batch, _, height, width = x.shape
    pad = patch * 2 ** (scales - 1)  # the largest patch, around any clamped location, stays inside
    padded = F.pad(x, (pad, pad, pad, pad))
    loc = loc.detach()
    rows_of = torch.arange(batch, device=x.device)[:, None, None]
    out = []
    for i in range(scales):
        side = patch * 2 ** i
        offsets = torch.arange(side, device=x.device)
        rows = patch_origin(loc[:, 1], height, side)[:, None] + pad + offsets  # (B, side)
        cols = patch_origin(loc[:, 0], width, side)[:, None] + pad + offsets
        crop = padded.permute(0, 2, 3, 1)[rows_of, rows[:, :, None], cols[:, None, :]]  # (B, side, side, C)
        crop = crop.permute(0, 3, 1, 2)
        out.append(F.avg_pool2d(crop, 2 ** i) if i else crop)
    return torch.stack(out, dim=1)


def retina_flops(channels: int, patch: int, scales: int) -> int:
    """Average pooling: one add per pixel of each pooled patch, one divide per output pixel."""
    return sum(channels * ((patch * 2 ** i) ** 2 + patch * patch) for i in range(1, scales))
