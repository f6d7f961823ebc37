"""`python -m datasets`: fetch MNIST, build benchmark variants, draw samples."""

from __future__ import annotations

import argparse
import sys

from datasets import mnist


def cmd_fetch(args: argparse.Namespace) -> int:
    folder = mnist.fetch(args.data_dir, log=lambda m: print(m, file=sys.stderr))
    for split in ("train", "test"):
        images, labels = mnist.load(split, args.data_dir)
        print(f"{split}: {images.shape[0]} images")
    print(folder)
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def cmd_build(args: argparse.Namespace) -> int:
    from datasets import build

    if args.out is None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="obtain and verify the MNIST files; print where they are")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_fetch)

    from datasets.variants import PRESETS, SPLITS

    p = sub.add_parser("build", help="write DIR/{train,valid,test}.npz and DIR/manifest.json for a variant")
    p.add_argument("name", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: the cache <data root>/built/NAME-SEED-vVERSION)")
    p.add_argument("--limit", type=int, help="keep only the first N examples of each split")
    p.add_argument("--epoch", type=int, help="train split: fresh epoch E instead of the fixed set")
    p.add_argument("--force", action="store_true", help="rebuild even when --out already holds this build")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("show", help="draw a grid of samples with digit boxes and labels")
    p.add_argument("name", choices=sorted(PRESETS))
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("-o", "--output", default="grid.png", help="PNG path (default grid.png)")
    p.add_argument("--split", choices=list(SPLITS), default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, help="train split: fresh epoch E instead of the fixed set")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (mnist.DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
