"""`bench report`: one self-contained HTML page (PNGs embedded) plus the PNG files, from records.

Plots: error vs glimpse count (seeds as error bars, published points overlaid; soft and hard attention
and plug-ins on one plot per dataset), NLL bounds
beside the paper's Table 2, throughput per commit, learning curves (all, and Table 1 and 2's beside the
paper's figures), DRAW generation sequences
and glimpse paths on test images (from the records' .npz artifacts). Dry-run records are listed,
marked as such, and left out of every plot and the NLL table.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Callable

import numpy as np

from bench import paper, records


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _palette(plt) -> tuple:
    """Twenty colours, ten strong then ten light: the plots carry more lines than tab10's ten."""
    return plt.get_cmap("tab10").colors + plt.get_cmap("tab20").colors[1::2]


def _save(fig, out: Path, name: str, figures: list) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    from datasets.fileio import atomic_write_bytes

    atomic_write_bytes(out / name, data)
    figures.append((name, data))


def _load(path) -> list[tuple[Path, dict]]:
    found = []
    for p in records.find(path):
        try:
            found.append((p, records.read(p)))
        except records.RecordError:
            continue  # not a record (e.g. a benchmark JSON in the same folder)
    if not found:
        raise records.RecordError(f"{path}: holds no run records; run python -m bench run first")
    return sorted(found, key=lambda x: x[1]["started_at"])


def _series_label(params: dict, run: str) -> str:
    """'soft attention (classifier), separate, run abc': soft and hard attention share one plot per dataset.
    Records made before the model was recorded hold the soft-attention classifier."""
    model = params.get("model") or "classifier"
    if model == "ram":
        model = "RAM, location at its mean" if params.get("location") == "mean" else "RAM"
    attention = params.get("attention_type") or ("soft" if model == "classifier" else "unspecified")
    kind = "no attention" if attention == "none" else f"{attention} attention"
    return f"{kind} ({model}), {params.get('protocol')}, run{'s' if ', ' in run else ''} {run}"


def error_series(recs) -> dict:
    """{dataset: {line label: {glimpses: [test error of every seed]}}}: one line per model, protocol and
    recipe, pooling records that trained it one model or seed apart (as `bench tables` pools them; a
    seed trained in two records keeps each record its own line); runs with other settings are not
    pooled. Soft and hard attention share a dataset's plot. A seed whose run never left its starting
    plateau, or relapsed and never came back, is left out (the tables mark it "not a result"), and its
    line's label says how many were."""
    from bench.tables import plateau_flag, recipe_signature

    groups: dict = {}  # (dataset, model and protocol, recipe) -> the params and {run: {glimpses: [(seed, error)]}}
    left_out: dict = {}  # the same keys -> {(run, unit)} of the models left out (a per-step one has a row per t)
    for path, r in recs:
        run = Path(path).stem.split("_")[-1]
        for m in r["metrics"]:
            if m["name"] == "test_error" and m["params"].get("glimpses") is not None:
                p = m["params"]
                key = (p.get("dataset"), _series_label(p, ""), recipe_signature(str(path), p.get("job")))
                if p.get("job") and plateau_flag(r, p["job"], p.get("dataset")) is not None:
                    left_out.setdefault(key, set()).add((run, p["job"]))
                    continue
                groups.setdefault(key, {"params": p, "runs": {}})["runs"].setdefault(run, {}) \
                    .setdefault(p["glimpses"], []).append((m.get("seed"), m["value"]))
    series: dict = {}
    for key, group in groups.items():
        by_run = group["runs"]
        trained = [(t, seed) for points in by_run.values() for t, vals in points.items() for seed, _ in vals]
        parts = [by_run] if len(trained) == len(set(trained)) else [{run: pts} for run, pts in by_run.items()]
        for part in parts:
            runs = sorted(part)
            named = ", ".join(runs[:3]) + (f" and {len(runs) - 3} more" if len(runs) > 3 else "")
            dropped = len({(run, unit) for run, unit in left_out.get(key, ()) if len(parts) == 1 or run in part})
            note = f"; {dropped} seed{'s' if dropped > 1 else ''} left out: plateau or relapse" if dropped else ""
            line = series.setdefault(key[0], {}).setdefault(_series_label(group["params"], named) + note, {})
            for points in part.values():
                for t, vals in points.items():
                    line.setdefault(t, []).extend(v for _, v in vals)
    return series


