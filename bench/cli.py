"""`python -m bench run | eval | export | tables | status | close | compare | report`.

Where things go: your runs' records under runs/records/<machine>/ (index runs/index.csv), reports
in runs/report/, checkpoints in runs/checkpoints/, dry runs in runs/dry-run/; runs/ is git-ignored,
so your runs never change the checkout. The committed reference results (results/runs/,
results/index.csv, results/report/) change only when asked for: `run --reference`, `report
--reference`, or an --out under results/. `tables --reference` and `report --reference` rebuild
the committed tables and report from the reference records.

Exit status: 0 done, 1 the work failed (or `compare --fail-on-regression` found a regression),
2 bad command line or unusable input/output (one line saying what is wrong: a bad argument, a
missing or damaged record, checkpoint or data file, an unwritable path or a full disk),
130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from bench.optim import ON_RELAPSE
from datasets.cliargs import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, UsageError, check_data_dir,
                              check_output_file, check_output_folder, integer, message, reader_gone)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad {what} list {text!r}: give comma-separated integers, e.g. 1,2,4,8") \
            from None
    if not values:
        raise argparse.ArgumentTypeError(f"empty {what} list: give comma-separated integers, e.g. 1,2,4,8")
    return values


def glimpse_list(text: str) -> tuple[int, ...]:
    values = int_list(text, "glimpse")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"bad glimpse list {text!r}: glimpse counts must be >= 1")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"bad glimpse list {text!r}: a glimpse count is repeated")
    return tuple(sorted(values))


def job_list(text: str) -> tuple[int, ...]:
    values = int_list(text, "job")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"bad job list {text!r}: job numbers (bench run --list) are >= 0")
    return tuple(dict.fromkeys(values))


def seed_list(text: str) -> tuple[int, ...]:
    values = int_list(text, "seed")
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"bad seed list {text!r}: seeds must be >= 0")
    return tuple(dict.fromkeys(values))


def settings_list(text: str) -> dict:
    from bench import suites

    try:
        values = suites.parse_settings(text)
    except suites.SuiteError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--set: ")) from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one setting, e.g. hidden=512")
    return values


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        return v

    return parse


def check_writable(path: str, what: str = "--out", example: str = "run.json") -> None:
    """Fail early, before any training and without creating anything, when ``path`` cannot be written."""
    check_output_file(path, what, example)


def _own_record(args) -> Path | None:
    """The record this process writes for --out: --out itself, or with --sweep-parallel under torchrun
    this rank's NAME.rankR-of-W.json beside it (bench/runner.py)."""
    if not args.out:
        return None
    out = Path(args.out)
    if args.sweep_parallel:
        from bench import distributed

        try:
            ranks = distributed.env_ranks()
        except distributed.DistError as e:
            raise UsageError(str(e)) from None
        if ranks is not None:
            from bench.runner import sweep_record_path

            return sweep_record_path(out, ranks[0], ranks[1])
    return out


def _is_dry_run(path: Path) -> bool:
    """Whether the record at ``path`` is a dry run's (which another dry run may replace)."""
    from bench import records

    try:
        return records.is_dry_run(records.read(path))
    except (records.RecordError, OSError, ValueError):
        return False


def check_dataset(name: str | None) -> None:
    from datasets.variants import PRESETS

    if name is not None and name not in PRESETS:
        raise UsageError(f"--dataset {name!r} is not a variant; choose one of {', '.join(sorted(PRESETS))}")


def check_device(name: str) -> None:
    from models.training import pick_device

    pick_device(name)


# ---------------------------------------------------------------- commands

