"""Run records: one JSON file per run, stamped with commit, machine, config and seeds.

Two places hold records, each with its own index:

    runs/records/<machine-id>/<utc-time>_<short-sha>.json     a user's runs (git-ignored; the default)
    runs/index.csv                                             one row per record there
    results/runs/<machine-id>/<utc-time>_<short-sha>.json     the committed reference results
    results/index.csv                                          one row per record there

Reference records are written only when asked for (``bench run --reference`` or an ``--out``
under results/). A dry run's record is flagged (``config.dry_run``, see :func:`is_dry_run`);
its metrics are left out of comparisons, tables and plots.

``load_all(path)`` is the one documented call: every metric of every record under ``path`` as
one pandas DataFrame (a row per metric, with the record's suite, status, commit and machine).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from datasets.fileio import atomic_write_bytes, file_lock

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"  # committed reference results
# a user's runs, reports and checkpoints: runs/ (git-ignored), or $GLIMPSE_RUNS (the tests use their own)
RUNS = Path(os.environ["GLIMPSE_RUNS"]).expanduser().resolve() if os.environ.get("GLIMPSE_RUNS") else REPO / "runs"
STATUSES = ("complete", "incomplete", "failed")
REQUIRED = ("schema_version", "suite", "started_at", "finished_at", "status", "commit", "machine",
            "config", "seeds", "metrics", "curves")
METRIC_KEYS = ("name", "value", "unit", "lower_is_better", "seed", "params")
INDEX_COLUMNS = ("path", "suite", "status", "started_at", "finished_at", "sha", "dirty", "machine_id",
                 "device", "seeds", "metrics")


class RecordError(ValueError):
    """A record that does not follow the schema; the message names the field."""


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- provenance

def commit_info(repo: Path = REPO) -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        changed = git("diff", "HEAD", "--name-only", "--no-renames").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "short": "nogit", "dirty": None}
    return {"sha": sha, "short": sha[:8], **dirty_state(changed)}


RESULTS_DIR = "results/"
DIRTY_PATHS_KEPT = 20


def dirty_state(changed: list[str]) -> dict:
    """Whether the checkout a run used differs from its commit: any tracked file (code, docs) but those
    under ``results/``, which the long runs beside it rewrite (records and checkpoints, no code).
    ``dirty_paths`` names the first changed files; ``results_changed`` counts those left out."""
    code = sorted(p for p in changed if not p.startswith(RESULTS_DIR))
    return {"dirty": bool(code), "dirty_paths": code[:DIRTY_PATHS_KEPT],
            "results_changed": len(changed) - len(code)}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector and matrix units that decide the speed of the models' products (docs/performance.md)
CPU_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")


def cpu_identity(cpuinfo: str | None = None) -> dict:
    """Vendor, family, model and stepping, and the relevant features, of the first CPU in /proc/cpuinfo.
    Virtual machines often mask the model name ("AMD EPYC"); family and model still tell CPU generations
    apart (AMD family 25 is Zen 3/4, family 26 Zen 5), and those differ in speed. {} off Linux."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor only
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if not fields:
        return {}

    def number(key: str) -> int | None:
        return int(fields[key]) if fields.get(key, "").isdigit() else None

    flags = set(fields.get("flags", "").split())
    return {"vendor": fields.get("vendor_id"), "family": number("cpu family"), "model": number("model"),
            "stepping": number("stepping"), "features": [f for f in CPU_FEATURES if f in flags]}


def cpu_label(machine: dict) -> str:
    """', family 25 model 17, avx512_bf16' for a record's machine on a CPU: what tells generations apart
    behind a masked model name; '' on other devices or for records made before it was kept."""
    cpu = machine.get("cpu") or {}
    if machine.get("device", "cpu") != "cpu" or cpu.get("family") is None:
        return ""
    low_precision = [f for f in cpu.get("features", []) if f in ("avx512_bf16", "amx_bf16", "avx512_fp16")]
    return f", family {cpu['family']} model {cpu['model']}" + "".join(f", {f}" for f in low_precision)


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "unknown"


def machine_info(device: str = "cpu", threads: int | None = None, world_size: int = 1,
                 backend: str | None = None) -> dict:
    import torch

    cuda = torch.version.cuda
    device_name = _cpu_model()
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    cores = _cores()
    info = {
        "cpu_model": _cpu_model(), "cpu": cpu_identity(), "cores": cores,
        "threads": threads or torch.get_num_threads(),
        "memory_gb": _memory_gb(), "torch": torch.__version__, "cuda": cuda,
        "device": device, "device_name": device_name, "python": platform.python_version(),
        "platform": platform.platform(terse=True), "world_size": world_size, "backend": backend,
    }
    kind = slug(device_name) if device.startswith("cuda") else f"{slug(info['cpu_model'])}-{cores}c"
    info["id"] = f"{device.split(':')[0]}-{kind}"
    return info


