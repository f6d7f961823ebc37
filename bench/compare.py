"""`bench compare A B`: every metric of A beside B, the delta and a verdict.

- Quality metrics (errors, NLL bounds): the mean over seeds; a regression when B is worse than
  A by more than the metric's absolute threshold (an improvement when better by more).
- Throughput (images/s): a regression when the median ratio is worse than ``factor`` AND the
  interquartile ranges do not overlap (asv's rule); either alone is "within noise".
- Metrics present in only one side are listed; differing machines give a warning.
- Dry-run records are left out (one batch, one timed call: nothing to compare), with a warning.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from bench import records

# Absolute thresholds per quality metric; None: shown, never judged.
THRESHOLDS = {
    "test_error": 0.005,  # half a percentage point
    "valid_error": 0.005,
    "nll_elbo": 1.0,  # nats
    "nll_iwae": 1.0,
    "kl": None,
    "reconstruction": None,
    "peak_fraction": None,
}
SPEED = ("train_images_per_s", "eval_images_per_s")
# per-seed or bookkeeping, not identity; on_plateau (a seed that never left its starting plateau) is
# said in a warning, and its figure is judged like any other
IGNORED_PARAMS = ("job", "test_images", "valid_images", "on_plateau")


@dataclass
class Side:
    values: list[float]
    mean: float
    lo: float | None = None  # throughput: q1 (lowest over records)
    hi: float | None = None  # throughput: q3 (highest)


@dataclass
class Row:
    name: str
    params: dict
    a: Side
    b: Side
    delta: float
    verdict: str  # regression | improvement | same | within noise | info
    detail: str = ""


@dataclass
class Result:
    rows: list[Row]
    only_a: list[tuple[str, dict]]
    only_b: list[tuple[str, dict]]
    warnings: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "regression"]


def _key(m: dict) -> tuple[str, str]:
    params = {k: v for k, v in m["params"].items() if k not in IGNORED_PARAMS}
    if params.get("binarization") == "fixed":  # records made before it was named trained on fresh binarizations
        params.setdefault("train_binarization", "fresh per epoch")
    return m["name"], json.dumps(params, sort_keys=True, default=str)


def load(path) -> tuple[dict, set[str], int]:
    """{key: [metric, ...]} over every record at ``path`` (seeds pooled), the machine ids, and how
    many dry-run records were left out."""
    groups: dict = {}
    machines = set()
    dry = 0
    found = records.find(path)
    if not found:
        raise records.RecordError(f"{path}: holds no records; give a record file or a folder of records")
    for p in found:
        r = records.read(p)
        if records.is_dry_run(r):
            dry += 1
            continue
        machines.add(r["machine"].get("id", "?"))
        for m in r["metrics"]:
            groups.setdefault(_key(m), []).append(m)
    return groups, machines, dry


def _side(ms: list[dict], speed: bool) -> Side:
    ms = [m for m in ms if m["value"] is not None]  # a NaN is written as null
    vals = [m["value"] for m in ms]
    if not vals:
        return Side([], float("nan"))
    if speed:
        q1 = [m.get("stats", {}).get("q1", m["value"]) for m in ms]
        q3 = [m.get("stats", {}).get("q3", m["value"]) for m in ms]
        return Side(vals, float(np.median(vals)), float(min(q1)), float(max(q3)))
    return Side(vals, float(np.mean(vals)))


def judge(name: str, lower_is_better: bool | None, a: Side, b: Side, speed_factor: float,
          thresholds: dict | None = None) -> tuple[str, str]:
    thresholds = THRESHOLDS if thresholds is None else thresholds
    missing = [side for side, v in (("A", a.mean), ("B", b.mean)) if not math.isfinite(v)]
    if missing:  # a NaN recorded (as null) on every record of a side
        return "info", f"no finite value on {' and '.join(missing)}"
    if name in SPEED:
        ratio = b.mean / a.mean if a.mean else float("inf")
        disjoint_low = b.hi < a.lo
        disjoint_high = b.lo > a.hi
        detail = f"ratio {ratio:.3f}"
        if ratio < 1 / speed_factor and disjoint_low:
            return "regression", detail
        if ratio > speed_factor and disjoint_high:
            return "improvement", detail
        if ratio < 1 / speed_factor or ratio > speed_factor:
            return "within noise", detail + ", IQRs overlap"
        return "same", detail
    thr = thresholds.get(name)
    if thr is None or lower_is_better is None:
        return "info", ""
    worse = (b.mean - a.mean) if lower_is_better else (a.mean - b.mean)
    detail = f"threshold {thr:g}"
    if worse > thr:
        return "regression", detail
    if worse < -thr:
        return "improvement", detail
    return "same", detail


def compare_paths(a, b, speed_factor: float = 1.10, thresholds: dict | None = None) -> Result:
    ga, ma, dry_a = load(a)
    gb, mb, dry_b = load(b)
    rows = []
    for key in sorted(set(ga) & set(gb)):
        name = key[0]
        speed = name in SPEED
        sa, sb = _side(ga[key], speed), _side(gb[key], speed)
        verdict, detail = judge(name, ga[key][0]["lower_is_better"], sa, sb, speed_factor, thresholds)
        rows.append(Row(name, json.loads(key[1]), sa, sb, sb.mean - sa.mean, verdict, detail))
    only_a = [(k[0], json.loads(k[1])) for k in sorted(set(ga) - set(gb))]
    only_b = [(k[0], json.loads(k[1])) for k in sorted(set(gb) - set(ga))]
    warnings = [f"{side}: {n} dry-run record(s) left out (one batch, one timed call: not measurements)"
                for side, n in (("A", dry_a), ("B", dry_b)) if n]
    for side, groups in (("A", ga), ("B", gb)):
        stuck = sorted({(m["name"], m["params"].get("job") or "?") for ms in groups.values() for m in ms
                        if m["params"].get("on_plateau")})
        if stuck:
            warnings.append(f"{side}: {len(stuck)} figure(s) from runs that never left their starting plateau "
                            f"(not results of the method): {', '.join(f'{n} of {j}' for n, j in stuck)}")
    if ma and mb and ma != mb:
        warnings.append(f"machines differ (A: {', '.join(sorted(ma))}; B: {', '.join(sorted(mb))}): "
                        "throughput differences may come from the hardware, not the code")
    return Result(rows, only_a, only_b, warnings)


def _p(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items() if v is not None)


def _v(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:,.0f}"


def format_result(res: Result) -> str:
    table = [("metric", "params", "A", "B", "delta", "verdict")]
    for r in res.rows:
        a = _v(r.a.mean) + (f" (n={len(r.a.values)})" if len(r.a.values) > 1 else "")
        b = _v(r.b.mean) + (f" (n={len(r.b.values)})" if len(r.b.values) > 1 else "")
        verdict = r.verdict + (f" ({r.detail})" if r.detail else "")
        table.append((r.name, _p(r.params), a, b, f"{r.delta:+.4g}", verdict))
    widths = [max(len(row[i]) for row in table) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for label, items in (("only in A", res.only_a), ("only in B", res.only_b)):
        for name, params in items:
            lines.append(f"{label}: {name} {_p(params)}")
    for w in res.warnings:
        lines.append(f"warning: {w}")
    n = {v: sum(r.verdict == v for r in res.rows) for v in ("regression", "improvement")}
    lines.append(f"{len(res.rows)} metrics compared: {n['regression']} regression(s), "
                 f"{n['improvement']} improvement(s)")
    return "\n".join(lines)
