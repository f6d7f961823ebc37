"""What every model shares: flat dataclass configs that round-trip through plain dicts.

A config is a ``@dataclass`` subclass of :class:`ConfigMixin` whose defaults are the paper's
Table 3 values. ``to_dict`` / ``from_dict`` round-trip it through JSON-safe dicts (saved next to
every result and inside every checkpoint); ``diff`` names the fields that differ. ``check_images``
and ``param_count`` are the models' shared input check and size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

C = TypeVar("C", bound="ConfigMixin")


class ConfigError(ValueError):
    """A config dict that does not fit its dataclass (unknown field, wrong type)."""


class ConfigMixin:
    """Mixin for flat ``@dataclass`` configs: ``to_dict``, ``from_dict``, ``diff``, ``replace``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        """Build from a dict; missing fields take their defaults, unknown fields are an error."""
        if not isinstance(d, dict):
            raise ConfigError(f"{cls.__name__}.from_dict needs a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(fields)}. "
                "Remove them or check the spelling."
            )
        out = {}
        for name, value in d.items():
            default = fields[name].default
            out[name] = _coerce(cls.__name__, name, value, default)
        return cls(**out)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})

    def diff(self, other: ConfigMixin | dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{field: (self's value, other's value)} for every field that differs (missing = None)."""
        return dict_diff(self.to_dict(), other.to_dict() if isinstance(other, ConfigMixin) else dict(other))


def _coerce(cls_name: str, name: str, value: Any, default: Any) -> Any:
    """Check a value against its default's type; ints are accepted where floats are expected."""
    if default is dataclasses.MISSING or default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{cls_name}.{name} must be a bool (true/false), got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{cls_name}.{name} must be an int, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{cls_name}.{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{cls_name}.{name} must be a string, got {value!r}")
    return value


def dict_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (a's value, b's value)} for every key whose values differ; a missing key reads None."""
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_images(x, model: str, shape: tuple[int, int, int]):
    """``x`` itself when it is a float (B, C, H, W) batch with (C, H, W) = ``shape``, else a ValueError
    that says how to fix it."""
    if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != tuple(shape):
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{model} expects images of shape (B, {shape[0]}, {shape[1]}, {shape[2]}), got {got}; "
                         f"add a channel axis with x.unsqueeze(1) or set the config's height/width/channels")
    if not x.is_floating_point():
        raise ValueError(f"{model} expects float images in [0, 1], got dtype {x.dtype}; convert with x.float() / 255")
    return x


def param_count(module) -> int:
    """Number of trainable parameters of a torch module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
