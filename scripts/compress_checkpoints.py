"""Compress checkpoints losslessly (bench/checkpoint_bytes.py) before they are committed: the states a
run written by an older harness left uncompressed, or a periodic save left by a killed run.

    python scripts/compress_checkpoints.py            # the changed or new files under results/checkpoints/
    python scripts/compress_checkpoints.py PATH ...   # these files

The compressed copy must hold the same bits, or the file is left as it was; one already compressed is
left alone. Without PATHs only the changed files are taken: rewriting a file committed as it is would
add a second copy of it to the repository's history.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import checkpoint_bytes  # noqa: E402
from datasets.fileio import atomic_write_bytes  # noqa: E402


def changed_checkpoints() -> list[Path]:
    """The checkpoints under results/checkpoints that git sees new or changed (a rename's new name; not
    the deleted ones), from NUL-separated porcelain output, which leaves names with spaces unquoted."""
    out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all", "--", "results/checkpoints"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    entries, paths = iter(out.split("\0")), []
    for entry in entries:
        if not entry:
            continue
        status, name = entry[:2], entry[3:]
        if "R" in status or "C" in status:
            next(entries, None)  # the rename's or copy's source follows its target
        if "D" not in status and name.endswith(".pt"):
            paths.append(REPO / name)
    return sorted(paths)


def compress_file(path: Path) -> tuple[int, int] | None:
    """(bytes before, bytes after), or None when the file is compressed already."""
    data = path.read_bytes()
    if checkpoint_bytes.is_compressed(data):
        return None
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    small = checkpoint_bytes.compress(state)
    if not checkpoint_bytes.same_bits(checkpoint_bytes.decompress(small), state):
        raise SystemExit(f"{path}: the compressed copy does not hold the same state; left as it was")
    atomic_write_bytes(path, small)
    return len(data), len(small)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", type=Path)
    args = ap.parse_args(argv)
    for path in args.paths or changed_checkpoints():
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
        sizes = compress_file(path)
        name = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"{name}: " + ("compressed already" if sizes is None else
                             f"{sizes[0] / 1e6:.1f} MB -> {sizes[1] / 1e6:.1f} MB"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
