"""`bench tables`: Table 1 and Table 2 as markdown, our rows (every seed, mean and spread, each
linked to its record) beside the paper's, so the README's results come from records, not by hand."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pandas as pd

from bench import paper
from bench.records import load_all


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _spread(values: list[float], fmt) -> str:
    """Mean, then +- sample std and every seed's value: no best seed is picked."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} +- {fmt(statistics.stdev(values))} ({', '.join(fmt(v) for v in values)})"


def _link(paths: list[str], root: Path) -> str:
    names = sorted(set(paths))
    return ", ".join(f"[{Path(p).stem}]({(root / p).as_posix() if root != Path('.') else p})" for p in names)


def _complete_units(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished suites, plus rows of incomplete ones (each metric is written when its unit ends);
    never a dry run's (one batch of training is no result)."""
    return df[df["status"].isin(["complete", "incomplete"]) & ~df["dry_run"].astype(bool)]


def _job_settings(record_path: str, records_dir: Path, protocol: str) -> str:
    """'window init, minutes of training per model' of the record's classifier job of this protocol
    (records made before the window_init option existed used the 'default' init)."""
    try:
        rec = json.loads((records_dir / record_path).read_text()) if not Path(record_path).is_absolute() \
            else json.loads(Path(record_path).read_text())
    except (OSError, ValueError):
        return ""
    for job in rec.get("config", {}).get("suite", {}).get("jobs", []):
        if job.get("kind") == "classifier" and job.get("per_step_loss") == (protocol == "per-step"):
            budget = job.get("time_budget_min")
            return f"{job.get('window_init', 'default')}, {f'{budget:g} min' if budget else 'epochs'}"
    return ""


def table1(df: pd.DataFrame, root: Path = Path("."), records_dir: Path = Path(".")) -> str:
    rows = ["| model | protocol | glimpses | window init, training per model | test error: mean +- std (every seed) "
            "| seeds | record | paper |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    paper_by_t = {p["glimpses"]: p["error"] for p in paper.TABLE1 if p["model"].startswith("Differentiable")}
    err = df[(df["name"] == "test_error") & (df.get("p_dataset") == "cluttered100")]
    clf = err[err["p_protocol"].isin(["separate", "per-step"])]
    groups = sorted(clf.groupby(["record", "p_protocol", "p_glimpses"]),
                    key=lambda kv: (kv[0][0], kv[0][1] != "separate", kv[0][2]))
    for (record, protocol, t), g in groups:  # one row per run and glimpse count: runs are not pooled
        g = g.sort_values("seed")
        ref = paper_by_t.get(int(t))
        rows.append(f"| differentiable RAM, 12x12 | {protocol} | {int(t)} | "
                    f"{_job_settings(record, records_dir, protocol)} | {_spread(list(g['value']), _pct)} | "
                    f"{', '.join(str(int(s)) for s in g['seed'])} | {_link([record], root)} | "
                    f"{_pct(ref) if ref is not None and protocol == 'separate' else ''} |")
    conv_paper = next(p["error"] for p in paper.TABLE1 if p["model"].startswith("Convolutional"))
    for protocol, label, ref in (("baseline-conv", "2-layer conv net", _pct(conv_paper)),
                                 ("baseline-sklearn", "PCA + logistic regression (pixels)", "")):
        g = err[err["p_protocol"] == protocol].sort_values("seed")
        if len(g):
            rows.append(f"| {label} | baseline | - | | {_spread(list(g['value']), _pct)} | "
                        f"{', '.join(str(int(s)) for s in g['seed'])} | {_link(list(g['record']), root)} | {ref} |")
    return "\n".join(rows)


def table2(df: pd.DataFrame, root: Path = Path(".")) -> str:
    rows = ["| model | dataset | ELBO bound (nats) | IWAE bound (nats) | KL | reconstruction | record | paper |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    nll = df[df["name"].isin(["nll_elbo", "nll_iwae", "kl", "reconstruction"]) & (df["suite"] != "quick")]
    paper_att = {p["attention"]: p["nll"] for p in paper.TABLE2 if "attention" in p}
    for (dataset, attention, steps), g in nll.groupby(["p_dataset", "p_attention", "p_steps"]):
        def col(name, fmt=lambda v: f"{v:.2f}"):
            sel = g[g["name"] == name].sort_values("seed")
            if not len(sel):
                return ""
            text = _spread(list(sel["value"]), fmt)
            if name == "nll_iwae":
                k = int(sel["p_k"].iloc[0])
                n = sel["p_test_images"].iloc[0]
                text += f" (k={k}" + (f", {int(n)} images)" if pd.notna(n) else ")")
            return text
        model = f"DRAW, {int(steps)} steps, " + ("attention" if attention else "no attention")
        ref = paper_att.get(bool(attention)) if dataset == "binarized" and int(steps) == 64 else None
        rows.append(f"| {model} | {dataset} | {col('nll_elbo')} | {col('nll_iwae')} | {col('kl')} | "
                    f"{col('reconstruction')} | {_link(list(g['record']), root)} | "
                    f"{f'<= {ref:.2f}' if ref is not None else ''} |")
    return "\n".join(rows)


def markdown(records: str | Path = "results/runs", link_root: str | Path = ".") -> str:
    df = load_all(records)
    if df.empty:
        return "(no records)"
    df = _complete_units(df)
    if df.empty:
        return "(no records but dry runs, which tables leave out)"
    root = Path(link_root)
    return ("### Table 1: test error, 100x100 cluttered translated MNIST\n\n" + table1(df, root, Path("."))
            + "\n\n### Table 2: test NLL bounds in nats per image (binarized MNIST: fixed test binarization; "
            "twodigit60: grey levels as Bernoulli targets)\n\n" + table2(df, root) + "\n")
