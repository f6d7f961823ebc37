"""Device choice and seeding, shared by the harness and the tests. The training loop (gradient
clipping, the stop on non-finite losses) is bench/training_loop.py."""

from __future__ import annotations

import random

import numpy as np
import torch


class DeviceError(ValueError):
    """A device that was asked for but is not usable here."""


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
