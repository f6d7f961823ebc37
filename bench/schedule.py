"""Learning-rate schedules, as a pure function of the training position.

- ``constant``: the base rate throughout.
- ``wsd`` (warm-up, stable, decay): linear warm-up from 0 over ``warmup_epochs``, the base rate
  until ``decay_epochs`` before the end of the epoch budget, then a cosine down to
  ``min_lr_ratio`` times the base rate at the end.

The rate depends only on (epoch, batch in epoch), so a resumed run follows the same schedule.
Extending a finished ``wsd`` run is sound: its decay restarts from the checkpoint taken when the
decay began (see `bench.training_loop`), which lies inside the longer run's stable phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("constant", "wsd")


class ScheduleError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    kind: str = "constant"
    warmup_epochs: float = 0.0
    decay_epochs: float = 0.0
    min_lr_ratio: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ScheduleError(f"unknown schedule {self.kind!r}; choose one of {', '.join(SCHEDULES)}")
        if self.warmup_epochs < 0 or self.decay_epochs < 0:
            raise ScheduleError("warmup_epochs and decay_epochs must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ScheduleError(f"min_lr_ratio must be in [0, 1], not {self.min_lr_ratio}")

    def decay_start(self, epochs: int) -> float:
        """The epoch (fractional) at which the decay begins; ``inf`` when there is none."""
        if self.kind == "constant" or self.decay_epochs == 0:
            return math.inf
        return max(float(epochs) - self.decay_epochs, self.warmup_epochs)

    def factor(self, position: float, epochs: int) -> float:
        """Multiplier of the base rate for the step that ends ``position`` epochs into a run of
        ``epochs`` epochs (so the first step of a warm-up gets a small positive rate, not 0)."""
        if self.kind == "constant":
            return 1.0
        if position < self.warmup_epochs:
            return position / self.warmup_epochs
        start = self.decay_start(epochs)
        if position < start:
            return 1.0
        span = max(float(epochs) - start, 1e-12)
        t = min((position - start) / span, 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
