"""Atomic checkpoint files: write to a temporary file in the same folder, fsync, rename; a failed
write (a full disk) leaves the previous checkpoint as it was."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from datasets.fileio import atomic_write_bytes


class CheckpointError(RuntimeError):
    pass


def _serialise(state: dict) -> bytes:
    """The checkpoint's bytes, made in memory: torch.save turns a failed file write into an unclear
    RuntimeError, so only plain bytes go to disk (a full disk then raises WriteError)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save(path: str | Path, state: dict) -> None:
    atomic_write_bytes(path, _serialise(state))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path (checkpoints are written under "
                              f"runs/checkpoints/ unless --checkpoint-dir says otherwise)")
    try:
        # Our checkpoints hold RNG states and plain containers; weights_only=False is needed for them,
        # so only load checkpoints you made or trust.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise CheckpointError(f"{path}: unreadable checkpoint ({reason}); "
                              "it is damaged or not a glimpse checkpoint") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a glimpse checkpoint; "
                              "give a checkpoint written by bench run")
    return state


# What a reference checkpoint keeps: enough to rebuild the model and evaluate it, no optimiser.
_REFERENCE_KEYS = ("format", "task", "epoch", "step", "images_seen", "train_time_s", "best", "curve", "stopped_by")


def export_reference(src: str | Path, dst: str | Path) -> Path:
    """Write a small evaluation-only copy of a training checkpoint: the best-`valid` weights (or the
    last ones), the task description and the curve, without the optimiser or RNG states. `bench eval`
    reads it like the full checkpoint; `--resume` needs the full one."""
    state = load(src)
    if not isinstance(state.get("task"), dict):
        raise CheckpointError(f"{src}: not a checkpoint written by bench run (no task description)")
    slim = {k: state[k] for k in _REFERENCE_KEYS if k in state}
    slim["model"] = state.get("best_state") or state["model"]
    slim["reference_of"] = Path(src).name
    atomic_write_bytes(dst, _serialise(slim))
    return Path(dst)