def cmd_run(args) -> int:
    from bench import runner, suites
    from bench.targets import summary_table

    if args.list:
        print(suites.listing())
        return 0
    try:
        suites.get(args.suite)
    except suites.SuiteError as e:
        raise UsageError(str(e)) from None
    if args.out:
        check_writable(args.out)
    if args.reference and (args.out or args.dry_run):
        raise UsageError("--reference goes with neither --out (the path says where) nor --dry-run "
                         "(a dry run is never a reference result)")
    if args.resume and args.dry_run:
        raise UsageError("--resume and --dry-run do not go together: a dry run is one batch and is never resumed")
    mine = _own_record(args)  # --sweep-parallel: this rank's own record beside --out
    if mine and not args.resume and mine.exists() and not (args.dry_run and _is_dry_run(mine)):
        what = f"--out {args.out}" if mine == Path(args.out) else f"{mine} (this rank's record of --out {args.out})"
        raise UsageError(f"{what} already exists; continue its run with --resume, or give another --out "
                         "(a new run never replaces a record; a dry run replaces only a dry run's record)")
    if args.resume and args.out:
        from bench import records

        _selection_from_record(args, records.read(mine))  # a missing or damaged record is refused here
    check_device(args.device)
    if args.resume and not args.out and not args.sweep_parallel:
        _selection_from_latest(args)
    check_data_dir(args.data_dir)
    if args.out:
        check_writable(args.out)
    if args.checkpoint_dir:
        check_output_folder(args.checkpoint_dir, "--checkpoint-dir")
    if args.settings:
        try:  # a setting no job has, or a value its config refuses, is refused before any work
            suites.with_deviations(suites.get(args.suite), args.settings)
        except suites.SuiteError as e:
            raise UsageError(str(e)) from None
    if args.model is not None:  # --model "" is refused, not taken for no plug-in
        from bench import plugins

        plugins.load_builder(args.model)  # an unknown module or name is refused before any work
        suites.with_plugin(suites.get(args.suite), args.model)
    opts = runner.RunOptions(suite=args.suite, glimpses=args.glimpses, jobs=args.jobs,
                             units=tuple(args.units) if args.units else None, seeds=args.seeds,
                             device=args.device,
                             epochs=args.epochs, time_budget_min=args.time_budget, on_relapse=args.on_relapse,
                             settings=args.settings,
                             data_dir=args.data_dir, out=args.out, resume=args.resume, dry_run=args.dry_run,
                             reference=args.reference,
                             threads=args.threads,
                             checkpoint_dir=args.checkpoint_dir, model=args.model,
                             checkpoint_every_s=args.checkpoint_every, compact_checkpoints=args.compact_checkpoints,
                             training_products=args.training_products,
                             progress=False if args.no_progress else None)
    opts, log, main = _distribute(args, opts)
    from bench.distributed import stop_signals_to_interrupt

    stop_signals_to_interrupt()
    try:
        record, path = runner.run(opts, log=log, argv=["python", "-m", "bench", *args.argv])
    except KeyboardInterrupt:
        if args.dry_run:
            log("interrupted: a dry run is not resumed; run it again")
            return 130
        again = list(args.argv) + ([] if args.resume else ["--resume"])  # this sitting's budget, units, options
        where = "" if args.out else " --out RECORD (the record above; bench status names it)"
        log(f"interrupted: the record is marked incomplete and checkpoints are kept; continue with "
            f"python -m bench {shlex.join(again)}{where}")
        return 130
    finally:
        from bench import distributed

        distributed.shutdown()
    if main:
        print(summary_table(record))
        print(f"record: {path}")
    return 0


# What a record was made with, and what a resume that does not say otherwise takes from it: the units it
# holds and how they train, so `bench run --suite S --resume --out RECORD` continues any record.
_RECORD_SELECTION = {"glimpses": tuple, "seeds": tuple, "jobs": tuple, "on_relapse": str, "model": str,
                     "settings": dict}


def _selection_from_record(args, record: dict) -> None:
    made_with = record.get("config", {}).get("options", {})
    for name, kind in _RECORD_SELECTION.items():
        if getattr(args, name) is None and made_with.get(name) is not None:
            setattr(args, name, kind(made_with[name]))
    if made_with.get("compact_checkpoints"):
        args.compact_checkpoints = True


def _selection_from_latest(args) -> None:
    """A resume without --out continues this machine's latest unfinished record of the suite
    (bench/runner.py): take that record's selection as a resume with --out does."""
    from bench import records, runner
    from models.training import pick_device

    machine_id = records.machine_info(str(pick_device(args.device)))["id"]
    latest = runner.latest_unfinished(args.suite, args.reference, machine_id)
    if latest is not None:  # none: the runner says so
        _selection_from_record(args, records.read(latest))


