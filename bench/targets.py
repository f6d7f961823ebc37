"""A run's targets (the suite's, judged on the mean over seeds) and the plain-text summary that `bench
run` prints at the end: every metric, mean +- sample std over seeds, then each target PASS or MISS."""

from __future__ import annotations

import math

import numpy as np

from bench import suites


# Records made before the model was recorded hold the soft-attention classifier
_PARAM_DEFAULTS = {"model": "classifier"}


def _select(metrics: list[dict], name: str, where: tuple) -> list[dict]:
    return [m for m in metrics if m["name"] == name
            and all(m["params"].get(k, _PARAM_DEFAULTS.get(k)) == v for k, v in where)]


_COMPARE = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b}


def check_targets(suite: suites.Suite, metrics: list[dict]) -> list[dict]:
    out = []
    for t in suite.targets:
        rows = _select(metrics, t.metric, t.where)
        entry = {"target": t.describe(), "note": t.note, "value": None, "passed": None}
        if rows and t.op in _COMPARE:
            v = float(np.mean([m["value"] for m in rows]))
            entry["value"] = v
            entry["passed"] = bool(_COMPARE[t.op](v, t.value))
        elif rows and t.op == "falling":
            by_t: dict = {}
            for m in rows:
                if m["params"].get("glimpses") is not None:
                    by_t.setdefault(m["params"]["glimpses"], []).append(m["value"])
            ts = sorted(by_t)
            means = [float(np.mean(by_t[k])) for k in ts]
            entry["value"] = dict(zip(map(str, ts), means))
            # allow half a point of noise between neighbours, but the last must beat the first; one
            # glimpse count (a record of one model) cannot say whether the error falls
            entry["passed"] = None if len(means) < 2 else bool(
                means[-1] < means[0] and all(b <= a + 0.005 for a, b in zip(means, means[1:])))
        out.append(entry)
    return out


def _fmt(m: dict) -> str:
    v, unit = m["value"], m["unit"]
    if unit == "fraction" and m["name"] != "peak_fraction":
        return f"{v:.2%}"
    if unit == "images/s":
        st = m.get("stats", {})
        if st.get("repeats") == 1:
            return f"{v:,.0f} (one repeat)"
        return f"{v:,.0f} (IQR {st.get('iqr', math.nan):,.0f})"
    if m["name"] == "peak_fraction":
        return f"{v:.1%}"
    return f"{v:.2f}"


SHOWN = ("model", "dataset", "glimpses", "protocol", "attention", "attention_type", "steps", "k", "batch",
         "device")


def summary_table(record: dict) -> str:
    """A plain-text table of every metric (mean +- sample std over seeds, as in `bench tables`), then the targets."""
    groups: dict = {}
    for m in record["metrics"]:
        key = (m["name"], tuple((k, m["params"].get(k)) for k in SHOWN if m["params"].get(k) is not None))
        groups.setdefault(key, []).append(m)
    rows = [("metric", "params", "seeds", "value")]
    for (name, params), ms in groups.items():
        vals = [m["value"] for m in ms]
        first = {**ms[0], "value": float(np.mean(vals))}
        val = _fmt(first)
        if len(vals) > 1:
            val += f" +- {_fmt({**ms[0], 'value': float(np.std(vals, ddof=1)), 'stats': {}}).split(' ')[0]}"
        rows.append((name, " ".join(f"{k}={v}" for k, v in params), ",".join(str(m["seed"]) for m in ms), val))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if record.get("config", {}).get("dry_run"):
        lines.append("dry run: one batch of everything, one timed call per speed, no matmul peak; the figures "
                     "are not measurements and the suite's targets are not checked")
    for t in record.get("targets", []):
        mark = {True: "PASS", False: "MISS", None: "n/a "}[t["passed"]]
        val = t["value"]
        val = ", ".join(f"T={k}: {v:.2%}" for k, v in val.items()) if isinstance(val, dict) else \
            ("-" if val is None else f"{val:.4g}")
        lines.append(f"[{mark}] {t['target']}: {val}" + (f" ({t['note']})" if t["note"] else ""))
    return "\n".join(lines)
