"""The paper's figures beside ours, one row each: our figure is that of the finished run with the most
seeds, and among those the most-trained (the most images per model; then the latest), every seed
shown: a longer run that has finished fewer seeds so far never stands in for all of them. The full
tables (bench/tables.py) keep every run; `bench status` says where the runs still in training stand."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import paper, tables


def _images(g: pd.DataFrame) -> float:
    """Images seen per model, the mean over a run's models (0 where the records do not say)."""
    seen = []
    for unit, record in tables._unit_records(g):
        entry = tables.unit_entry(tables._read(record), unit)
        seen.append(entry.get("images_seen", entry.get("train_images_seen", 0)) or 0)
    return sum(seen) / len(seen) if seen else 0.0


def _training(g: pd.DataFrame) -> str:
    """Epochs and images per model, the recipe's settings that the paper's model was not trained with
    and the share of bf16 training products, then whether validation was still improving at the end."""
    pairs = tables._unit_records(g)
    done = [tables.unit_entry(tables._read(r), u) for u, r in pairs]
    text = tables.epochs_and_images(done) if done and all("epochs" in d for d in done) else ""
    at_end = tables._at_end(pairs).removeprefix("; ")
    products = tables._products(done).removeprefix("; ")
    return "; ".join(t for t in (text, _recipe(pairs), products, at_end) if t)


def _recipe(pairs: list[tuple[str, str]]) -> str:
    """RAM's location policy and a relapse setting other than the default: settings of our recipe
    that the paper's figure was not trained with."""
    if not pairs:
        return ""
    job = tables.unit_job(tables._read(pairs[0][1]), pairs[0][0])
    policy = tables._ram_policy(job) if job.get("kind") == "ram" else ""
    return (policy + tables._rollbacks(job, [], [])).removeprefix(", ").removeprefix("; ")


def _most_trained(groups: list[tuple[tuple, pd.DataFrame]]) -> pd.DataFrame | None:
    if not groups:
        return None
    # then the later run, where records do not say how many images their models saw
    return max((g for _, g in groups), key=lambda g: (g["seed"].nunique(), _images(g), g["started_at"].max()))


def _by_deviation(source: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The runs of the suites' recipes first (''), then those of each `bench run --set` deviation."""
    changed = source["record"].map(tables.deviations) if len(source) else pd.Series([], dtype=str)
    return [("", source[changed == ""])] + [(d, source[changed == d]) for d in sorted(set(changed) - {""})]


def _row(label: str, published: str, g: pd.DataFrame | None, fmt, root: Path, extra: str = "") -> str:
    """The row of one published figure; it says which seeds never left the starting plateau or ended
    relapsed, as the tables do."""
    if g is None:
        return f"| {label} | {published} | no finished run yet (`python -m bench status --reference`) | | | |"
    g = g.sort_values("seed")
    plateau = tables._on_plateau(g)
    return (f"| {label} | {published} | {tables._spread(list(g['value']), fmt)}{plateau}{extra} | "
            f"{', '.join(str(int(s)) for s in g['seed'])} | {_training(g)} | "
            f"{tables._link(tables._records(g), root)} |")


def table(df: pd.DataFrame, root: Path = Path(".")) -> str:
    """Markdown: Table 1's and Table 2's published figures, each beside our most-trained finished run of
    the most seeds."""
    rows = ["| figure | paper | ours: mean +- std (every seed) | seeds | training per model | record |",
            "| --- | --- | --- | --- | --- | --- |"]
    err = df[df["name"] == "test_error"]
    if "p_dataset" in err and "p_protocol" in err:
        err = err[err["p_dataset"] == "cluttered100"]
        clf = err[(err["p_protocol"] == "separate") & tables._is_classifier(err)]
        ram = err[err["p_model"] == "ram"] if "p_model" in err else err.iloc[0:0]
        glimpses = err["p_glimpses"] if "p_glimpses" in err else pd.Series(None, index=err.index, dtype=float)
        for p in paper.TABLE1:
            t, soft = p["glimpses"], p["model"].startswith("Differentiable")
            if soft:
                label, source = f"Table 1, differentiable RAM, T = {t}", clf[glimpses[clf.index] == t]
            elif p["model"].startswith("RAM"):
                label, source = f"Table 1, RAM, T = {t}", ram[glimpses[ram.index] == t]
            else:
                label, source = "Table 1, 2-layer conv net", err[err["p_protocol"] == "baseline-conv"]
            for changed, runs in _by_deviation(source):
                rows.append(_row(label + (f", deviating: --set {changed}" if changed else ""), tables._pct(p["error"]),
                                 _most_trained(tables.runs(runs, [])), tables._pct, root))
    nll = df[df["name"].isin(["nll_elbo", "nll_iwae"]) & (df["suite"] != "quick")]
    if "p_dataset" in nll and "p_steps" in nll:
        nll = nll[(nll["p_dataset"] == "binarized") & (nll["p_steps"] == 64)]
    for p in (q for q in paper.TABLE2 if "attention" in q):
        label = "Table 2, DRAW, " + ("attention" if p["attention"] else "no attention") + ": variational bound"
        mine = nll[nll["p_attention"] == p["attention"]] if "p_attention" in nll else nll.iloc[0:0]
        for changed, ours in _by_deviation(mine):
            rows.append(_nll_row(label + (f", deviating: --set {changed}" if changed else ""), p, ours, root))
    return "\n".join(rows)


def _nll_row(label: str, p: dict, ours: pd.DataFrame, root: Path) -> str:
    """Table 2's row for one published bound: our ELBO, with the IWAE bound of the same models."""
    elbo = _most_trained(tables.runs(ours[ours["name"] == "nll_elbo"], []))
    extra = ""
    if elbo is not None:
        iwae = ours[(ours["name"] == "nll_iwae") & ours["record"].isin(elbo["record"])]
        if "p_job" in iwae:  # the same models (records made before units were named have no job)
            iwae = iwae[iwae["p_job"].isin(elbo["p_job"]) | iwae["p_job"].isna()]
        if len(iwae):
            images = iwae["p_test_images"].iloc[0] if "p_test_images" in iwae else None
            extra = (f"; IWAE {tables._spread(list(iwae.sort_values('seed')['value']), lambda v: f'{v:.2f}')}"
                     f" (k = {int(iwae['p_k'].iloc[0])}"
                     + (f", {int(images):,} test images)" if pd.notna(images) else ")"))
    return _row(label, f"<= {p['nll']:.2f}", elbo, lambda v: f"{v:.2f}", root, extra)