# ---------------------------------------------------------------- metrics and records

def metric(name: str, value: float, unit: str, lower_is_better: bool | None, seed: int | None = None,
           stats: dict | None = None, **params: Any) -> dict:
    m = {"name": name, "value": float(value), "unit": unit, "lower_is_better": lower_is_better,
         "seed": seed, "params": params}
    if stats is not None:
        m["stats"] = stats
    return m


def new_record(suite: str, config: dict, seeds: list[int], machine: dict, command: list[str] | None = None) -> dict:
    return {
        "schema_version": SCHEMA_VERSION, "suite": suite, "started_at": utc_now(), "finished_at": None,
        "status": "incomplete", "commit": commit_info(), "machine": machine, "config": config,
        "seeds": list(seeds), "metrics": [], "curves": {}, "jobs": {}, "command": command or [],
        "notes": [], "error": None,
    }


def validate(record: dict, where: str = "record") -> dict:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a JSON {type(record).__name__}, not a run record; give a record written by "
                          "python -m bench")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}")
    if record["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{where}: schema_version {record['schema_version']!r}, this harness reads "
                          f"{SCHEMA_VERSION}; regenerate the record or upgrade the harness")
    if record["status"] not in STATUSES:
        raise RecordError(f"{where}: status {record['status']!r} is not one of {STATUSES}")
    if not isinstance(record["metrics"], list):
        raise RecordError(f"{where}: metrics must be a list")
    for i, m in enumerate(record["metrics"]):
        if not isinstance(m, dict):
            raise RecordError(f"{where}: metrics[{i}] must be an object")
        absent = [k for k in METRIC_KEYS if k not in m]
        if absent:
            raise RecordError(f"{where}: metrics[{i}] lacks {absent}")
        if not isinstance(m["params"], dict):
            raise RecordError(f"{where}: metrics[{i}].params must be an object")
    return record


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def dumps(record: dict) -> str:
    def clean(x):
        if isinstance(x, float) and not math.isfinite(x):
            return None  # JSON has no NaN/inf
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(record), indent=1, default=_json_default) + "\n"


def records_dir(reference: bool = False) -> Path:
    """Where records go by default: runs/records/ (git-ignored), or results/runs/ for reference results."""
    return RESULTS / "runs" if reference else RUNS / "records"


def report_dir(reference: bool = False) -> Path:
    return (RESULTS if reference else RUNS) / "report"


def default_records(reference: bool = False) -> Path:
    """The records `bench tables` and `bench report` read by default: the user's own when there are
    any, else the committed reference records."""
    mine = records_dir(False)
    if not reference and mine.is_dir() and any(mine.rglob("*.json")):
        return mine
    return records_dir(True)


def is_dry_run(record: dict) -> bool:
    """A dry run trains one batch and times one call: its figures are not measurements."""
    return bool(record.get("config", {}).get("dry_run"))


def default_path(record: dict, folder: Path | None = None) -> Path:
    folder = records_dir() if folder is None else folder
    stamp = record["started_at"].replace("-", "").replace(":", "")
    return folder / record["machine"]["id"] / f"{stamp}_{record['commit']['short']}.json"


def claim(record: dict, path: Path) -> Path:
    """Write a new ``record`` at ``path``, a default path, or where a file is there already (a run
    started in the same second on this machine and commit) at ``path`` with -2, -3, ... after its stem.
    The name is taken atomically (a hard link, which fails on an existing file), so two runs never
    share a record file. Returns the path written."""
    validate(record, str(path))
    from datasets.fileio import atomic_write_bytes

    tmp = atomic_write_bytes(path.with_name(f".{path.name}.claim-{os.getpid()}"), dumps(record).encode())
    os.chmod(tmp, 0o644)
    try:
        for n in range(1, 1000):
            candidate = path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")
            try:
                os.link(tmp, candidate)
                return candidate
            except FileExistsError:
                continue
            except OSError:  # no hard links on this file system: create exclusively, then write
                try:
                    os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                except FileExistsError:
                    continue
                return write(record, candidate)
    finally:
        tmp.unlink(missing_ok=True)
    raise RecordError(f"{path}: 999 records of this name exist already; give the record a path with --out")