ATTENTION_MARKERS = {"soft": "o", "hard": "s", "no": "^"}  # by the label's first word
PAPER_STYLES = ("--", ":", "-.")


def plot_error_vs_glimpses(recs, out, figures) -> None:
    """One plot per dataset, stacked, each with its legend below it (labels are long: they name the
    runs); our lines take distinct colours and a marker by attention type, the paper's are black."""
    plt = _plt()
    series = error_series(recs)
    if not series:
        return
    fig, axes = plt.subplots(len(series), 1, figsize=(8, 6 * len(series)), squeeze=False, layout="constrained")
    colours = _palette(plt)
    for ax, (ds, protos) in zip(axes[:, 0], sorted(series.items())):
        for k, (proto, by_t) in enumerate(sorted(protos.items())):
            ts = sorted(by_t)
            mean = [100 * np.mean(by_t[t]) for t in ts]
            std = [100 * np.std(by_t[t], ddof=1) if len(by_t[t]) > 1 else 0.0 for t in ts]  # sample std, as the tables
            n = max(len(by_t[t]) for t in ts)
            ax.errorbar(ts, mean, yerr=std, marker=ATTENTION_MARKERS.get(proto.split()[0], "o"), capsize=3,
                        color=colours[k % len(colours)], label=f"ours, {proto} (up to {n} seeds)")
        pts = [p for p in paper.error_points(ds) if p["glimpses"] is not None]
        for k, model in enumerate(dict.fromkeys(p["model"] for p in pts)):
            sel = [p for p in pts if p["model"] == model]
            ax.plot([p["glimpses"] for p in sel], [100 * p["error"] for p in sel], marker="x", color="black",
                    linestyle=PAPER_STYLES[k % len(PAPER_STYLES)], label=f"paper: {model}")
        ax.set_xscale("log", base=2)
        ticks = sorted({t for by_t in protos.values() for t in by_t} | {p["glimpses"] for p in pts})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        # errors span chance (90%) to the paper's 3%: a log axis keeps the low end, where models differ, readable
        ax.set_yscale("log")
        ax.set_yticks(ERROR_TICKS, [f"{t:g}" for t in ERROR_TICKS])
        ax.minorticks_off()
        ax.set_xlabel("glimpses T")
        ax.set_ylabel("test error (%, log scale)")
        ax.set_title(ds)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12))  # below the plot, off the data
        ax.grid(alpha=0.3)
    _save(fig, out, "error_vs_glimpses.png", figures)


ERROR_TICKS = (1, 2, 3, 5, 10, 20, 50, 100)


