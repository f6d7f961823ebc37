"""`bench tables`: Table 1 and Table 2 as markdown, our rows (every seed, mean and spread, each
linked to its record) beside the paper's, so the README's results come from records, not by hand."""

from __future__ import annotations

import functools
import json
import statistics
from pathlib import Path

import pandas as pd

from bench import cost, paper, records
from bench.records import load_all, metric_row
from bench.resume import BUDGET_FIELDS, finished_budget


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _spread(values: list[float], fmt) -> str:
    """Mean, then +- sample std and every seed's value: no best seed is picked."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.mean(values))} +- {fmt(statistics.stdev(values))} ({', '.join(fmt(v) for v in values)})"


def _link(paths: list[str], root: Path) -> str:
    names = sorted(set(paths))
    prefix = "" if str(root) in ("", ".") else str(root).rstrip("/") + "/"  # a URL keeps its '//'
    return ", ".join(f"[{Path(p).stem}]({prefix}{Path(p).as_posix()})" for p in names)


def _complete_units(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of finished suites, plus rows of incomplete ones (each metric is written when its unit ends);
    never a dry run's (one batch of training is no result), nor a `bench eval` of a checkpoint (a
    rescoring, perhaps of a few images or other clutter, not a run: its record says what it scored)."""
    return df[df["status"].isin(["complete", "incomplete"]) & ~df["dry_run"].astype(bool) & (df["suite"] != "eval")]


