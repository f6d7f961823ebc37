"""RAM with the plain crop-and-pool retina: the reference for the integral-image sensor's parity and
the baseline for its speed.

Each glimpse crops every scale's patch (g 2^i pixels a side) from the zero-padded image, padded
again at every step, and average-pools it down to g x g, as models/retina.py did before it read the
image's integral. Everything else is models/ram.py's: one state dict loads into both.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from models.ram import GlimpseNetwork, RamConfig, RecurrentAttentionModel
from models.retina import patch_origin


def crop_pool_retina(x: torch.Tensor, loc: torch.Tensor, patch: int, scales: int) -> torch.Tensor:
    """Glimpses (B, scales, C, patch, patch): one gather of (g 2^i)^2 pixels per scale, then avg_pool2d."""
    batch, _, height, width = x.shape
    pad = patch * 2 ** (scales - 1)
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)
    loc = loc.detach()
    rows_of = torch.arange(batch, device=x.device)[:, None, None]
    out = []
    for i in range(scales):
        side = patch * 2 ** i
        offsets = torch.arange(side, device=x.device)
        rows = patch_origin(loc[:, 1], height, side)[:, None] + pad + offsets  # (B, side)
        cols = patch_origin(loc[:, 0], width, side)[:, None] + pad + offsets
        crop = padded[rows_of, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, C, side, side)
        out.append(F.avg_pool2d(crop, 2 ** i) if i else crop)
    return torch.stack(out, dim=1)


class _CropPoolGlimpse(GlimpseNetwork):
    def prepare(self, x: torch.Tensor) -> None:
        return None

    def sense(self, x: torch.Tensor, loc: torch.Tensor, integral: None) -> torch.Tensor:
        return crop_pool_retina(x, loc, self.patch, self.scales)


class NaiveRAM(RecurrentAttentionModel):
    def __init__(self, config: RamConfig | None = None):
        super().__init__(config)
        self.glimpse = _CropPoolGlimpse(self.config)
