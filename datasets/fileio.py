"""Atomic file writes and a cross-process lock: the one implementation every package uses.

A write goes to a temporary file in the target's folder, is fsynced, then renamed over the
target, so a crash, a kill or a full disk leaves either the old file or the new one, never half
of one. A failed write raises WriteError, which names the file and says the old one is intact.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


class WriteError(OSError):
    """Writing a file failed (disk full, read-only, no permission); the previous file is unchanged."""

    def __str__(self) -> str:
        return (f"cannot write {self.filename} ({self.strerror}); any previous version of it is unchanged. "
                "Free some space or choose another path")


def _open_temp(fd: int) -> BinaryIO:
    """The temporary file's writer (a seam for tests that simulate a full disk)."""
    return os.fdopen(fd, "wb")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], mode: int | None = None) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, rename over ``path``.

    ``mode``: permission bits for the result (default: 0o666 less the umask, as for ``open``;
    mkstemp alone would leave 0o600)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise WriteError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with _open_temp(fd) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno is not None:
            raise WriteError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> Path:
    return atomic_write(path, lambda f: f.write(data))


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """An exclusive advisory lock (flock) held for the duration of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
