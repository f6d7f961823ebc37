"""Atomic checkpoint files: write to a temporary file in the same folder, fsync, rename; a failed
write (a full disk) leaves the previous checkpoint as it was."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from bench import checkpoint_bytes
from datasets.fileio import atomic_write_bytes


class CheckpointError(RuntimeError):
    pass


def _serialise(state: dict, compress: bool = False) -> bytes:
    """The checkpoint's bytes, made in memory: torch.save turns a failed file write into an unclear
    RuntimeError, so only plain bytes go to disk (a full disk then raises WriteError). With
    ``compress``, losslessly compressed (bench/checkpoint_bytes.py): smaller, a few seconds slower."""
    if compress:
        return checkpoint_bytes.compress(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def pack(state: dict, compact: bool = False) -> dict:
    """What goes to disk. Always exact: best-valid weights equal to the current ones are stored once.
    With ``compact``, Adam's moments are stored in bfloat16 (relative error 2^-9, about half the
    file); a run continued from them tracks the uninterrupted one closely, not bit for bit."""
    out = dict(state)
    best, model = state.get("best_state"), state.get("model")
    if best is not None and model is not None and best.keys() == model.keys() and \
            all(torch.equal(best[k], model[k].to(best[k].device)) for k in best):  # best is kept on the CPU
        out["best_state"], out["best_is_model"] = None, True
    opt = state.get("optimizer")
    if compact and opt is not None:
        packed = {i: {k: v.to(torch.bfloat16) if torch.is_tensor(v) and v.dtype == torch.float32 and v.dim() > 0
                      else v for k, v in st.items()} for i, st in opt["state"].items()}
        out["optimizer"] = {**opt, "state": packed}
        out["optimizer_bf16"] = True
    return out


def unpack(state: dict) -> dict:
    """The state as the training loop made it, from what `pack` stored."""
    state = dict(state)
    if state.pop("best_is_model", False):
        state["best_state"] = {k: v.clone() for k, v in state["model"].items()}
    if state.pop("optimizer_bf16", False):
        opt = state["optimizer"]
        state["optimizer"] = {**opt, "state": {i: {k: v.float() if torch.is_tensor(v) and v.dtype == torch.bfloat16
                                                   else v for k, v in st.items()} for i, st in opt["state"].items()}}
    return state


def save(path: str | Path, state: dict, compact: bool = False, compress: bool = False) -> None:
    atomic_write_bytes(path, _serialise(pack(state, compact), compress))


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; check the path (checkpoints are written under "
                              f"runs/checkpoints/ unless --checkpoint-dir says otherwise)")
    try:
        # Our checkpoints hold RNG states and plain containers; weights_only=False is needed for them,
        # so only load checkpoints you made or trust.
        data = path.read_bytes()
        if checkpoint_bytes.is_compressed(data):
            state = checkpoint_bytes.decompress(data)
        else:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise CheckpointError(f"{path}: unreadable checkpoint ({reason}); "
                              "it is damaged or not a glimpse checkpoint") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a glimpse checkpoint; "
                              "give a checkpoint written by bench run")
    return unpack(state)


# What a reference checkpoint keeps: enough to rebuild the model and evaluate it, no optimiser.
_REFERENCE_KEYS = ("format", "task", "epoch", "step", "images_seen", "train_time_s", "train_cost", "best", "curve",
                   "stopped_by")


def export_reference(src: str | Path, dst: str | Path, state: dict | None = None) -> Path:
    """Write a small evaluation-only copy of a training checkpoint: the best-`valid` weights (or the
    last ones), the task description and the curve, without the optimiser or RNG states. `bench eval`
    reads it like the full checkpoint; `--resume` needs the full one. ``state``: ``src`` already loaded."""
    state = load(src) if state is None else state
    if not isinstance(state.get("task"), dict):
        raise CheckpointError(f"{src}: not a checkpoint written by bench run (no task description)")
    slim = {k: state[k] for k in _REFERENCE_KEYS if k in state}
    slim["model"] = state.get("best_state") or state["model"]
    slim["reference_of"] = Path(src).name
    atomic_write_bytes(dst, _serialise(slim, compress=True))
    return Path(dst)


def is_export(state: dict) -> bool:
    """Whether ``state`` is an evaluation-only export (`export_reference`), not a training checkpoint."""
    return "reference_of" in state


def stable_path(path: str | Path) -> Path:
    """Where the training loop keeps the state at the start of a run's decay, beside its checkpoint."""
    path = Path(path)
    return path.with_name(path.stem + ".stable" + path.suffix)


def keep_for_evaluation(path: str | Path) -> bool:
    """Replace a finished run's training checkpoint by its evaluation-only export, in place, when
    nothing would continue from it: it ended at its epoch budget, so only a larger one continues it,
    and that restarts from the state kept where the run's decay began (`stable_path`), which must be
    there. The export is about a third of the file (no optimiser state, one copy of the weights), so
    the repository grows less per finished model. Returns whether the file was replaced; a run that
    is unfinished, stopped by its time budget (a larger one continues it from here), has no decay or
    lacks that state keeps its full checkpoint."""
    path = Path(path)
    state = load(path)
    if is_export(state) or not state.get("finished") or state.get("stopped_by") != "epochs" \
            or not state.get("decay_saved") or not stable_path(path).is_file():
        return False
    export_reference(path, path, state)
    return True