def nll_rows(recs) -> list[dict]:
    """One row per DRAW model (dataset, attention, steps, seed): its bounds from the record that trained
    it on the most images (the later one where they tie); the quick suite's smoke runs are left out.
    ``flag`` says when the run never left its starting plateau or relapsed and never came back."""
    from bench.tables import plateau_flag, unit_entry

    rows: dict = {}
    for p, r in recs:
        if r.get("suite") == "quick":
            continue
        for m in r["metrics"]:
            if m["name"] not in ("nll_elbo", "nll_iwae"):
                continue
            q = m["params"]
            key = (q.get("dataset"), q.get("attention"), q.get("steps"), m["seed"])
            unit = q.get("job")
            images = (unit_entry(r, unit).get("images_seen") or 0) if unit else 0
            rank = (images, r.get("started_at") or "")
            row = rows.get(key)
            if row is None or (row["path"] != str(p) and rank > row["rank"]):
                row = rows[key] = {"dataset": key[0], "attention": key[1], "steps": key[2], "seed": key[3],
                                   "record": f"{Path(p).parent.name}/{Path(p).name}", "path": str(p), "rank": rank,
                                   "flag": None}
            if row["path"] != str(p):
                continue
            row[m["name"]] = m["value"]
            if m["name"] == "nll_iwae":
                row["k"] = q.get("k")
            if unit and m["name"] == "nll_elbo":
                flag = plateau_flag(r, unit, q.get("dataset"))
                row["flag"] = None if flag is None else (
                    "never left the starting plateau" if flag == "plateau" else f"relapsed at epoch {flag}")
    return [{k: v for k, v in row.items() if k not in ("rank", "path")} for row in rows.values()]


def _nll_label(row: dict) -> str:
    return f" (not a result: {row['flag']})" if row.get("flag") else ""


def plot_nll(recs, out, figures) -> None:
    rows = [r for r in nll_rows(recs) if r["dataset"] == "binarized"]
    if not rows:
        return
    plt = _plt()
    labels, elbo, iwae = [], [], []
    for r in rows:
        labels.append(f"ours: {'attn' if r['attention'] else 'no attn'}, T={r['steps']}, s{r['seed']}{_nll_label(r)}")
        elbo.append(r.get("nll_elbo", np.nan))
        iwae.append(r.get("nll_iwae", np.nan))
    ref = [p for p in paper.TABLE2]
    fig, ax = plt.subplots(figsize=(7, 0.45 * (len(rows) + len(ref)) + 1))
    y = np.arange(len(rows))
    ax.barh(y - 0.2, elbo, 0.4, label="ours: ELBO bound")
    ax.barh(y + 0.2, iwae, 0.4, label="ours: IWAE bound")
    y2 = np.arange(len(rows), len(rows) + len(ref))
    ax.barh(y2, [p["nll"] for p in ref], 0.5, color="grey", label="published (Table 2)")
    ax.set_yticks(list(y) + list(y2), labels + [p["model"] for p in ref], fontsize=7)
    ax.set_xlabel("test NLL, nats (lower is better)")
    lo = min([v for v in elbo + iwae if np.isfinite(v)] + [p["nll"] for p in ref])
    ax.set_xlim(max(0, lo - 10), None)
    ax.legend(fontsize=7)
    ax.invert_yaxis()
    _save(fig, out, "nll_vs_table2.png", figures)


