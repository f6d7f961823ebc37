"""What the `python -m datasets` and `python -m bench` command lines share: exit statuses, one-line
argument errors, number types, and output-path checks that create nothing.

Exit status: 0 done, 1 the work failed, 2 bad command line or unusable input/output (one line
saying what is wrong and how to fix it), 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad argument or an unusable input/output path: printed as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of the usage dump."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def integer(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}")
        return value

    return parse


def _nearest_existing(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _probe(folder: Path, flag: str, path: str | os.PathLike) -> None:
    """Create and remove a temporary file in ``folder`` (os.access says yes to root on a read-only disk)."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path} is not writable ({e.strerror or e}); choose another path") from None


def check_output_file(path: str | os.PathLike, flag: str = "--out", example: str = "run.json") -> None:
    """Refuse, before any work and without creating anything, a file path that cannot be written."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file path such as {p / example}")
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise UsageError(f"{flag} {path} is not writable ({base} is a file, not a folder); choose another path")
    _probe(base, flag, path)


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Refuse, before any work and without creating anything, a folder path that cannot be written."""
    p = Path(path)
    base = _nearest_existing(p)
    if not base.is_dir():
        raise UsageError(f"{flag} {path} is not a folder ({base} is a file); give a folder path")
    _probe(base, flag, path)


def check_data_dir(path: str | os.PathLike | None, flag: str = "--data-dir") -> None:
    """A data root must be a folder or not exist yet (it is created when data are fetched)."""
    if path is None:
        return
    base = _nearest_existing(Path(path))
    if not base.is_dir():
        raise UsageError(f"{flag} {path} is not a folder ({base} is a file); give the data folder")


def message(e: BaseException) -> str:
    """What to print for an error; a bare OSError names its file and what to do."""
    if isinstance(e, OSError) and type(e).__str__ is OSError.__str__ and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}; check the path and its permissions, free some space, or choose another path"
    return str(e)


def reader_gone() -> int:
    """The reader of our output went away (``... | head``): not an error. Stdout goes to /dev/null so
    that Python's flush at exit does not raise again; exit status 0."""
    import sys

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0

