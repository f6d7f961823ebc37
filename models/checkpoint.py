"""Checkpoints: model, optimiser, step, config, data variant and RNG states, written atomically.

Loading checks the stored config and data variant against the ones the caller expects and
names every differing field, so a checkpoint never silently lands in the wrong model. The RNG
states (python, numpy, torch, cuda) are stored so that a resumed run continues exactly.

Files are read with ``torch.load(weights_only=True)``: ``extra`` must hold plain Python values
and tensors only.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.fileio import atomic_write

from .common import ConfigMixin, dict_diff

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: mismatched config, data variant or weights."""


@dataclass
class Checkpoint:
    step: int
    config: dict[str, Any]
    config_class: str
    data_variant: Any
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    rng: dict[str, Any]
    extra: dict[str, Any] | None


def get_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and cuda) RNG states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _config_dict(config: ConfigMixin | dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    if config is None:
        return None, ""
    if isinstance(config, ConfigMixin):
        return config.to_dict(), type(config).__name__
    if isinstance(config, dict):
        return dict(config), ""
    raise TypeError(f"config must be a ConfigMixin dataclass or a dict, got {type(config).__name__}")


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    step: int, config: ConfigMixin | dict[str, Any], data_variant: Any,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg, cfg_class = _config_dict(config)
    payload = {
        "format": FORMAT,
        "step": int(step),
        "config": cfg,
        "config_class": cfg_class,
        "data_variant": data_variant,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": get_rng_state(),
        "extra": extra,
    }
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def _describe(diff: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: stored {a!r}, given {b!r}" for k, (a, b) in diff.items())


def load_checkpoint(path: str | os.PathLike, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    expected_config: ConfigMixin | dict[str, Any] | None = None,
                    map_location: str | torch.device = "cpu", expected_data_variant: Any = None,
                    restore_rng: bool = False) -> Checkpoint:
    """Read a checkpoint, check it against ``expected_config`` / ``expected_data_variant`` (when
    given), then load its weights into ``model`` and its state into ``optimizer`` (when given).
    ``restore_rng=True`` also restores the RNG states, for an exact resume."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: check the path (or train first)")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a glimpse checkpoint of format {FORMAT}")
    ck = Checkpoint(step=raw["step"], config=raw["config"], config_class=raw["config_class"],
                    data_variant=raw["data_variant"], model_state=raw["model"],
                    optimizer_state=raw["optimizer"], rng=raw["rng"], extra=raw["extra"])

    if expected_config is not None:
        want, want_class = _config_dict(expected_config)
        if want_class and ck.config_class and want_class != ck.config_class:
            raise CheckpointError(f"{path} holds a {ck.config_class}, not a {want_class}")
        diff = dict_diff(ck.config or {}, want or {})
        if diff:
            raise CheckpointError(
                f"{path} was saved with a different config: {_describe(diff)}. "
                "Build the model from the stored config (Checkpoint.config) or pass the matching one.")
    if expected_data_variant is not None and ck.data_variant != expected_data_variant:
        if isinstance(ck.data_variant, dict) and isinstance(expected_data_variant, dict):
            detail = _describe(dict_diff(ck.data_variant, expected_data_variant))
        else:
            detail = f"stored {ck.data_variant!r}, given {expected_data_variant!r}"
        raise CheckpointError(f"{path} was trained on another data variant: {detail}")

    if model is not None:
        try:
            model.load_state_dict(ck.model_state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{path}: weights do not fit this model: {e}") from e
    if optimizer is not None:
        if ck.optimizer_state is None:
            raise CheckpointError(f"{path} holds no optimiser state; load without an optimizer")
        try:
            optimizer.load_state_dict(ck.optimizer_state)
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: optimiser state does not fit this optimiser: {e}") from e
    if restore_rng:
        set_rng_state(ck.rng)
    return ck
