"""Where a learning curve left its starting plateau, and whether it fell back.

Attention models first sit on a plateau while their windows do not yet find the digit: the glimpse
classifier at about 80% error (chance is 90%), DRAW near 200 nats. A run that never leaves it has
not learned the task, and its final number must not pass for a result: the runner flags it loudly
and the tables mark it.

- escape: the first validation point below ``escape_below``;
- relapse: a later validation point more than ``relapse_margin`` above the best seen so far;
- ended relapsed: the curve ends in a relapse that began at the given point (it never came back).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plateau:
    metric: str  # the curve's validation column
    escape_below: float
    relapse_margin: float
    what: str  # how the plateau is described in warnings


CLASSIFIER = Plateau("valid_error", 0.7, 0.05, "chance-level error (about 80%)")
# Binarized MNIST scored against its mean image costs about 206 nats; DRAW sits at 195-210 while it
# draws little more than that. Below 180 it draws digits (one epoch of attention DRAW reaches 172-186).
DRAW = Plateau("valid_nll_elbo", 180.0, 5.0, "the ~200-nat mean-image plateau")
# Two-digit 60x60 MNIST, grey levels as Bernoulli targets, scored against its mean image: about 624 nats
# (the mean of 10,000 training images, on 4,000 validation images; binarized MNIST 204.5 the same way).
# One epoch of attention DRAW reaches 412. Both numbers scale binarized MNIST's by the mean-image cost.
TWODIGIT_DRAW = Plateau("valid_nll_elbo", 550.0, 15.0, "the ~620-nat mean-image plateau")
# DRAW's plateau is a cost in nats, which depends on the images: a rule per dataset
DRAW_BY_DATASET = {"binarized": DRAW, "twodigit60": TWODIGIT_DRAW}


def for_task(kind: str, dataset: str | None) -> Plateau | None:
    """The plateau rule of a model kind on ``dataset``; None where none is known (DRAW on a dataset
    whose mean-image cost has not been measured): no plateau check then."""
    if kind == "draw":
        return DRAW_BY_DATASET.get(dataset)
    return {"classifier": CLASSIFIER, "ram": CLASSIFIER, "plugin": CLASSIFIER}.get(kind)


def for_metric(metric: str) -> Plateau | None:
    """The plateau rule of a curve's validation column (``valid_`` + a task's ``select``)."""
    return {p.metric: p for p in (CLASSIFIER, DRAW)}.get(metric)


def is_relapse(curve: list[dict], value: float, plateau: Plateau) -> bool:
    """Whether a new validation ``value`` is a relapse after the points of ``curve`` (which it does not
    include), by the same rule as `analyse`: the curve had escaped and the value is more than
    ``relapse_margin`` above its best."""
    values = [e[plateau.metric] for e in curve if e.get(plateau.metric) is not None]
    return (any(v < plateau.escape_below for v in values)
            and value > min(values) + plateau.relapse_margin)


def analyse(curve: list[dict], plateau: Plateau) -> dict:
    """Escape point, relapses and whether the run is still on the plateau, from a training curve."""
    escape, best, relapses, back = None, float("inf"), [], None
    for entry in curve:
        value = entry.get(plateau.metric)
        if value is None:
            continue
        if escape is None and value < plateau.escape_below:
            escape = {"epoch": entry["epoch"], "images_seen": entry.get("images_seen"), "value": value}
        elif escape is not None and value > best + plateau.relapse_margin:
            relapses.append({"epoch": entry["epoch"], "images_seen": entry.get("images_seen"), "value": value,
                             "best_before": best})
        if escape is not None:  # relapsed since this point, if the curve ends there
            back = back or {"epoch": entry["epoch"], "value": value} if value > best + plateau.relapse_margin else None
        best = min(best, value)
    return {"metric": plateau.metric, "escape_below": plateau.escape_below,
            "relapse_margin": plateau.relapse_margin, "escaped": escape, "relapses": relapses,
            "on_plateau": escape is None and bool(curve), "ended_relapsed": back}


def describe(result: dict, plateau: Plateau) -> str:
    if result["on_plateau"]:
        return (f"WARNING: never left {plateau.what}: {plateau.metric} stayed >= {plateau.escape_below:g}; "
                "its test figure is not a result of the method")
    e = result["escaped"]
    seen = f" ({e['images_seen']:,} images)" if e and e.get("images_seen") is not None else ""
    text = f"left the plateau at epoch {e['epoch']}{seen}" if e else "no curve"
    if result["relapses"]:
        worst = max(result["relapses"], key=lambda r: r["value"] - r["best_before"])
        text += (f"; {len(result['relapses'])} relapse(s), worst at epoch {worst['epoch']}: "
                 f"{worst['value']:.4g} after {worst['best_before']:.4g}")
    return text