def plot_throughput(recs, out, figures) -> None:
    hist: dict = {}
    for _, r in recs:
        for m in r["metrics"]:
            if m["name"] == "train_images_per_s":
                q = m["params"]
                key = f"{q.get('model')} b{q.get('batch')} {q.get('device')}"
                st = m.get("stats", {})
                hist.setdefault(key, []).append((r["started_at"], r["commit"].get("short") or "?", m["value"],
                                                 st.get("q1", m["value"]), st.get("q3", m["value"])))
    if not hist:
        return
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    commits = list(dict.fromkeys(c for v in sorted(sum(hist.values(), [])) for c in [v[1]]))
    for key, pts in sorted(hist.items()):
        pts.sort()
        x = [commits.index(p[1]) for p in pts]
        med = np.array([p[2] for p in pts])
        err = np.array([[p[2] - p[3] for p in pts], [p[4] - p[2] for p in pts]])
        ax.errorbar(x, med, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=key)
    ax.set_xticks(range(len(commits)), commits, rotation=45, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("training images/s (median, IQR)")
    ax.set_xlabel("commit (in run order)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, out, "throughput_history.png", figures)


def plot_curves(recs, out, figures) -> None:
    """Every unit's validation curve against images seen, one panel per dataset and figure (error on a log
    axis, or the bound), each with its legend beside it."""
    from bench.tables import unit_job

    panels: dict[tuple[str, str], dict[str, list]] = {}
    for path, r in recs:
        for unit, c in r.get("curves", {}).items():
            if not c or not all("images_seen" in e for e in c):
                continue
            key = next((k for k in ("valid_error", "valid_nll_elbo") if k in c[0]), None)
            if key:
                dataset = unit_job(r, unit).get("dataset") or "?"
                # records of the same name in two folders (long/, gpu/) keep a curve each
                panels.setdefault((key, dataset), {})[f"{Path(path).parent.name}/{Path(path).stem}: {unit}"] = c
    if not panels:
        return
    plt = _plt()
    order = sorted(panels.items())
    heights = [max(3.0, 0.16 * len(curves)) for _, curves in order]  # room for each legend
    fig, axes = plt.subplots(len(order), 1, figsize=(8, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, ((key, dataset), curves) in zip(axes[:, 0], order):
        percent = key == "valid_error"
        colours = _palette(plt)
        for k, (label, c) in enumerate(curves.items()):
            ax.plot([e["images_seen"] / 1e6 for e in c], [100 * e[key] if percent else e[key] for e in c],
                    marker=".", ms=2, lw=1, label=label, color=colours[k % len(colours)])
        if percent:
            ax.set_yscale("log")
            ax.set_yticks(ERROR_TICKS, [f"{t:g}" for t in ERROR_TICKS])
            ax.minorticks_off()
        ax.set(title=dataset, xlabel="training images seen (millions)",
               ylabel="valid error (%, log scale)" if percent else "valid NLL, ELBO (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    _save(fig, out, "learning_curves.png", figures)


# The long runs' panels: (title, unit prefix, curve key, paper's figure, y range)
_VS_PAPER = (
    ("Table 1, T = 4: valid error (%)", "classifier-cluttered100-T4-", "valid_error",
     100 * next(p["error"] for p in paper.TABLE1 if p["model"].startswith("Differentiable") and p["glimpses"] == 4),
     (0, 15)),
    ("Table 1, T = 8: valid error (%)", "classifier-cluttered100-T8-", "valid_error",
     100 * next(p["error"] for p in paper.TABLE1 if p["model"].startswith("Differentiable") and p["glimpses"] == 8),
     (0, 15)),
    ("Table 2, attention: valid ELBO (nats)", "draw-binarized-attn-T64-", "valid_nll_elbo",
     next(p["nll"] for p in paper.TABLE2 if p.get("attention") is True), (78, 100)),
    ("Table 2, no attention: valid ELBO (nats)", "draw-binarized-noattn-T64-", "valid_nll_elbo",
     next(p["nll"] for p in paper.TABLE2 if p.get("attention") is False), (78, 100)),
)


def _finished_before(record: dict, unit: str) -> list[tuple[str, list[dict]]]:
    """The finished runs of a unit that an extension went on from (its own curve then shows the extension:
    a restarted decay replaces the finished run's last epochs), each labelled with its budget."""
    entry = record.get("jobs", {}).get(unit, {})
    runs = entry.get("earlier", []) + ([entry["extending_from"]] if entry.get("extending_from") else [])
    return [(f" (finished, {run['info'].get('epochs')} epochs)", run.get("curve") or []) for run in runs]


def plot_curves_vs_paper(recs, out, figures) -> None:
    """Every model of Table 1 (T = 4, 8) and Table 2 (64 steps) against images seen, one line per
    record and unit, the paper's figure as a dotted line: where a curve flattened, and how far above."""
    panels = [[] for _ in _VS_PAPER]
    for path, r in recs:
        for unit, curve in r.get("curves", {}).items():
            for i, (_, prefix, key, _, _) in enumerate(_VS_PAPER):
                if not unit.startswith(prefix):
                    continue
                for label, run_curve in [*_finished_before(r, unit), ("", curve)]:
                    points = [(e["images_seen"] / 1e6, e[key]) for e in run_curve or () if e.get(key) is not None]
                    if len(points) > 1:
                        panels[i].append((f"{Path(path).stem}: {unit}{label}", points, key == "valid_error",
                                          bool(label)))
    if not any(panels):
        return
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for ax, (title, _, _, ref, ylim), lines in zip(axes.flat, _VS_PAPER, panels):
        colours = _palette(plt)
        for k, (label, points, percent, finished_before) in enumerate(lines):
            x, y = zip(*points)
            ax.plot(x, [100 * v for v in y] if percent else y, lw=1, label=label, color=colours[k % len(colours)],
                    ls=":" if finished_before else "--" if "perstep" in label else "-")
        ax.axhline(ref, color="black", ls=":", lw=1, label=f"paper: {ref:.2f}")
        ax.set(title=title, xlabel="training images seen (millions)", ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5)
    fig.tight_layout()
    _save(fig, out, "curves_vs_paper.png", figures)


def _artifacts(recs) -> dict:
    arts = {}
    for p, r in recs:
        a = p.with_suffix(".npz")
        if r.get("artifacts") and a.exists():
            try:
                with np.load(a) as z:
                    arts.update({k: z[k] for k in z.files})
            except Exception as e:  # noqa: BLE001 - truncated, corrupt or not an npz
                raise records.RecordError(f"{a}: damaged artifacts file ({type(e).__name__}); move it aside "
                                          "(the report then leaves out its samples and glimpse paths)") from None
    return arts


def plot_samples(arts, out, figures) -> None:
    plt = _plt()
    for key in sorted(k for k in arts if k.endswith("/samples")):
        seq = arts[key]  # (T, n, H, W)
        t, n = seq.shape[:2]
        steps = sorted(set(np.linspace(0, t - 1, min(t, 8)).round().astype(int)))
        fig, axes = plt.subplots(n, len(steps), figsize=(1.1 * len(steps), 1.1 * n), squeeze=False,
                                 layout="constrained")  # the default margins leave 2 in. empty above 16 rows
        for i in range(n):
            for j, s in enumerate(steps):
                axes[i, j].imshow(seq[s, i], cmap="gray", vmin=0, vmax=255)
                axes[i, j].axis("off")
                if i == 0:
                    axes[i, j].set_title(f"t={s + 1}", fontsize=7)
        fig.suptitle(f"{key.split('/')[0]}: canvas after each step", fontsize=8)
        _save(fig, out, f"samples_{key.split('/')[0]}.png", figures)


def plot_glimpse_paths(arts, out, figures) -> None:
    plt = _plt()
    from matplotlib.patches import Rectangle

    units = sorted({k.split("/")[0] for k in arts if "/paths/" in k})
    for unit in units:
        imgs = arts[f"{unit}/paths/images"]
        if f"{unit}/paths/gx" not in arts:
            continue
        gx, gy, delta = (arts[f"{unit}/paths/{k}"] for k in ("gx", "gy", "delta"))
        labels, preds = arts[f"{unit}/paths/labels"], arts[f"{unit}/paths/predictions"]
        n, t = gx.shape
        grid_n = int(arts.get(f"{unit}/paths/read_n", 12))
        fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
        colors = plt.cm.viridis(np.linspace(0, 1, t))
        for i in range(n):
            ax = axes[0, i]
            ax.imshow(imgs[i], cmap="gray", vmin=0, vmax=255)
            for s in range(t):
                half = delta[i, s] * grid_n / 2  # the grid spans N strides; 1-based centre -> 0-based pixels
                ax.add_patch(Rectangle((gx[i, s] - 1 - half, gy[i, s] - 1 - half), 2 * half, 2 * half, fill=False,
                                       color=colors[s], lw=1))
            ax.plot(gx[i] - 1, gy[i] - 1, "-", color="red", lw=0.8)
            ax.set_xlim(-0.5, imgs.shape[2] - 0.5)
            ax.set_ylim(imgs.shape[1] - 0.5, -0.5)
            ax.set_title(f"label {labels[i]}, said {preds[i, -1]}", fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{unit}: glimpse windows, step 1 (dark) to {t} (light)", fontsize=8)
        _save(fig, out, f"glimpses_{unit}.png", figures)


def _records_table(recs) -> str:
    rows = ["<tr><th>record</th><th>suite</th><th>status</th><th>commit</th><th>machine</th><th>metrics</th></tr>"]
    for p, r in recs:
        c = r["commit"]
        status = r["status"] + (" (dry run: not plotted)" if records.is_dry_run(r) else "")
        rows.append(f"<tr><td>{html.escape(p.name)}</td><td>{r['suite']}</td><td>{status}</td>"
                    f"<td>{c.get('short')}{' (dirty)' if c.get('dirty') else ''}</td>"
                    f"<td>{html.escape(str(r['machine'].get('device_name')))}</td><td>{len(r['metrics'])}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _nll_table(recs) -> str:
    rows = ["<tr><th>model</th><th>steps</th><th>seed</th><th>ELBO</th><th>IWAE</th><th>k</th><th>record</th></tr>"]
    for r in nll_rows(recs):
        rows.append(f"<tr><td>{'DRAW' if r['attention'] else 'DRAW, no attention'} ({r['dataset']})"
                    f"{html.escape(_nll_label(r))}</td>"
                    f"<td>{r['steps']}</td><td>{r['seed']}</td><td>{r.get('nll_elbo', float('nan')):.2f}</td>"
                    f"<td>{r.get('nll_iwae', float('nan')):.2f}</td><td>{r.get('k')}</td>"
                    f"<td>{html.escape(r['record'])}</td></tr>")
    for p in paper.TABLE2:
        rows.append(f"<tr class=paper><td>paper: {html.escape(p['model'])}</td><td></td><td></td>"
                    f"<td>{'&le; ' if p['bound'] else '&asymp; '}{p['nll']:.2f}</td><td></td><td></td><td></td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(records_path="results/runs", out="results/report", log: Callable[[str], None] = print) -> Path:
    """Write ``out/index.html`` (self-contained) and the PNGs; return the HTML path."""
    out = Path(out)
    listed = _load(records_path)
    recs = [(p, r) for p, r in listed if not records.is_dry_run(r)]  # one batch of training plots nothing real
    arts = _artifacts(recs)  # every input read before anything is written
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, bytes]] = []
    plot_error_vs_glimpses(recs, out, figures)
    plot_nll(recs, out, figures)
    plot_throughput(recs, out, figures)
    plot_curves(recs, out, figures)
    plot_curves_vs_paper(recs, out, figures)
    plot_samples(arts, out, figures)
    plot_glimpse_paths(arts, out, figures)
    imgs = "\n".join(f"<figure><img alt='{n}' src='data:image/png;base64,{base64.b64encode(d).decode()}'>"
                     f"<figcaption>{n}</figcaption></figure>" for n, d in figures)
    dry = len(listed) - len(recs)
    dry_note = f"; {dry} dry run(s) listed but left out of the plots and tables" if dry else ""
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>glimpse benchmark report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:2px 6px}} tr.paper{{color:#666}} img{{max-width:100%}}</style></head>
<body><h1>glimpse benchmark report</h1>
<p>{len(listed)} record(s) from {html.escape(str(records_path))}, generated {records.utc_now()}{dry_note}.</p>
<h2>Records</h2>{_records_table(listed)}
<h2>NLL on binarized MNIST</h2>{_nll_table(recs)}
<h2>Plots</h2>{imgs}
</body></html>
"""
    from datasets.fileio import atomic_write_bytes

    dest = out / "index.html"
    atomic_write_bytes(dest, page.encode())
    log(f"report: {dest} ({len(figures)} figures from {len(recs)} records{dry_note})")
    return dest
