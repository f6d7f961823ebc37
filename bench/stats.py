"""The median and spread of repeated measurements, as every benchmark and study here reports them."""

from __future__ import annotations

import statistics


def iqr(values: list[float]) -> float:
    """Interquartile range (inclusive quartiles); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def median_iqr(values: list[float]) -> dict:
    return {"median": statistics.median(values), "iqr": iqr(values)}
