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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fetch", help="obtain and verify the MNIST files; print where they are")
    p.add_argument("--data-dir", help="data root (default: $GLIMPSE_DATA, else ./data)")
    p.set_defaults(func=cmd_fetch)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except mnist.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
