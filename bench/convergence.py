"""Had a model's validation figure stopped improving when its training ended?

The long runs go on until the target holds or validation has been flat for ``WINDOW`` epochs. Each
unit's verdict comes from its curve: over its last ``WINDOW`` whole epochs, did the best validation
figure improve on the best before them by more than the metric's tolerance?

- ``improving``: it did; more training (a larger ``--epochs`` with ``--resume``) would likely lower it;
- ``flat``: it did not; the run has converged under its recipe;
- ``short``: fewer than ``WINDOW + 1`` whole epochs, too few to tell.

Tolerances are the noise floor of a validation figure: 0.1 percentage point of error (10 of the
10,000 validation images), 0.1 nat of bound. A gain of exactly the tolerance is flat, however the
subtraction of two stored figures happens to round.
"""

from __future__ import annotations

WINDOW = 10
TOLERANCE = {"valid_error": 0.001, "valid_nll_elbo": 0.1}
ROUNDING = 1e-9  # far below any tolerance, far above float64's error in subtracting two figures


def metric_of(curve: list[dict]) -> str | None:
    """The validation column a curve is judged on: DRAW's bound, else the classification error."""
    for metric in ("valid_nll_elbo", "valid_error"):
        if any(e.get(metric) is not None for e in curve):
            return metric
    return None


def latest_epochs(curve: list[dict], metric: str) -> list[dict]:
    """The curve's whole epochs that have ``metric``, as the model went through them last: a run that
    restarted from an earlier checkpoint (a rollback, or an extension that restarted its decay) repeats
    epoch numbers, and its later points replace those it went back over."""
    kept: list[dict] = []
    for entry in curve:
        if entry.get("partial_epoch") or entry.get(metric) is None:
            continue
        while kept and kept[-1]["epoch"] >= entry["epoch"]:
            kept.pop()
        kept.append(entry)
    return kept


def verdict(curve: list[dict], metric: str, window: int = WINDOW, tolerance: float | None = None) -> dict:
    """The verdict on ``curve``'s ``metric`` (lower is better) at its last epoch; ``gain`` is how much the
    last ``window`` epochs lowered the best figure, in the metric's units."""
    if tolerance is None:
        if metric not in TOLERANCE:
            raise ValueError(f"no tolerance known for {metric!r}: pass one (known: {', '.join(TOLERANCE)})")
        tolerance = TOLERANCE[metric]
    points = latest_epochs(curve, metric)
    out = {"metric": metric, "window": window, "tolerance": tolerance,
           "last_epoch": points[-1]["epoch"] if points else None}
    if len(points) <= window:
        return {**out, "status": "short"}
    best_before = min(points[:-window], key=lambda p: p[metric])
    best_recent = min(points[-window:], key=lambda p: p[metric])
    gain = best_before[metric] - best_recent[metric]
    best = best_recent if gain > 0 else best_before
    return {**out, "status": "improving" if gain > tolerance + ROUNDING else "flat", "gain": gain,
            "best": best[metric], "best_epoch": best["epoch"]}


def brief(result: dict) -> str:
    """A few words for one of several models in a table cell."""
    if result["status"] != "improving":
        return result["status"]
    return f"improving ({_gain(result)})"


def _gain(result: dict) -> str:
    scale, unit = (100, " pts") if result["metric"].endswith("error") else (1, " nats")
    return f"{result['gain'] * scale:.2f}{unit}"


def describe(result: dict) -> str:
    """One phrase for a log line or a table cell."""
    w = result["window"]
    if result["status"] == "short":
        return f"too few epochs to judge convergence (under {w + 1})"
    if result["status"] == "improving":
        return f"still improving (best valid fell {_gain(result)} in the last {w} epochs)"
    if result["gain"] <= 0:
        return f"flat for the last {w} epochs (best valid at epoch {result['best_epoch']})"
    return f"flat (best valid fell only {_gain(result)} in the last {w} epochs)"