def lock_path(record_path: str | Path) -> Path:
    """The lock that sittings writing one record file take (in the temporary folder: nothing to commit)."""
    key = hashlib.sha256(str(Path(record_path).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"glimpse-record-{key}.lock"


def write(record: dict, path: str | Path) -> Path:
    """Write ``record`` atomically to ``path``."""
    path = Path(path)
    validate(record, str(path))
    atomic_write_bytes(path, dumps(record).encode())
    os.chmod(path, 0o644)  # the temporary file was private; a record is for everyone to read
    return path


def read(path: str | Path) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record; check the path") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path}: not valid JSON ({e}); it is truncated or not a run record") from None
    except OSError as e:
        raise RecordError(f"{path}: cannot be read ({e.strerror or e}); give a readable record file") from None
    return validate(record, str(path))


def find(path: str | Path) -> list[Path]:
    """The record files at ``path`` (a record, or every *.json below a folder), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
    raise RecordError(f"{path}: no such record or folder; check the path")


# ---------------------------------------------------------------- the index and the DataFrame

def index_row(record: dict, path: Path, root: Path) -> dict:
    try:
        rel = str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        rel = str(path)
    return {"path": rel, "suite": record["suite"], "status": record["status"], "started_at": record["started_at"],
            "finished_at": record["finished_at"], "sha": record["commit"].get("sha"),
            "dirty": record["commit"].get("dirty"), "machine_id": record["machine"].get("id"),
            "device": record["machine"].get("device"), "seeds": " ".join(map(str, record["seeds"])),
            "metrics": len(record["metrics"])}


def index_root(path: Path) -> Path | None:
    """The place (runs/ or results/) whose index lists the record at ``path``; None outside both."""
    for root in (RUNS, RESULTS):
        try:
            Path(path).resolve().relative_to(root.resolve())
            return root
        except ValueError:
            continue
    return None


def update_index(path: Path, record: dict, root: Path | None = None) -> Path | None:
    """Add or replace ``path``'s row in ``root/index.csv`` (under a lock; atomic rewrite). ``root``
    defaults to the place holding ``path`` (:func:`index_root`); outside both, nothing is indexed."""
    import csv
    import io

    root = index_root(path) if root is None else root
    if root is None:
        return None
    index = root / "index.csv"
    row = index_row(record, path, root)
    with file_lock(root / ".index.lock"):
        rows = []
        if index.exists():
            with open(index, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["path"] != row["path"]]
        rows.append(row)
        rows.sort(key=lambda r: (r["started_at"], r["path"]))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=INDEX_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(index, buf.getvalue().encode())
        os.chmod(index, 0o644)
    return index


def rebuild_index(root: Path | None = None) -> Path:
    """Rewrite ``root/index.csv`` (default results/) from the records under root/runs or root/records."""
    root = RESULTS if root is None else root
    index = root / "index.csv"
    index.unlink(missing_ok=True)
    for sub in ("runs", "records"):
        for p in find(root / sub) if (root / sub).is_dir() else []:
            update_index(p, read(p), root)
    return index


def metric_row(base: dict, m: dict) -> dict:
    """One metric as a row of `load_all`: the record's columns ``base``, the metric's fields, a ``p_<key>``
    column per parameter, and median/q1/q3 where it has repeat statistics."""
    row = {**base, **{k: m[k] for k in ("name", "value", "unit", "lower_is_better", "seed")}}
    row.update({f"p_{k}": v for k, v in m["params"].items()})
    for k in ("median", "q1", "q3"):
        if k in m.get("stats", {}):
            row[k] = m["stats"][k]
    return row


def load_all(path: str | Path = RESULTS / "runs"):
    """Every metric of every record under ``path`` as one pandas DataFrame.

    Columns: record, suite, status, dry_run, started_at, sha, dirty, machine_id, device, name, value,
    unit, lower_is_better, seed, one ``p_<key>`` column per metric parameter, and median/q1/q3 where a
    metric has repeat statistics.
    """
    import pandas as pd

    rows = []
    for p in find(path):
        r = read(p)
        base = {"record": str(p), "suite": r["suite"], "status": r["status"], "dry_run": is_dry_run(r),
                "started_at": r["started_at"],
                "sha": r["commit"].get("sha"), "dirty": r["commit"].get("dirty"),
                "machine_id": r["machine"].get("id"), "device": r["machine"].get("device")}
        rows += [metric_row(base, m) for m in r["metrics"]]
    cols = ["record", "suite", "status", "dry_run", "started_at", "sha", "dirty", "machine_id", "device", "name",
            "value", "unit", "lower_is_better", "seed"]
    return pd.DataFrame(rows, columns=None if rows else cols)


def deviations(record: dict) -> str:
    """'name=value,...' of the settings a record's run changed from its suite's recipe (`bench run --set`),
    '' for a run of the suite as it is."""
    changed = record.get("config", {}).get("options", {}).get("settings") or {}
    return ",".join(f"{k}={v}" for k, v in changed.items())

