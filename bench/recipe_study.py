"""Recipe studies: variants of one suite job trained on the same images, judged by time to accuracy.

    python -m bench.recipe_study lr-schedule --job table1:0 --glimpses 8 --epochs 20 \\
        --variant const:schedule=constant \\
        --variant wsd:schedule=wsd,warmup_epochs=1,decay_epochs=8

Each variant is the base job with some settings replaced, by name: its optimiser's (lr, betas,
batch_size, schedule, warmup_epochs, decay_epochs, clip_norm), its model's (window_init, hidden,
read_n, ...) or its own (valid_limit, ...); `bench.suites.settings` lists them. All variants
share the seed, so they see the same fresh training images epoch by epoch. They run one after the
other through `bench run` (a suite named ``study-NAME``), so a study is a record like any other:
resumable across sittings (give the same arguments and --resume), with curves, segments and the
machine. The summary gives, per variant, the images and core-seconds each took to first reach
each validation threshold, and the best validation figure.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from bench import cost, records, runner, suites

THRESHOLDS = {"classifier": (0.5, 0.2, 0.1, 0.07, 0.05, 0.04), "draw": (180.0, 150.0, 120.0, 100.0, 90.0, 85.0)}
THRESHOLDS["ram"] = THRESHOLDS["classifier"]
GLIMPSE_KINDS = ("classifier", "ram")  # jobs trained per glimpse count: a study trains one of them


class StudyError(ValueError):
    pass


def parse_variant(text: str, job) -> tuple[str, dict]:
    """'label:name=value,name=value' -> (label, overrides), checked against the job's settings."""
    label, _, body = text.partition(":")
    if not label.replace("-", "").replace("_", "").isalnum():
        raise StudyError(f"variant {text!r}: start with a label of letters, digits, - or _, then ':'")
    names = set(suites.settings(job)) - {"kind", "variant", "seeds", "seeds_by_glimpses"}
    try:
        overrides = suites.parse_settings(body, where=f"variant {text!r}")
    except suites.SuiteError as e:
        raise StudyError(f"{e}; the settings of a {job.kind} job: {', '.join(sorted(names))}") from None
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise StudyError(f"variant {text!r}: {unknown[0]!r} is not name=value with a setting of a {job.kind} "
                         f"job ({', '.join(sorted(names))})")
    return label, overrides


def base_job(spec: str):
    """'SUITE:INDEX' -> that suite's job (a classifier, RAM or DRAW job)."""
    name, _, index = spec.partition(":")
    try:
        job = suites.get(name).jobs[int(index or 0)]
    except (suites.SuiteError, ValueError, IndexError):
        raise StudyError(f"--job {spec!r}: give SUITE:INDEX of a classifier, RAM or DRAW job, e.g. table1:0") from None
    if job.kind not in (*GLIMPSE_KINDS, "draw"):
        raise StudyError(f"--job {spec!r} is a {job.kind} job; a study varies a classifier, RAM or DRAW job")
    return job


def study_suite(name: str, job, variants: list[str], glimpses: int | None, seed: int,
                common: str = "") -> suites.Suite:
    """The study's suite: one job per variant. ``common`` ('name=value,...') applies to every variant
    first, e.g. smaller test sets for a study that compares training only."""
    jobs = []
    if common:
        _, shared = parse_variant(f"common:{common}", job)
        try:
            job = suites.with_settings(job, **shared)
        except (TypeError, ValueError) as e:  # a value the model or optimiser config refuses
            raise StudyError(f"--set {common!r}: {e}") from None
    for text in variants:
        label, overrides = parse_variant(text, job)
        try:
            v = suites.with_settings(job, variant=label, **overrides)
        except (TypeError, ValueError) as e:  # a value the model or optimiser config refuses
            raise StudyError(f"variant {text!r}: {e}") from None
        if v.kind in GLIMPSE_KINDS:
            t = glimpses or max(v.glimpses)
            v = replace(v, glimpses=(t,), seeds_by_glimpses=((t, (seed,)),))
        jobs.append(v)
    if len({j.variant for j in jobs}) != len(jobs):
        raise StudyError("two variants share a label; give each its own")
    return suites.Suite(name=f"study-{name}", description=f"recipe study {name}", expected="as budgeted",
                        jobs=tuple(jobs), seeds=(seed,))