def _read(record_path: str) -> dict:
    """The record at ``record_path`` ({} if unreadable), parsed once per version of the file."""
    try:
        st = Path(record_path).stat()
    except OSError:
        return {}
    return _parse(record_path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _parse(record_path: str, mtime_ns: int, size: int) -> dict:
    try:
        return json.loads(Path(record_path).read_text())
    except (OSError, ValueError):
        return {}


# A unit's finished run that an extension replaced is shown as unit id + EARLIER + its index in the
# unit's "earlier" list (bench/runner.py earlier_run), in the row of its own budget.
EARLIER = "@earlier"


def _split_unit(unit: str) -> tuple[str, int | None]:
    base, sep, index = unit.partition(EARLIER)
    return (base, int(index)) if sep else (unit, None)


def unit_entry(rec: dict, unit: str) -> dict:
    """The record's entry for a unit; for 'UNIT@earlierN', its N-th finished run before an extension."""
    base, index = _split_unit(unit)
    entry = rec.get("jobs", {}).get(base, {})
    if index is None:
        return entry
    run = entry.get("earlier", [])[index]
    return {**run["info"], "status": "complete", "kind": entry.get("kind"), "seed": entry.get("seed")}


def unit_curve(rec: dict, unit: str) -> list[dict]:
    base, index = _split_unit(unit)
    if index is None:
        return rec.get("curves", {}).get(unit) or []
    return rec.get("jobs", {}).get(base, {}).get("earlier", [])[index].get("curve") or []


def seed_label(unit: str) -> str:
    """'s0' for a unit id ending in -s0 (an earlier run's id too)."""
    return _split_unit(unit)[0].rsplit("-", 1)[-1]


def unit_job(rec: dict, unit: str) -> dict:
    """The settings of the suite job behind a unit's figures, flat (bench/suites.py `flat`): stored with
    the unit (older records: matched in the suite config), under the budget the unit last finished
    with. A finished unit being extended already holds its longer job, but its figures, epochs and
    time are still those of the finished run until the extension ends."""
    entry = unit_entry(rec, unit)
    job = _job_of(rec, _split_unit(unit)[0], entry)
    if job:
        job = {**job, **finished_budget(entry, {k: job.get(k) for k in BUDGET_FIELDS})}
    return job


def extending(rec: dict, unit: str) -> bool:
    """A unit that finished once and trains again under a longer budget (its figures: the finished run's)."""
    entry = unit_entry(rec, unit)
    return bool(entry.get("budget")) and entry.get("status") != "complete"


def earlier_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Metric rows of the finished runs that extensions replaced (a unit that finished again under a
    longer budget keeps them under ``earlier``), as load_all makes rows, their unit id marked with EARLIER."""
    rows = []
    for record, g in df.groupby("record"):
        rec, base = _read(record), g.iloc[0][["record", "suite", "status", "dry_run", "started_at", "sha", "dirty",
                                               "machine_id", "device"]].to_dict()
        for unit, entry in rec.get("jobs", {}).items():
            # a unit extended again keeps them too: its own figures are its last finished run's meanwhile
            for index, run in enumerate(entry.get("earlier", [])):
                rows += [{**metric_row(base, m), "p_job": f"{unit}{EARLIER}{index}"} for m in run.get("metrics", [])]
    return pd.DataFrame(rows)


def _job_of(rec: dict, unit: str, entry: dict) -> dict:
    from bench.suites import flat

    if entry.get("job"):
        return flat(entry["job"])
    for j in map(flat, rec.get("config", {}).get("suite", {}).get("jobs", [])):
        if unit.startswith(f"{j.get('kind')}-{j.get('dataset')}-") and (
                j.get("kind") != "classifier" or ("-perstep-" in unit) == bool(j.get("per_step_loss"))) and (
                j.get("kind") != "draw" or ("-attn-" in unit) == bool(j.get("attention"))):
            return j
    return {}


def _range(values, fmt) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def epochs_and_images(done: list[dict]) -> str:
    """'E epochs, N M images' per model (ranges over the models) from their jobs' entries."""
    images = [d.get("images_seen", d.get("train_images_seen", 0)) / 1e6 for d in done]
    return f"{_range([_epochs(d) for d in done], str)} epochs, {_range(images, lambda v: f'{v:.2f}')} M images"


def _epochs(entry: dict) -> int | float:
    """The epochs a model trained: a time budget ends inside an epoch, whose count then says how much of
    it ran (25.7, not the 26th epoch begun); an epoch budget ends on a whole one."""
    size = ((entry.get("data") or {}).get("train") or {}).get("n")
    seen = entry.get("images_seen", entry.get("train_images_seen"))
    if entry.get("stopped_by") == "time_budget" and size and seen:
        return round(seen / size, 1)
    return entry["epochs"]


def training_hours(done: list[dict], machines: list[dict], recs: list[dict] | None = None) -> str:
    """'1.71-2.85 core-h' per model (ranges over the models), by where they trained (bench/cost.py):
    '0.12 h on NVIDIA H200 + 0.95-1.10 core-h' for models begun on a GPU and continued on a CPU.
    Time from before costs were kept per device is charged to the machine that began the record;
    where ``recs`` (each model's record) show sittings on another device, the text says so."""
    parts = [cost.hours(d.get("train_cost"), d.get("train_time_s"), m) for d, m in zip(done, machines)]
    units = list(dict.fromkeys(u for p in parts for u in p))
    text = " + ".join(f"{_range([p[u] for p in parts if u in p], lambda v: f'{v:.2f}')} {u}" for u in units)
    elsewhere = sorted({name for d, m, r in zip(done, machines, recs or []) for name in _sittings_elsewhere(d, m, r)})
    if elsewhere:
        text += (f" (the record has sittings on {', '.join(elsewhere)} from before costs were kept per device: "
                 "their time is counted as on its first machine)")
    return text


def _sittings_elsewhere(entry: dict, machine: dict, rec: dict) -> set[str]:
    """The accelerators other than the record's first machine that sittings of the record ran on, when the
    model's cost is not kept per device (bench/cost.py UNATTRIBUTED) and is charged to that machine. The
    record's sittings do not say which of its models they trained."""
    charged = entry.get("train_cost")
    if charged is not None and cost.UNATTRIBUTED not in charged:
        return set()
    name = lambda m: m.get("device_name") or m.get("device")  # noqa: E731
    # time on any CPU is core-hours alike; an accelerator's hours are not
    return {name(seg["machine"]) for seg in rec.get("segments", []) if seg.get("machine")
            and seg["machine"].get("device", "cpu") != "cpu" and name(seg["machine"]) != name(machine)}


def deviations(record_path: str) -> str:
    """The record's deviations from its suite's recipe (records.deviations), by its path."""
    return records.deviations(_read(record_path))


def _training(g: pd.DataFrame) -> str:
    """The recipe and the training behind a row: schedule, lr, batch, window init; epochs, images and
    core-hours per model (bench/cost.py); budgets never pool (see `runs`)."""
    pairs = _unit_records(g)
    if not pairs:
        return ""
    job = unit_job(_read(pairs[0][1]), pairs[0][0])
    if not job:
        return ""
    units = [u for u, _ in pairs]
    done = [unit_entry(_read(r), u) for u, r in pairs]
    recipe = f"{job.get('schedule', 'constant')} lr {job.get('lr')}, batch {job.get('batch_size')}"
    changed = deviations(pairs[0][1])
    if changed:
        recipe = f"**deviates: --set {changed}**; {recipe}"
    if job.get("schedule") == "wsd":
        recipe += f" (warm-up {job.get('warmup_epochs'):g}, decay {job.get('decay_epochs'):g} ep)"
    if job.get("kind") in ("classifier", "draw"):  # the soft-attention models' first window
        recipe += f", {job.get('window_init', 'default')} init"
    if job.get("kind") == "ram":
        recipe += _ram_policy(job)
    minutes = job.get("time_budget_min")
    recipe += f"; budget {minutes:g} min" if minutes else f"; budget {job.get('epochs')} epochs"
    if all("images_seen" in d for d in done):
        machines = [_read(r).get("machine", {}) for _, r in pairs]
        recipe += f"; {epochs_and_images(done)}, {training_hours(done, machines, [_read(r) for _, r in pairs])}"
    recipe += _products(done) + _rollbacks(job, done, units) + _at_end(pairs)
    return recipe


def _ram_policy(job: dict) -> str:
    """RAM's location policy: its std, and the share of the REINFORCE gradient that reaches the core (the
    RAM paper's hybrid gradient: all of it); a setting the record leaves out is the model's default."""
    from models.ram import RamConfig

    setting = {**RamConfig().to_dict(), **{k: v for k, v in job.items() if v is not None}}
    share = setting["reinforce_core_scale"] if setting["reinforce_into_core"] else 0.0
    text = f", location std {setting['location_std']:g}, REINFORCE into the core x{share:g}"
    return text + (" (the paper: x1)" if share != 1 else "")


def _baseline_training(g: pd.DataFrame, protocol: str) -> str:
    """A baseline row's budget and, for the conv net, the epochs, images and core-hours per model."""
    parts = []
    for record, gr in g.groupby("record"):
        rec = _read(record)
        jobs = gr["p_job"] if "p_job" in gr else [None] * len(gr)
        for seed, dataset, named in zip(gr["seed"], gr["p_dataset"], jobs):
            unit = named if isinstance(named, str) else f"{protocol}-{dataset}-s{int(seed)}"
            done, job = unit_entry(rec, unit), unit_job(rec, unit)
            minutes, text = job.get("time_budget_min"), []
            if protocol == "baseline-conv" and (minutes or job.get("epochs")):
                text.append(f"budget {minutes:g} min" if minutes else f"budget {job['epochs']} epochs")
            if {"epochs", "train_images_seen", "train_time_s"} <= set(done):
                text.append(f"{done['epochs']} epochs, {done['train_images_seen'] / 1e6:.2f} M images, "
                            f"{training_hours([done], [rec.get('machine', {})], [rec])}")
            elif "train_size" in done:
                text.append(f"{done['train_size']:,} training images")
            if protocol == "baseline-conv":
                text.append(_at_end([(unit, record)]).removeprefix("; "))
            parts.append("; ".join(t for t in text if t))
    return "; ".join(sorted(set(p for p in parts if p)))


def _unit_records(g: pd.DataFrame) -> list[tuple[str, str]]:
    """(unit, record) of a row's models, in unit order."""
    if "p_job" not in g:
        return []
    return sorted({(u, r) for u, r in zip(g["p_job"], g["record"]) if isinstance(u, str)})


def recipe_signature(record_path: str, unit) -> str:
    """What must be equal for two records' models to share a row: the suite and every setting of the
    unit's job (data, model, optimiser, budget) but its seeds and the record's glimpse selection."""
    rec = _read(record_path)
    job = unit_job(rec, unit) if isinstance(unit, str) else {}
    if not job:
        return f"record {record_path}"  # nothing to compare: the record alone
    job = _with_defaults(job)
    same = {k: v for k, v in job.items() if k not in ("seeds", "seeds_by_glimpses", "glimpses")}
    return json.dumps([rec.get("suite"), same], sort_keys=True, default=str)


def _with_defaults(job: dict) -> dict:
    """A recorded job with the settings it does not name at their defaults (older records stored only
    some), as `bench run --resume` reads it (bench/resume.py), so that equal recipes compare equal."""
    from bench import suites

    types = {t.kind: t for t in (suites.ClassifierJob, suites.DrawJob, suites.BaselineJob, suites.ThroughputJob,
                                 suites.RamJob, suites.PluginJob)}
    kind = types.get(job.get("kind"))
    return {**suites.settings(kind()), **job} if kind else job


def runs(rows: pd.DataFrame, keys: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    """The metric rows grouped into table rows: equal ``keys`` and one recipe and budget, from one
    record or from several that trained different seeds side by side (one process per seed:
    scripts/parallel_runs.sh). Records of different recipes or budgets never pool, nor do records
    that trained the same seed. Each group: (its ``keys`` values, its rows)."""
    if rows.empty:
        return []
    units = rows["p_job"] if "p_job" in rows else [None] * len(rows)
    rows = rows.assign(_run=[recipe_signature(r, u) for r, u in zip(rows["record"], units)])
    groups = []
    for key, g in rows.groupby(["_run", *keys], dropna=False):
        groups += [(tuple(key[1:]), part) for part in _one_figure_per_seed(g)]
    return sorted(groups, key=lambda kv: (min(kv[1]["record"]), kv[0]))


def _one_figure_per_seed(g: pd.DataFrame) -> list[pd.DataFrame]:
    """``g`` as rows whose seeds are distinct: whole if they are; else a row per record, and within a
    record that holds a seed twice, a row per unit (per metric row where units are not named)."""
    if g["seed"].is_unique:
        return [g]
    parts = []
    for _, by_record in g.groupby("record"):
        if by_record["seed"].is_unique:
            parts.append(by_record)
        elif "p_job" in by_record and by_record["p_job"].notna().all():
            parts += [by_unit for _, by_unit in by_record.groupby("p_job")]
        else:
            parts += [by_record.iloc[[i]] for i in range(len(by_record))]
    return parts


def _records(g: pd.DataFrame) -> list[str]:
    return sorted(set(g["record"]))


def _rollbacks(job: dict, done: list[dict], units: list[str]) -> str:
    """The relapse setting when it is not the default, and each unit's rollbacks (bench/optim.py)."""
    if job.get("on_relapse", "continue") == "continue":
        return ""
    back = [f"{seed_label(u)} at epoch{'s' if len(d['rollbacks']) > 1 else ''} "
            f"{', '.join(str(r['epoch']) for r in d['rollbacks'])}" for u, d in zip(units, done) if d.get("rollbacks")]
    return f"; on relapse: {job['on_relapse']}" + (f" (rolled back: {'; '.join(back)})" if back else "")


def _at_end(pairs: list[tuple[str, str]]) -> str:
    """Whether each model's validation figure was still improving when its training ended, from the
    curves in the records (bench/convergence.py): one phrase for one model, a word per seed for several."""
    from bench import convergence

    verdicts, again = [], []
    for unit, record in pairs:
        rec = _read(record)
        if extending(rec, unit):  # its curve in the record is the extension's so far, not its figure's
            again.append(seed_label(unit))
            continue
        curve = unit_curve(rec, unit)
        metric = convergence.metric_of(curve)
        if metric:
            verdicts.append((seed_label(unit), convergence.verdict(curve, metric)))
    text = ""
    if len(verdicts) == 1 and not again:
        text = f"; at the end: {convergence.describe(verdicts[0][1])}"
    elif verdicts:
        text = (f"; valid over the last {convergence.WINDOW} epochs: "
                + ", ".join(f"{seed} {convergence.brief(v)}" for seed, v in verdicts))
    if again:
        text += f"; {', '.join(again)} training on under a longer budget (figure: the finished run's)"
    return text


def _products(done: list[dict]) -> str:
    """What share of the images trained with products other than float32 (bench run --training-products)."""
    shares = []
    for d in done:
        counts = d.get("training_products") or {}
        total = sum(counts.values())
        if total and set(counts) != {"float32"}:
            shares.append(", ".join(f"{k} {v / total:.0%}" for k, v in sorted(counts.items()) if k != "float32"))
    return f"; training products {'; '.join(sorted(set(shares)))} of images (evaluated in float32)" if shares else ""


def _on_plateau(g: pd.DataFrame) -> str:
    """The marks of `_record_on_plateau` for each record behind a row."""
    return "".join(_record_on_plateau(gr, record) for record, gr in g.groupby("record"))


def _record_on_plateau(g: pd.DataFrame, record_path: str) -> str:
    """A mark for the seeds whose run never left its starting plateau, or relapsed and never came
    back (from the record's curves, so records made before the runner flagged it are
    marked too)."""
    rec, stuck, back = _read(record_path), [], []
    if "p_job" not in g:
        return ""
    datasets = g["p_dataset"] if "p_dataset" in g else [None] * len(g)
    for unit, seed, dataset in sorted({(u, s, d) for u, s, d in zip(g["p_job"], g["seed"], datasets)
                                       if isinstance(u, str)}, key=lambda t: t[:2]):
        flag = plateau_flag(rec, unit, dataset if isinstance(dataset, str) else None)
        if flag == "plateau":
            stuck.append(str(int(seed)))
        elif flag:
            back.append(f"seed {int(seed)} relapsed at epoch {flag} and never came back: its best-valid "
                        "weights, from before, are scored")
    marks = [f"seed {', '.join(stuck)} never left the starting plateau: not a result"] if stuck else []
    return "".join(f" ({m})" for m in marks + back)


def plateau_flag(rec: dict, unit: str, dataset: str | None) -> str | int | None:
    """"plateau" when the unit's run never left its starting plateau, the epoch its relapse began when
    it relapsed and never came back, else None (also for a unit being extended: its curve is the
    extension's so far, its figures from before)."""
    from bench import plateau

    if extending(rec, unit):
        return None
    rule = plateau.for_task(unit_entry(rec, unit).get("kind", unit.split("-")[0]), dataset)
    curve = unit_curve(rec, unit)
    result = plateau.analyse(curve, rule) if rule and curve else {}
    if result.get("on_plateau"):
        return "plateau"
    return result["ended_relapsed"]["epoch"] if result.get("ended_relapsed") else None


def table1(df: pd.DataFrame, root: Path = Path("."), records_dir: Path = Path(".")) -> str:
    rows = ["| model | protocol | glimpses | recipe and training per model | test error: mean +- std (every seed) "
            "| seeds | record | paper | attention | params | MFLOP/image |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if "p_protocol" not in df or "p_dataset" not in df:  # records of DRAW alone
        return "\n".join(rows)
    paper_by_t = {p["glimpses"]: p["error"] for p in paper.TABLE1 if p["model"].startswith("Differentiable")}
    err = df[(df["name"] == "test_error") & (df["p_dataset"] == "cluttered100")]
    clf = err[err["p_protocol"].isin(["separate", "per-step"]) & _is_classifier(err)]
    groups = sorted(runs(clf, ["p_protocol", "p_glimpses"]),
                    key=lambda kv: (min(kv[1]["record"]), kv[0][0] != "separate", kv[0][1]))
    for (protocol, t), g in groups:  # one row per run and glimpse count
        g = g.sort_values("seed")
        ref = paper_by_t.get(int(t))
        rows.append(f"| differentiable RAM, 12x12 | {protocol} | {int(t)} | "
                    f"{_training(g)} | {_spread(list(g['value']), _pct)}{_on_plateau(g)} | "
                    f"{', '.join(str(int(s)) for s in g['seed'])} | {_link(_records(g), root)} | "
                    f"{_pct(ref) if ref is not None and protocol == 'separate' else ''} | "
                    f"{_cost(g, 'soft', _classifier_cost(g, 100, 100))} |")
    rows += glimpse_model_rows(err, root, paper.TABLE1)
    conv_paper = next(p["error"] for p in paper.TABLE1 if p["model"].startswith("Convolutional"))
    for protocol, label, ref in (("baseline-conv", "2-layer conv net", _pct(conv_paper)),
                                 ("baseline-sklearn", "PCA + logistic regression (pixels)", "")):
        for _, g in runs(err[err["p_protocol"] == protocol], []):  # one row per run: budgets never pool
            g = g.sort_values("seed")
            rows.append(f"| {label} | baseline | - | {_baseline_training(g, protocol)} | "
                        f"{_spread(list(g['value']), _pct)} | "
                        f"{', '.join(str(int(s)) for s in g['seed'])} | {_link(_records(g), root)} | {ref} | "
                        f"{_cost(g, 'none', _baseline_cost(protocol))} |")
    return "\n".join(rows)


# ---------------------------------------------------------------- attention type and cost; RAM and plug-in rows

def _first(g: pd.DataFrame, column: str):
    if column not in g:
        return None
    values = g[column].dropna()
    return values.iloc[0] if len(values) else None


def _cost(g: pd.DataFrame, attention: str, fallback: tuple[int, int] | None = None) -> str:
    """'attention | params | MFLOP/image' cells. Records made before these were recorded: ``fallback``
    (params, FLOPs) computed from the model's settings where they are known, else '-'."""
    params, flops = _first(g, "p_param_count"), _first(g, "p_flops_per_image")
    if params is None and fallback is not None:
        params, flops = fallback
    return (f"{_first(g, 'p_attention_type') or attention} | {f'{int(params):,}' if params is not None else '-'} | "
            f"{f'{flops / 1e6:.2f}' if flops is not None else '-'}")


def _classifier_cost(g: pd.DataFrame, height: int, width: int) -> tuple[int, int] | None:
    """The glimpse classifier's cost from the read size, hidden units and glimpse count in its metrics."""
    from models.classifier import ClassifierConfig, GlimpseClassifier

    read_n, hidden, t = _first(g, "p_read_n"), _first(g, "p_hidden"), _first(g, "p_glimpses")
    if read_n is None or hidden is None or t is None:
        return None
    model = GlimpseClassifier(ClassifierConfig(height=height, width=width, glimpses=int(t), read_n=int(read_n),
                                               hidden=int(hidden)))
    return model.param_count(), model.flops_per_image()


def _draw_cost(g: pd.DataFrame, dataset: str, attention: bool, steps: int) -> tuple[int, int] | None:
    """DRAW's cost from its job in the record's suite config (records made before the cost was recorded)."""
    from bench.suites import flat
    from datasets.variants import get_spec
    from models.draw import DRAW, DRAWConfig

    try:
        rec = json.loads(Path(g["record"].iloc[0]).read_text())
    except (OSError, ValueError):
        return None
    for job in map(flat, rec.get("config", {}).get("suite", {}).get("jobs", [])):
        if job.get("kind") == "draw" and (job.get("dataset"), job.get("attention"), job.get("steps")) == \
                (dataset, attention, steps):
            spec = get_spec(dataset)
            model = DRAW(DRAWConfig(height=spec.height, width=spec.width, steps=steps, read_n=job["read_n"],
                                    write_n=job["write_n"], enc_hidden=job["enc_hidden"],
                                    dec_hidden=job["dec_hidden"], z_size=job["z_size"], attention=attention,
                                    initial_state=job.get("initial_state", "zero")))
            return model.param_count(), model.flops_per_image()
    return None


def _baseline_cost(protocol: str) -> tuple[int, int]:
    """The 100 x 100 baselines' cost: the conv net, or PCA (64 components) + logistic regression."""
    from bench.unit_runs import pixel_baseline_cost
    from models.baselines import ConvNet, ConvNetConfig

    if protocol == "baseline-sklearn":
        return pixel_baseline_cost(100 * 100)
    net = ConvNet(ConvNetConfig(height=100, width=100))
    return net.param_count(), net.flops_per_image()


def _is_classifier(err: pd.DataFrame) -> pd.Series:
    """Rows of the soft-attention glimpse classifier (records made before the model was recorded have none)."""
    return err["p_model"].isna() | (err["p_model"] == "classifier") if "p_model" in err else \
        pd.Series(True, index=err.index)


def _model_label(model: str, g: pd.DataFrame) -> str:
    if model == "ram":
        return f"RAM, {int(_first(g, 'p_patch'))}x{int(_first(g, 'p_patch'))}, {int(_first(g, 'p_scales'))} scales"
    return f"plug-in {model}"


def glimpse_model_rows(err: pd.DataFrame, root: Path, published: list[dict]) -> list[str]:
    """Rows of RAM and plug-in models (one per run and glimpse count), in the columns of Table 1.
    RAM is evaluated with the location policy's mean: ``location`` says so in each record."""
    if "p_model" not in err:
        return []
    others = err[err["p_model"].notna() & (err["p_model"] != "classifier") & err["p_glimpses"].notna()]
    ram_paper = {p["glimpses"]: p["error"] for p in published if p["model"].startswith("RAM")}
    rows = []
    for (model, protocol, t), g in sorted(runs(others, ["p_model", "p_protocol", "p_glimpses"]),
                                         key=lambda kv: (kv[0][0], min(kv[1]["record"]), kv[0][2])):
        g = g.sort_values("seed")
        ref = ram_paper.get(int(t)) if model == "ram" else None
        location = _first(g, "p_location")
        settings = "; ".join(x for x in (_training(g),
                                         f"location at evaluation: {location}" if location else "") if x)
        rows.append(f"| {_model_label(model, g)} | {protocol} | {int(t)} | {settings} | "
                    f"{_spread(list(g['value']), _pct)}{_on_plateau(g)} | "
                    f"{', '.join(str(int(s)) for s in g['seed'])} | {_link(_records(g), root)} | "
                    f"{_pct(ref) if ref is not None else ''} | {_cost(g, 'unspecified')} |")
    return rows


def table_ram60(df: pd.DataFrame, root: Path = Path(".")) -> str:
    """Every glimpse model on cluttered60 (not the quick suite's smoke runs), the RAM paper beside."""
    rows = ["| model | protocol | glimpses | settings | test error: mean +- std (every seed) | seeds | record | paper "
            "| attention | params | MFLOP/image |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    if "p_glimpses" not in df:
        return "\n".join(rows)
    err = df[(df["name"] == "test_error") & (df.get("p_dataset") == "cluttered60") & (df["suite"] != "quick")
             & df["p_glimpses"].notna()]
    clf = err[_is_classifier(err)]
    for (protocol, t), g in runs(clf, ["p_protocol", "p_glimpses"]):
        g = g.sort_values("seed")
        rows.append(f"| differentiable RAM, 12x12 | {protocol} | {int(t)} | {_training(g)} | "
                    f"{_spread(list(g['value']), _pct)}{_on_plateau(g)} | "
                    f"{', '.join(str(int(s)) for s in g['seed'])} | {_link(_records(g), root)} | | "
                    f"{_cost(g, 'soft', _classifier_cost(g, 60, 60))} |")
    rows += glimpse_model_rows(err, root, [{**p, "model": "RAM"} for p in paper.RAM_60["cluttered60"]])
    return "\n".join(rows)


def table2(df: pd.DataFrame, root: Path = Path(".")) -> str:
    rows = ["| model | dataset | recipe and training per model | ELBO bound (nats) | IWAE bound (nats) | KL "
            "| reconstruction | record | paper | attention | params | MFLOP/image |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    bounds = ["nll_elbo", "nll_iwae", "nll_elbo_mc", "kl", "reconstruction"]
    nll = df[df["name"].isin(bounds) & (df["suite"] != "quick")]
    if nll.empty:  # records of glimpse models only
        return "\n".join(rows)
    paper_att = {p["attention"]: p["nll"] for p in paper.TABLE2 if "attention" in p}
    units = nll["p_job"] if "p_job" in nll else [None] * len(nll)
    nll = nll.assign(_run=[recipe_signature(r, u) for r, u in zip(nll["record"], units)])  # budgets never pool
    for (record, _, dataset, attention, steps), g in nll.groupby(["record", "_run", "p_dataset", "p_attention",
                                                                  "p_steps"]):
        def col(name, fmt=lambda v: f"{v:.2f}"):
            sel = g[g["name"] == name].sort_values("seed")
            if not len(sel):
                return ""
            text = _spread(list(sel["value"]), fmt)
            if name == "nll_iwae":
                k = int(sel["p_k"].iloc[0])
                n = sel["p_test_images"].iloc[0]
                text += f" (k={k}" + (f", {int(n)} images" if pd.notna(n) else "")
                paired = g[g["name"] == "nll_elbo_mc"].sort_values("seed")
                if len(paired):  # the ELBO on the same images: the gap the IWAE closes, image for image
                    text += f"; their ELBO {_spread(list(paired['value']), fmt)}"
                text += ")"
            return text
        model = f"DRAW, {int(steps)} steps, " + ("attention" if attention else "no attention")
        ref = paper_att.get(bool(attention)) if dataset == "binarized" and int(steps) == 64 else None
        cost = _cost(g, "soft" if attention else "none", _draw_cost(g, dataset, bool(attention), int(steps)))
        rows.append(f"| {model} | {dataset} | {_training(g)} | "
                    f"{col('nll_elbo')}{_on_plateau(g[g['name'] == 'nll_elbo'])} | {col('nll_iwae')} | "
                    f"{col('kl')} | {col('reconstruction')} | {_link([record], root)} | "
                    f"{f'<= {ref:.2f}' if ref is not None else ''} | {cost} |")
    return "\n".join(rows)


def markdown(records: str | Path = "results/runs", link_root: str | Path = ".") -> str:
    df = load_all(records)
    if df.empty:
        return "(no records)"
    df = _complete_units(df)
    if df.empty:
        return "(no records but dry runs, which tables leave out)"
    df = pd.concat([df, earlier_rows(df)], ignore_index=True)
    root = str(link_root)  # a URL too: Path would fold its '//'
    from bench import headline

    return ("### Against the paper: for each published figure, our most-trained finished run of the most seeds\n\n"
            + headline.table(df, root)
            + "\n\n### Table 1: test error, 100x100 cluttered translated MNIST\n\n" + table1(df, root, Path("."))
            + "\n\n### Glimpse models on 60x60 cluttered MNIST, beside the RAM paper\n\n" + table_ram60(df, root)
            + "\n\n### Table 2: test NLL bounds in nats per image (binarized MNIST: one fixed binarization of "
            "the test set, from its seed; the training images binarized afresh each epoch; twodigit60: grey "
            "levels as Bernoulli targets)\n\n" + table2(df, root) + "\n")