def _distribute(args, opts):
    """Under torchrun: one data-parallel training over all ranks (DDP), or with --sweep-parallel
    the suite's units shared round-robin, each trained by one rank alone. Returns the options,
    this rank's log and whether it prints the summary."""
    from dataclasses import replace

    from bench import distributed, suites

    try:
        if args.sweep_parallel:
            ctx = distributed.sweep_from_env(args.device)
            opts = replace(opts, device=ctx.device, sweep_rank=ctx.rank, sweep_world=ctx.world_size)
            prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""
            return opts, (lambda m: _log(prefix + m)), True
        ctx = distributed.init_from_env(args.device)
        for job in suites.get(args.suite).jobs:
            if hasattr(job, "optim"):
                distributed.per_rank_batch(job.optim.batch_size, ctx.world_size)
    except distributed.DistError as e:
        distributed.shutdown()
        raise UsageError(str(e)) from None
    opts = replace(opts, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size, backend=ctx.backend)
    return opts, (_log if ctx.is_main else (lambda m: None)), ctx.is_main


def cmd_eval(args) -> int:
    from bench import evaluate

    check_dataset(args.dataset)
    check_device(args.device)
    check_data_dir(args.data_dir)
    if args.out:
        check_writable(args.out)
        if Path(args.out).exists():
            raise UsageError(f"--out {args.out} already exists: give a new path (an evaluation never writes "
                             "over a record)")
    record, path = evaluate.evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_seed=args.seed,
                                                device=args.device, data_dir=args.data_dir, out=args.out,
                                                iwae_k=args.k, limit=args.limit, log=_log,
                                                command=["python", "-m", "bench", *args.argv])
    from bench.targets import summary_table

    print(summary_table(record))
    print(f"record: {path}")
    return 0


def cmd_export(args) -> int:
    from bench import checkpoints

    check_writable(args.out, "out", "model.pt")
    if Path(args.out).exists():
        same = Path(args.out).resolve() == Path(args.checkpoint).resolve()
        raise UsageError(f"{args.out} already exists" + (": it is the checkpoint itself, whose training state "
                         "--resume needs" if same else "") + "; give a new path (or remove it first)")
    out = checkpoints.export_reference(args.checkpoint, args.out)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def _records_arg(args) -> str:
    """--records, else the reference records with --reference, else yours (falling back to the reference)."""
    from bench import records

    if args.records:
        if args.reference:
            raise UsageError("--reference reads the committed records (and `report --reference` writes "
                             "results/report): give it without --records, or --records without it")
        return args.records
    path = records.default_records(args.reference)
    if not args.reference and path == records.records_dir(True):
        _log(f"no records of yours under {_shown(records.records_dir())}: using the committed reference records")
    return _shown(path)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def cmd_tables(args) -> int:
    from bench import records, tables

    path = _records_arg(args)
    records.find(path)  # a missing path is refused with one line
    print(tables.markdown(path, args.link_root))
    return 0


def cmd_status(args) -> int:
    from bench import records, status

    if args.records:
        paths = [p for given in args.records for p in records.find(given)]
        named = {Path(p) for p in args.records if Path(p).is_file()}
    else:
        paths, named = records.find(_records_arg(args)), set()
    shown = [p for p in paths if args.all or p in named or status.unfinished(p)]
    if not shown:
        print(f"every record there is complete ({len(paths)}); --all shows them too")
        return 0
    print(status.report([Path(_shown(p.resolve())) for p in shown]))
    return 0


def cmd_close(args) -> int:
    from bench import closing

    units = closing.close(args.record, args.reason or "", args.units, reopen=args.reopen, force=args.force)
    print(f"{args.record}: {'reopened' if args.reopen else 'closed'} {len(units)} unit(s): {', '.join(units)}")
    return 0


def cmd_compare(args) -> int:
    from bench import compare

    if args.factor <= 1:
        raise UsageError(f"--factor must be above 1 (a slowdown by more than it is a regression), got {args.factor:g}")
    result = compare.compare_paths(args.a, args.b, speed_factor=args.factor)
    print(compare.format_result(result))
    if args.fail_on_regression and result.regressions:
        _log(f"{len(result.regressions)} regression(s); failing as --fail-on-regression asks")
        return 1
    return 0


