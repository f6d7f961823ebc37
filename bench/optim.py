"""How a job's model is optimised: Adam with gradient clipping, a learning-rate schedule over the
epoch budget, and the batch size. Every training job of a suite holds one `Optim`; the runner
hands it to the training loop, which builds Adam from it."""

from __future__ import annotations

from dataclasses import dataclass

from bench.schedule import Schedule

ON_RELAPSE = ("continue", "rollback")


@dataclass(frozen=True)
class Optim:
    batch_size: int = 64  # images per step, over all processes
    lr: float = 1e-3  # Adam's base rate; the schedule scales it
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's moment decays (torch's defaults)
    clip_norm: float = 10.0  # the gradient's global norm is clipped to this
    schedule: str = "constant"  # "constant" or "wsd" (bench/schedule.py): warm-up, stable, decay
    warmup_epochs: float = 0.0
    decay_epochs: float = 0.0  # the last decay_epochs of the epoch budget
    # what a relapse (bench/plateau.py: a valid point more than relapse_margin above the best, after
    # the escape) does: "continue" (only reported) or "rollback" (best-valid weights back, Adam reset,
    # the learning rate halved for the rest of the run; bench/training_loop.py)
    on_relapse: str = "continue"
    # the location policy's rate as a multiple of lr, for a model that has one (RAM's location network:
    # its policy_parameters()); 1 trains every parameter at the same rate
    policy_lr_scale: float = 1.0

    def __post_init__(self):
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"Optim.batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise ValueError(f"Optim.lr must be > 0, got {self.lr!r}")
        object.__setattr__(self, "betas", tuple(self.betas))  # a list from JSON or a command line
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"Optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        if not self.clip_norm > 0:
            raise ValueError(f"Optim.clip_norm must be > 0, got {self.clip_norm!r}")
        if self.on_relapse not in ON_RELAPSE:
            raise ValueError(f"Optim.on_relapse must be one of {', '.join(map(repr, ON_RELAPSE))}, "
                             f"got {self.on_relapse!r}")
        if not self.policy_lr_scale > 0:
            raise ValueError(f"Optim.policy_lr_scale must be > 0, got {self.policy_lr_scale!r}")
        self.lr_schedule()  # a bad schedule name or negative epochs is refused here, not mid-run

    def lr_schedule(self) -> Schedule:
        """The schedule's multiplier of ``lr`` as a function of the position in the epoch budget."""
        return Schedule(self.schedule, self.warmup_epochs, self.decay_epochs)