def time_to_accuracy(record: dict) -> list[dict]:
    """Per unit: images and core-seconds to first reach each threshold, and the best validation value."""
    threads = record["machine"].get("threads") or 1
    out = []
    for unit, curve in record["curves"].items():
        kind = record["jobs"][unit]["kind"]
        key = "valid_nll_elbo" if kind == "draw" else "valid_error"
        points = [e for e in curve if e.get(key) is not None]
        reached = {}
        for th in THRESHOLDS[kind]:
            hit = next((e for e in points if e[key] < th), None)
            reached[th] = None if hit is None else (
                hit["images_seen"], cost.core_seconds(hit.get("train_cost"), hit["train_time_s"], threads))
        out.append({"unit": unit, "metric": key, "best": min((e[key] for e in points), default=None),
                    "images": points[-1]["images_seen"] if points else 0, "reached": reached})
    return out


def format_summary(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        reached = "; ".join(f"< {th:g}: " + ("not reached" if v is None else f"{v[0] / 1e6:.2f} M img, {v[1]:.0f} "
                                            "core-s") for th, v in r["reached"].items())
        best = "-" if r["best"] is None else f"{r['best']:.4g}"
        lines.append(f"{r['unit']}: best {r['metric']} {best} after {r['images'] / 1e6:.2f} M images; {reached}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.recipe_study", description=__doc__.split("\n")[0])
    ap.add_argument("name", help="the study's name (its record: runs/studies/NAME.json unless --out)")
    ap.add_argument("--job", required=True, help="SUITE:INDEX of the base job, e.g. table1:0 or table2:0")
    ap.add_argument("--variant", action="append", required=True, help="LABEL:field=value,... (repeat)")
    ap.add_argument("--set", default="", metavar="NAME=VALUE,...",
                    help="settings applied to every variant, e.g. iwae_limit=100,test_limit=2000")
    ap.add_argument("--glimpses", type=int, help="classifier, RAM: the glimpse count to train (default: the largest)")
    ap.add_argument("--epochs", type=int, help="epochs per variant (default: the job's)")
    ap.add_argument("--time-budget", type=float, metavar="MIN", help="training minutes per variant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    ap.add_argument("--out", help="record path (default runs/studies/NAME.json)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--checkpoint-dir", metavar="DIR",
                    help="where the variants' checkpoints go (default runs/checkpoints/, git-ignored); a study that "
                         "continues in another session keeps them in results/checkpoints")
    ap.add_argument("--compact-checkpoints", action="store_true", help="as bench run's: smaller files to commit")
    args = ap.parse_args(argv)
    try:
        suite = study_suite(args.name, base_job(args.job), args.variant, args.glimpses, args.seed, args.set)
    except StudyError as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    suites.SUITES[suite.name] = suite
    out = args.out or str(records.RUNS / "studies" / f"{args.name}.json")
    opts = runner.RunOptions(suite=suite.name, epochs=args.epochs, time_budget_min=args.time_budget,
                             threads=args.threads, device=args.device, out=out, resume=args.resume, progress=False,
                             checkpoint_dir=args.checkpoint_dir, compact_checkpoints=args.compact_checkpoints)
    from bench.distributed import stop_signals_to_interrupt

    from bench.cli import usage_errors

    stop_signals_to_interrupt()
    try:
        record, path = runner.run(opts, log=lambda m: print(m, file=sys.stderr, flush=True))
    except KeyboardInterrupt:
        print("interrupted: continue with the same arguments and --resume", file=sys.stderr)
        return 130
    except usage_errors() as e:
        print(f"{ap.prog}: error: {e}", file=sys.stderr)
        return 2
    print(format_summary(time_to_accuracy(record)))
    print(f"record: {Path(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