def cmd_report(args) -> int:
    from bench import report

    from bench import records

    out_dir = args.out or _shown(records.report_dir(args.reference))
    check_output_folder(out_dir, "--out")
    out = report.write_report(_records_arg(args), out_dir, log=_log)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    r = sub.add_parser("run", help="run a benchmark suite (default: quick) and write its record")
    r.add_argument("--suite", default="quick", help="quick (default), table1, table2, twodigit, throughput, ram60")
    r.add_argument("--model", metavar="MODULE:BUILD",
                   help="train your own glimpse model (module.path:build, or a glimpse.models entry point) in place "
                        "of the suite's glimpse models; see docs/plugins.md")
    r.add_argument("--list", action="store_true", help="list the suites with their expected time and targets")
    r.add_argument("--glimpses", type=glimpse_list, help="glimpse counts for the classifier, e.g. 1,2,4,8")
    r.add_argument("--jobs", type=job_list,
                   help="only these jobs of the suite, by the numbers --list gives them, e.g. 1 (a record of "
                        "those jobs alone: run two jobs of one suite side by side as two records)")
    r.add_argument("--units", nargs="+", metavar="GLOB",
                   help="this sitting trains only the units whose ids match (e.g. 'classifier-*-T4-*'); the "
                        "others stay unfinished in the record for a later --resume")
    r.add_argument("--seeds", type=seed_list, help="seeds, e.g. 0,1,2 (default: the suite's)")
    r.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    r.add_argument("--epochs", type=positive(int), help="epochs per model (overrides the suite)")
    r.add_argument("--time-budget", type=positive(float), metavar="MIN",
                   help="training minutes per model (overrides the suite)")
    r.add_argument("--on-relapse", choices=ON_RELAPSE,
                   help="a recipe setting of every trained model (default: the suite's, continue): rollback "
                        "returns to the best-valid weights and halves the rate when validation relapses")
    r.add_argument("--set", dest="settings", type=settings_list, metavar="NAME=VALUE,...",
                   help="deviate from the suite's recipe: each setting in every trained job that has it, "
                        "e.g. hidden=512 or lr=5e-4,decay_epochs=60 (bench.suites.settings names them); the "
                        "record keeps them, a resume takes them from it, and the tables name them")
    r.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    r.add_argument("--out", help="record path (default runs/records/<machine>/<utc>_<sha>.json, git-ignored; "
                                 "a path under results/ is indexed in results/index.csv)")
    r.add_argument("--reference", action="store_true",
                   help="write the record into the committed reference results, "
                        "results/runs/<machine>/<utc>_<sha>.json, indexed in results/index.csv")
    r.add_argument("--resume", action="store_true",
                   help="continue the record at --out (default: this machine's latest unfinished one of the suite)")
    r.add_argument("--dry-run", action="store_true", help="one batch of everything, tiny evaluations (for CI)")
    r.add_argument("--threads", type=positive(int), help="torch CPU threads")
    r.add_argument("--checkpoint-dir", help="where unit checkpoints go (default runs/checkpoints/)")
    r.add_argument("--compact-checkpoints", action="store_true",
                   help="store Adam's moments in bfloat16 (about half the size; a continuation tracks an "
                        "uninterrupted run closely but not bit for bit)")
    r.add_argument("--checkpoint-every", type=positive(float), metavar="SEC", default=300.0,
                   help="seconds between checkpoints within an epoch (default 300); kill -9 loses at most this much")
    r.add_argument("--training-products", choices=("float32", "bfloat16", "auto"), default="float32",
                   help="DRAW's matrix products in training on CPU (default float32, the paper's): bfloat16 "
                        "takes bf16 operands, about 1.7-1.8x faster where the CPU has avx512_bf16 or AMX (refused "
                        "elsewhere); auto: bfloat16 where accepted, else float32; evaluation stays float32. Not "
                        "part of the recipe: each sitting records it, and each DRAW unit the images trained with each")
    r.add_argument("--no-progress", action="store_true", help="plain log lines only, no progress bars")
    r.add_argument("--sweep-parallel", action="store_true",
                   help="under torchrun: run the units one per rank (round-robin), each alone with its own "
                        "record, instead of one data-parallel training")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="evaluate a checkpoint on the test split and write a record")
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by bench run")
    e.add_argument("--dataset", help="evaluate on another variant of the same image size")
    e.add_argument("--seed", type=integer(0), default=0, help="test data seed, >= 0 (0 = the fixed test split)")
    e.add_argument("--device", default="auto")
    e.add_argument("--data-dir")
    e.add_argument("--k", type=positive(int), default=1000, help="IWAE samples per image (DRAW)")
    e.add_argument("--limit", type=positive(int), help="test images (default: all; IWAE: at most 1000)")
    e.add_argument("--out", help="record path (default runs/records/<machine>/<utc>_<sha>.json, git-ignored)")
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write a small evaluation-only copy of a training checkpoint")
    x.add_argument("checkpoint", help="a checkpoint written by bench run")
    x.add_argument("out", help="where the reference checkpoint goes (e.g. results/checkpoints/NAME.pt)")
    x.set_defaults(func=cmd_export)

    t = sub.add_parser("tables", help="Table 1 and Table 2 as markdown from the records, beside the paper")
    t.add_argument("--records", help="a folder of records (default: yours, runs/records, when there are any, "
                                     "else the committed results/runs)")
    t.add_argument("--reference", action="store_true",
                   help="the committed reference records, results/runs (the README's tables)")
    t.add_argument("--link-root", default=".", help="prefix for the record links (default: repository root)")
    t.set_defaults(func=cmd_tables)

    st = sub.add_parser("status", help="where each model of unfinished runs stands: epochs, images, core-hours, "
                                       "validation, converged or not, what is left, the command that continues it")
    st.add_argument("records", nargs="*", help="records or folders (default: yours, runs/records, when there are "
                                               "any, else the committed results/runs); a folder shows its "
                                               "unfinished records")
    st.add_argument("--reference", action="store_true", help="the committed reference records, results/runs")
    st.add_argument("--all", action="store_true", help="finished records too")
    st.set_defaults(func=cmd_status)

    cl = sub.add_parser("close", help="retire units of a record that no sitting is to train (moved to another "
                                      "record, replaced by longer runs): status and resume leave them alone")
    cl.add_argument("record", help="the record")
    cl.add_argument("--reason", help="why (kept in the record beside each unit; needed unless --reopen)")
    cl.add_argument("--units", nargs="+", metavar="GLOB", help="the units (default: every one not complete)")
    cl.add_argument("--reopen", action="store_true", help="take the closure of the units back")
    cl.add_argument("--force", action="store_true",
                    help="close although the record says a sitting is running (one killed with kill -9 never "
                         "says it stopped)")
    cl.set_defaults(func=cmd_close)

    c = sub.add_parser("compare", help="compare two records or folders of records")
    c.add_argument("a", help="baseline record or folder")
    c.add_argument("b", help="new record or folder")
    c.add_argument("--factor", type=positive(float), default=1.10,
                   help="throughput: regression when the median ratio is worse than this factor (default 1.10) "
                        "and the IQRs do not overlap")
    c.add_argument("--fail-on-regression", action="store_true", help="exit 1 when any metric regressed")
    c.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="HTML page and PNG plots from records")
    rp.add_argument("--records", help="record file or folder (default: yours, runs/records, when there are any, "
                                      "else the committed results/runs)")
    rp.add_argument("--out", help="output folder (default runs/report, git-ignored; with --reference results/report)")
    rp.add_argument("--reference", action="store_true",
                    help="the committed reference report: read results/runs, write results/report")
    rp.set_defaults(func=cmd_report)
    return p


def usage_errors() -> tuple[type[BaseException], ...]:
    """What a command refuses with exit 2 and a one-line message: bad input, missing data or device, a
    damaged file, a changed recipe. Caught before RunError and TrainingError (exit 1), since some
    CheckpointErrors and UsageErrors are also those."""
    from bench.checkpoints import CheckpointError
    from bench.distributed import DistError
    from bench.records import RecordError
    from bench.resume import RecipeChanged
    from bench.suites import SuiteError
    from datasets.generator import SpecError
    from datasets.mnist import DataError
    from models.training import DeviceError

    return (UsageError, SuiteError, RecordError, DeviceError, CheckpointError, DataError, SpecError, DistError,
            OSError, RecipeChanged)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    from bench.runner import RunError
    from bench.training_loop import TrainingError

    try:
        return args.func(args)
    except BrokenPipeError:
        return reader_gone()
    except usage_errors() as e:
        print(f"{parser.prog} {args.command}: error: {message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except (RunError, TrainingError) as e:
        print(f"{parser.prog} {args.command}: error: {message(e)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
