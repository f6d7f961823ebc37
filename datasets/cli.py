"""`python -m datasets fetch | build | show`: fetch MNIST, build benchmark variants, draw samples.

Exit status: 0 done, 1 the work failed, 2 bad command line or unusable input/output (one line
saying what is wrong: a bad argument, MNIST that cannot be obtained or verified, a damaged build,
an unwritable path or a full disk), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datasets import mnist
from datasets.cliargs import (EXIT_INTERRUPTED, EXIT_USAGE, OneLineParser, UsageError, check_data_dir,
                              check_output_file, check_output_folder, integer, message, reader_gone)
from datasets.generator import SpecError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_fetch(args: argparse.Namespace) -> int:
    folder = mnist.fetch(args.data_dir, log=_log, rehash=True)  # asked for: every file hashed again
    for split in ("train", "test"):
        images, labels = mnist.load(split, args.data_dir)
        print(f"{split}: {images.shape[0]} images")
    print(folder)
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from datasets import build

    if args.out is None:
        if args.force:
            raise UsageError("--force goes with --out; to rebuild the cached copy, remove its folder (the path "
                             "this command prints without --force) and build again")
        folder = build.cached_build(args.name, args.seed, args.data_dir, args.limit, args.epoch, log=_log)
    else:
        folder = build.build(args.name, args.seed, args.out, args.data_dir, args.limit, args.epoch,
                             force=args.force, log=_log)
    print(folder)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from datasets import show

    print(show.draw_grid(args.name, args.n, args.output, args.split, args.seed, args.epoch, args.data_dir))
    return 0


def check_paths(args: argparse.Namespace) -> None:
    """Refuse unusable paths before any work, creating nothing."""
    check_data_dir(args.data_dir)
    if getattr(args, "out", None) is not None:
        check_output_folder(args.out, "--out")
    if getattr(args, "output", None) is not None:
        check_output_file(args.output, "--output", "grid.png")
        if Path(args.output).suffix.lower() != ".png":
            raise UsageError(f"--output {args.output}: the grid is written as a PNG; give a name ending in .png")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m datasets", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("fetch", help="obtain and verify the MNIST files (replacing damaged ones); print where they are")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_fetch)

    from datasets.variants import PRESETS, SPLITS

    p = sub.add_parser("build", help="write DIR/{train,valid,test}.npz and DIR/manifest.json for a variant")
    p.add_argument("name", choices=sorted(PRESETS))
    p.add_argument("--seed", type=integer(0), default=0, help="data seed, >= 0 (default 0)")
    p.add_argument("--out", help="output folder (default: the cache <data root>/built/NAME-SEED-vVERSION)")
    p.add_argument("--limit", type=integer(1), help="keep only the first N examples of each split (N >= 1)")
    p.add_argument("--epoch", type=integer(0), help="train split: fresh epoch E (>= 0) instead of the fixed set")
    p.add_argument("--force", action="store_true", help="rebuild even when --out already holds this build")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("show", help="draw a grid of samples with digit boxes and labels")
    p.add_argument("name", choices=sorted(PRESETS))
    p.add_argument("--n", type=integer(1), default=64, help="number of samples, >= 1 (default 64)")
    p.add_argument("-o", "--output", default="grid.png", help="PNG path (default grid.png)")
    p.add_argument("--split", choices=list(SPLITS), default="test")
    p.add_argument("--seed", type=integer(0), default=0, help="data seed, >= 0 (default 0)")
    p.add_argument("--epoch", type=integer(0), help="train split: fresh epoch E (>= 0) instead of the fixed set")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_paths(args)
        return args.func(args)
    except BrokenPipeError:
        return reader_gone()
    except (UsageError, mnist.DataError, SpecError, OSError) as e:
        print(f"{parser.prog} {args.command}: error: {message(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

