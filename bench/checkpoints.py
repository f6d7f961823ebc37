"""Atomic checkpoint files: write to a temporary file in the same folder, fsync, rename."""

from __future__ import annotations

from pathlib import Path

import torch

from datasets.fileio import atomic_write


class CheckpointError(RuntimeError):
    pass


def save(path: str | Path, state: dict) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path (checkpoints are written under "
                              f"runs/checkpoints/ unless --checkpoint-dir says otherwise)")
    try:
        # Our checkpoints hold RNG states and plain containers; weights_only=False is needed for them,
        # so only load checkpoints you made or trust.
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e}); "
                              "it is damaged or not a glimpse checkpoint") from e
