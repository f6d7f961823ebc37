"""Glimpse models from outside this repository: `bench run --model mypkg.mymodule:build`, or a name
registered in the `glimpse.models` entry-point group. The contract is in docs/plugins.md.

`load_builder(spec)` finds the user's `build(config) -> nn.Module`; `PluginModel` wraps what it
returns so the harness trains, evaluates and records it like the built-in glimpse models: its
`forward` gives logits (B, T, classes) and optional windows, its `loss` is the user's own or the
cross-entropy of the last step (the mean over steps with the per-step protocol).
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
import warnings
from importlib import metadata
from pathlib import PurePath
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
        try:
            builder = found[spec].load()
        except Exception as e:  # noqa: BLE001 - the installed package's code: say whose error it is
            raise PluginError(f"--model {spec!r}: entry point {found[spec].value!r} of group {ENTRY_POINT_GROUP!r} "
                              f"does not load ({type(e).__name__}: {e}); reinstall or fix that package") from None
    else:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise PluginError(f"--model {spec!r}: give module.path:build, e.g. examples.tiny_glimpse:build")
        if module_name.endswith(".py") or "/" in module_name:
            path = PurePath(module_name)
            dotted = path.stem if path.is_absolute() else ".".join((*path.parent.parts, path.stem)).lstrip(".")
            raise PluginError(f"--model {spec!r}: give the module's dotted import name, not a file path, e.g. "
                              f"{dotted}:{attr} (with its folder on PYTHONPATH)")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            ours = e.name and (module_name == e.name or module_name.startswith(e.name + "."))
            where = ("is it on PYTHONPATH?" if ours
                     else f"the module imports {e.name!r}, which is not installed")
            raise PluginError(f"--model {spec!r}: cannot import {module_name!r} ({e}); {where}") from None
        except Exception as e:  # noqa: BLE001 - the user's module fails as it is imported
            raise PluginError(f"--model {spec!r}: importing {module_name!r} failed with {type(e).__name__}: {e}"
                              f"{_where(e)}") from None
        builder = getattr(module, attr, None)
        if builder is None:
            raise PluginError(f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}")
    if not callable(builder):
        raise PluginError(f"--model {spec!r}: {builder!r} is not callable; it must be build(config) -> nn.Module")
    return builder


def _where(e: BaseException) -> str:
    """' at FILE:LINE' of the innermost frame of an exception (or of a SyntaxError's text), if known."""
    if isinstance(e, SyntaxError) and e.filename:
        return f" at {e.filename}:{e.lineno}"
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""


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
            what = f"the class {model.__name__}" if inspect.isclass(model) else type(model).__name__
            raise PluginError(f"--model {spec!r}: build(config) returned {what}, not a torch nn.Module instance")
        attention = getattr(model, "attention_type", None)
        if attention is not None and attention not in ATTENTION_TYPES:
            raise PluginError(f"--model {spec!r}: attention_type must be one of {ATTENTION_TYPES}, got {attention!r}")
        self.model, self.spec, self.plugin_config = model, spec, dict(config)
        self.attention_type = attention or "unspecified"
        self._warned: set[str] = set()
        self._probability_checks = 0
        for train in (False, True):  # the cost hooks, tried now rather than after training
            self.flops_per_image(train=train)
        self.param_count()

    def forward(self, x: torch.Tensor, keep_windows: bool = True) -> GlimpseOutput:
        out = self.model(x)
        logits = out if torch.is_tensor(out) else getattr(out, "logits", None)
        c = self.plugin_config
        want = (x.shape[0], c["glimpses"], c["num_classes"])
        if not torch.is_tensor(logits) or tuple(logits.shape) != want:
            got = tuple(logits.shape) if torch.is_tensor(logits) else type(out).__name__
            raise PluginError(f"--model {self.spec!r}: forward must return logits (B, T, classes) = {want} "
                              f"(or an object with .logits), got {got}")
        if not logits.is_floating_point():
            raise PluginError(f"--model {self.spec!r}: forward must return floating-point logits, got {logits.dtype}")
        if self.training and torch.is_grad_enabled() and not logits.requires_grad:
            raise PluginError(f"--model {self.spec!r}: in training, the logits carry no gradient (detached, or "
                              "computed under no_grad): the harness cannot train the model through them")
        self._check_not_probabilities(logits)
        windows = getattr(out, "windows", None) if keep_windows else None
        if windows is not None and not (torch.is_tensor(windows) and windows.dim() == 3
                                        and tuple(windows.shape[:2]) == want[:2] and windows.shape[2] == 3):
            got = tuple(windows.shape) if torch.is_tensor(windows) else type(windows).__name__
            self._warn("windows", f"--model {self.spec!r}: .windows must be a tensor (B, T, 3) = "
                                  f"{(*want[:2], 3)} of (centre x, centre y, side); got {got}, so the report "
                                  "draws no windows")
        return GlimpseOutput(logits, windows)

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _check_not_probabilities(self, logits: torch.Tensor) -> None:
        """The cross-entropy takes logits: a model giving probabilities (rows >= 0 summing to 1) trains badly."""
        if self._probability_checks >= 3 or logits.shape[0] == 0:  # the first batches tell; later ones cost syncs
            return
        self._probability_checks += 1
        with torch.no_grad():
            last = logits[:, -1].float()
            looks = (last >= 0).all() & ((last.sum(-1) - 1).abs() <= 1e-3).all()
            if bool(looks):  # one sync with the device
                self._probability_checks = 3
                self._warn("probabilities", f"--model {self.spec!r}: forward's outputs look like probabilities "
                                            "(each row >= 0, summing to 1); the contract wants logits (before "
                                            "the softmax), which the harness's cross-entropy takes")

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Any]:
        own = getattr(self.model, "loss", None)
        if callable(own):
            res = own(x, y)
            loss = res[0] if isinstance(res, tuple) else res
            if not (torch.is_tensor(loss) and loss.dim() == 0 and loss.is_floating_point()):
                got = f"a tensor of shape {tuple(loss.shape)}, {loss.dtype}" if torch.is_tensor(loss) else \
                    type(loss).__name__
                raise PluginError(f"--model {self.spec!r}: loss(x, y) must return one floating-point number as a "
                                  f"0-dimensional tensor (or a tuple starting with it), e.g. the batch mean; got {got}")
            if torch.is_grad_enabled() and not loss.requires_grad:
                raise PluginError(f"--model {self.spec!r}: loss(x, y) returned a loss that carries no gradient "
                                  "(detached, or computed under no_grad)")
            return loss, res
        out = self.forward(x, keep_windows=False)
        if self.plugin_config.get("per_step_loss"):
            t = out.logits.shape[1]
            return F.cross_entropy(out.logits.flatten(0, 1), y.repeat_interleave(t)), out
        return F.cross_entropy(out.logits[:, -1], y), out

    def param_count(self) -> int:
        own = getattr(self.model, "param_count", None)
        if not callable(own):
            return sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return self._whole_number(own, "param_count()", allow_none=False)

    def flops_per_image(self, train: bool = False) -> int | None:
        own = getattr(self.model, "flops_per_image", None)
        if not callable(own):
            return None
        return self._whole_number(lambda: own(train=train), f"flops_per_image(train={train})", allow_none=True)

    def _whole_number(self, hook, name: str, allow_none: bool) -> int | None:
        try:
            value = hook()
        except Exception as e:  # noqa: BLE001 - the user's code
            raise PluginError(f"--model {self.spec!r}: {name} failed with {type(e).__name__}: {e}{_where(e)}; "
                              "the contract: param_count() and flops_per_image(train=False), each a whole "
                              "number") from None
        if value is None and allow_none:
            return None
        try:  # Python, numpy and 0-dimensional torch numbers alike
            number = None if isinstance(value, (bool, str)) else float(value)
        except (TypeError, ValueError, RuntimeError):
            number = None
        if number is None or not math.isfinite(number) or number < 0 or not number.is_integer():
            raise PluginError(f"--model {self.spec!r}: {name} must return a whole number >= 0"
                              f"{' or None' if allow_none else ''}, got {value!r}")
        return int(number)


def build(spec: str, config: dict) -> PluginModel:
    """The user's model for ``config`` (height, width, channels, num_classes, glimpses, per_step_loss)."""
    builder = load_builder(spec)
    try:
        model = builder(dict(config))
    except PluginError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: say whose error it is
        raise PluginError(f"--model {spec!r}: build(config) failed with {type(e).__name__}: {e}{_where(e)}") from e
    return PluginModel(model, spec, config)
