"""Glimpse models from outside this repository: `bench run --model mypkg.mymodule:build`, or a name
registered in the `glimpse.models` entry-point group. The contract is in docs/plugins.md.

`load_builder(spec)` finds the user's `build(config) -> nn.Module`; `PluginModel` wraps what it
returns so the harness trains, evaluates and records it like the built-in glimpse models: its
`forward` gives logits (B, T, classes) and optional windows, its `loss` is the user's own or the
cross-entropy of the last step (the mean over steps with the per-step protocol).
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import Any, Callable, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from datasets.cliargs import UsageError

ENTRY_POINT_GROUP = "glimpse.models"
ATTENTION_TYPES = ("soft", "hard", "none")


class PluginError(UsageError):
    """A plug-in that cannot be found, built or used; the message says what the contract wants."""


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_builder(spec: str) -> Callable[[dict], nn.Module]:
    """``module.path:attribute``, or the name of a ``glimpse.models`` entry point."""
    if not isinstance(spec, str) or not spec.strip():
        raise PluginError("--model needs module.path:build or an entry-point name, got an empty value")
    if ":" not in spec:
        found = _entry_points()
        if spec not in found:
            known = ", ".join(sorted(found)) or "none installed"
            raise PluginError(f"--model {spec!r}: no entry point of that name in group {ENTRY_POINT_GROUP!r} "
                              f"({known}); or give module.path:build")
        builder = found[spec].load()
    else:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise PluginError(f"--model {spec!r}: give module.path:build, e.g. examples.tiny_glimpse:build")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise PluginError(f"--model {spec!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") \
                from None
        builder = getattr(module, attr, None)
        if builder is None:
            raise PluginError(f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(builder):
        raise PluginError(f"--model {spec!r}: {builder!r} is not callable; it must be build(config) -> nn.Module")
    return builder


def short_name(spec: str) -> str:
    """A file-name-safe name for unit ids: the module's last part (and the attribute unless 'build')."""
    module, _, attr = spec.partition(":")
    name = module.rsplit(".", 1)[-1] + ("" if attr in ("", "build") else f"-{attr}")
    return re.sub(r"[^A-Za-z0-9_-]", "-", name)


class GlimpseOutput(NamedTuple):
    logits: torch.Tensor  # (B, T, classes)
    windows: Any = None  # what the model gave for drawing, or None


class PluginModel(nn.Module):
    """The user's model, checked against the contract and given the harness's interface."""

    def __init__(self, model: nn.Module, spec: str, config: dict):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise PluginError(f"--model {spec!r}: build(config) returned {type(model).__name__}, not a torch nn.Module")
        attention = getattr(model, "attention_type", None)
        if attention is not None and attention not in ATTENTION_TYPES:
            raise PluginError(f"--model {spec!r}: attention_type must be one of {ATTENTION_TYPES}, got {attention!r}")
        self.model, self.spec, self.plugin_config = model, spec, dict(config)
        self.attention_type = attention or "unspecified"

    def forward(self, x: torch.Tensor, keep_windows: bool = True) -> GlimpseOutput:
        out = self.model(x)
        logits = out if torch.is_tensor(out) else getattr(out, "logits", None)
        c = self.plugin_config
        want = (x.shape[0], c["glimpses"], c["num_classes"])
        if not torch.is_tensor(logits) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if torch.is_tensor(logits) else type(out).__name__
            raise PluginError(f"--model {self.spec!r}: forward must return logits (B, T, classes) = {want} "
                              f"(or an object with .logits), got {got}")
        windows = getattr(out, "windows", None) if keep_windows else None
        return GlimpseOutput(logits, windows)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        own = getattr(self.model, "loss", None)
        if callable(own):
            res = own(x, y)
            loss = res[0] if isinstance(res, tuple) else res
            return loss, res
        out = self.forward(x, keep_windows=False)
        if self.plugin_config.get("per_step_loss"):
            t = out.logits.shape[1]
            return F.cross_entropy(out.logits.flatten(0, 1), y.repeat_interleave(t)), out
        return F.cross_entropy(out.logits[:, -1], y), out

    def param_count(self) -> int:
        own = getattr(self.model, "param_count", None)
        return int(own()) if callable(own) else sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def flops_per_image(self, train: bool = False) -> int | None:
        own = getattr(self.model, "flops_per_image", None)
        return int(own(train=train)) if callable(own) else None


def build(spec: str, config: dict) -> PluginModel:
    """The user's model for ``config`` (height, width, channels, num_classes, glimpses, per_step_loss)."""
    builder = load_builder(spec)
    try:
        model = builder(dict(config))
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: say whose error it is
        raise PluginError(f"--model {spec!r}: build(config) failed with {type(e).__name__}: {e}") from e
    return PluginModel(model, spec, config)
