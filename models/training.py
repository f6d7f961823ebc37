"""Training guards shared by all models: device choice, seeding, gradient clipping, NaN stop."""

from __future__ import annotations

import math
import random
from typing import Iterable

import numpy as np
import torch


class DeviceError(ValueError):
    """A device that was asked for but is not usable here."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or inf; names the step and the value."""

    def __init__(self, step: int, value: float, what: str = "loss"):
        self.step, self.value, self.what = step, value, what
        super().__init__(
            f"{what} became {value} at step {step}: training stopped. Lower the learning rate, "
            "tighten gradient clipping (--clip) or resume from an earlier checkpoint.")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda > mps > cpu; 'cpu', 'cuda', 'cuda:N' or 'mps' are checked for availability."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from e
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for but CUDA is not available here "
                              "(no GPU or a CPU-only torch build): use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for but only {torch.cuda.device_count()} "
                              "CUDA device(s) exist")
        return dev
    if dev.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {name!r} asked for but MPS is not available here: use --device cpu or auto")
        return dev
    raise DeviceError(f"unsupported device {name!r}: use auto, cpu, cuda, cuda:N or mps")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices). On CPU the same seed gives the same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def check_finite(loss: torch.Tensor, step: int) -> float:
    """The loss as a float; raises NonFiniteLossError when it is NaN or inf."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(step, value, "loss")
    return value


def clip_and_step(params: Iterable[torch.nn.Parameter] | torch.nn.Module, optimizer: torch.optim.Optimizer,
                  loss: torch.Tensor, max_norm: float | None, step: int = 0) -> float:
    """zero_grad, backward, clip the global gradient norm to ``max_norm`` (None or <= 0: no
    clipping), optimiser step. Returns the gradient norm before clipping. Raises
    NonFiniteLossError, without touching the weights, when the loss or the gradient norm is NaN/inf."""
    check_finite(loss, step)
    params = list(params.parameters() if isinstance(params, torch.nn.Module) else params)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    limit = max_norm if (max_norm is not None and max_norm > 0) else math.inf
    norm = float(torch.nn.utils.clip_grad_norm_(params, limit))
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        raise NonFiniteLossError(step, norm, "gradient norm")
    optimizer.step()
    return norm


class TrainGuard:
    """Counts steps and applies :func:`clip_and_step`; keeps the last loss and gradient norm."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float | None = 10.0,
                 start_step: int = 0):
        self.model, self.optimizer, self.max_norm = model, optimizer, max_norm
        self.step_count = start_step
        self.last_loss = math.nan
        self.last_grad_norm = math.nan

    def step(self, loss: torch.Tensor) -> float:
        """One guarded optimiser step; returns the loss value."""
        self.step_count += 1
        self.last_loss = check_finite(loss, self.step_count)
        self.last_grad_norm = clip_and_step(self.model, self.optimizer, loss, self.max_norm, self.step_count)
        return self.last_loss
