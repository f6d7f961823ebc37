"""What a model's training cost, by where it ran: core-hours on CPUs, hours on an accelerator.

The training loop keeps, per unit, the seconds spent in training steps by where they ran:

- ``"cpu"``: the process's CPU time (``time.process_time``), which is core-seconds: a run that
  shares its cores with other work is not charged for the time it waited;
- an accelerator's name (``"NVIDIA H200"``): wall seconds on it;
- ``"unattributed"``: wall seconds from checkpoints made before the cost was kept. They are charged
  to the machine that began the record (wall time x threads on a CPU), where those sittings ran.

Under torch.distributed the ranks' seconds are summed (every rank holds the sum). A unit resumed
across machines keeps each part, so a run begun on a GPU and finished on a CPU
reads "0.12 h on NVIDIA H200 + 1.10 core-h".
"""

from __future__ import annotations

import torch

CPU = "cpu"
UNATTRIBUTED = "unattributed"
CORE_HOURS = "core-h"


def where(device: torch.device | str) -> str:
    """The key a training step on ``device`` is charged to."""
    device = torch.device(device)
    if device.type == "cpu":
        return CPU
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def legacy(train_time_s: float) -> dict[str, float]:
    """The cost of a unit whose checkpoint predates the cost: its wall time, not yet attributed."""
    return {UNATTRIBUTED: train_time_s} if train_time_s else {}


def label(machine: dict) -> tuple[str, int]:
    """The unit a machine's training is counted in and the threads its wall time is multiplied by."""
    if machine.get("device", "cpu") == "cpu":
        return CORE_HOURS, machine.get("threads") or 1
    return f"h on {machine.get('device_name') or machine.get('device')}", 1


def hours(cost: dict | None, train_time_s: float | None, machine: dict) -> dict[str, float]:
    """{unit: hours} ("core-h", "h on NVIDIA H200") of one model's training. ``cost`` is the loop's
    (None for entries made before it was kept: all of ``train_time_s`` is then unattributed);
    ``machine`` is the one that began the record, which unattributed time is charged to."""
    if cost is None:
        cost = legacy(train_time_s or 0.0)
    out: dict[str, float] = {}
    for key, seconds in cost.items():
        if key == UNATTRIBUTED:
            unit, threads = label(machine)
            h = seconds * threads / 3600
        elif key == CPU:
            unit, h = CORE_HOURS, seconds / 3600
        else:
            unit, h = f"h on {key}", seconds / 3600
        out[unit] = out.get(unit, 0.0) + h
    return {u: h for u, h in out.items() if h > 0}


def core_seconds(cost: dict | None, train_time_s: float, threads: int) -> float:
    """Core-seconds of training wholly on CPUs: the kept CPU time; wall time x ``threads`` where the
    cost was not kept throughout (or not on a CPU)."""
    return cost[CPU] if cost and set(cost) == {CPU} else train_time_s * threads


def text(parts: dict[str, float]) -> str:
    """'1.23 core-h', '0.12 h on NVIDIA H200 + 1.10 core-h'; '' for no training time."""
    return " + ".join(f"{h:.2f} {unit}" for unit, h in parts.items())


def add(total: dict[str, float], key: str, seconds: float) -> None:
    total[key] = total.get(key, 0.0) + seconds
