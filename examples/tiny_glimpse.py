"""An example glimpse-model plug-in: a fixed scan (no attention). Step t looks at a square window
of half the image side whose centre moves along the diagonal, pools it to 8 x 8, and feeds it to a
GRU; a linear layer gives logits at every step.

    python -m bench run --model examples.tiny_glimpse:build --suite quick --dry-run

The contract is in docs/plugins.md.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

POOLED = 8


class Output(NamedTuple):
    logits: torch.Tensor  # (B, T, classes)
    windows: torch.Tensor  # (B, T, 3): centre x, centre y, side, in 0-based pixels


class DiagonalScan(nn.Module):
    attention_type = "none"  # where it looks does not depend on the image

    def __init__(self, height: int, width: int, channels: int, num_classes: int, glimpses: int, hidden: int = 64):
        super().__init__()
        self.height, self.width, self.glimpses = height, width, glimpses
        self.side = max(min(height, width) // 2, 1)
        self.cell = nn.GRUCell(channels * POOLED * POOLED, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def _centres(self) -> list[tuple[int, int]]:
        steps = max(self.glimpses - 1, 1)
        half = self.side // 2
        return [(half + round(t * (self.width - self.side) / steps),
                 half + round(t * (self.height - self.side) / steps)) for t in range(self.glimpses)]

    def forward(self, x: torch.Tensor) -> Output:
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        hs = []
        for cx, cy in self._centres():
            crop = x[:, :, cy - self.side // 2: cy - self.side // 2 + self.side,
                     cx - self.side // 2: cx - self.side // 2 + self.side]
            h = self.cell(F.adaptive_avg_pool2d(crop, POOLED).flatten(1), h)
            hs.append(h)
        windows = torch.tensor([(cx - 0.5 * (self.side % 2 == 0), cy - 0.5 * (self.side % 2 == 0), self.side)
                                for cx, cy in self._centres()], dtype=x.dtype, device=x.device)
        return Output(self.head(torch.stack(hs, 1)), windows.expand(x.shape[0], -1, -1))


def build(config: dict) -> nn.Module:
    """config: height, width, channels, num_classes, glimpses, per_step_loss (see docs/plugins.md)."""
    return DiagonalScan(config["height"], config["width"], config["channels"], config["num_classes"],
                        config["glimpses"])
