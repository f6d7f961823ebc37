"""Build a variant to disk: ``DIR/{train,valid,test}.npz`` + ``DIR/manifest.json``, and a cache of builds.

The manifest holds the parameters, seed, generator version, MNIST checksums and the SHA-256,
dtype and shape of every array. It is written last (atomically, like every file), so a folder
whose manifest is present and whose arrays match it is a complete build. A build folder that
matches the request is reused; one whose arrays do not match their hashes is rebuilt, with a
warning, and never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from datasets import mnist
from datasets.fileio import atomic_write, file_lock
from datasets.generator import GENERATOR_VERSION, NPZ_KEYS, Plan, Spec
from datasets.variants import SPLITS, check_seed, generate_split, get_spec, is_fixed, plan_split, variant_name

MANIFEST = "manifest.json"
FORMAT = "glimpse-mnist-variant"


class CacheWarning(UserWarning):
    """A cached build did not match its manifest and is being rebuilt."""


def array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).reshape(-1).view(np.uint8)).hexdigest()


def describe(a: np.ndarray) -> dict:
    return {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": array_sha256(a)}


def expected_header(spec: Spec, seed: int, limit: int | None, epoch: int | None, name: str) -> dict:
    """The manifest fields that identify a build (everything except the array hashes)."""
    return {
        "format": FORMAT,
        "generator_version": GENERATOR_VERSION,
        "name": name,
        "spec": spec.to_dict(),
        "seed": int(seed),
        "limit": None if limit is None else int(limit),
        "train_epoch": None if epoch is None else int(epoch),
        "mnist_sha256": mnist.checksums(),
    }


def read_manifest(folder: str | os.PathLike) -> dict | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def verify(folder: str | os.PathLike) -> list[str]:
    """Problems found in a build folder (empty when every array matches the manifest)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return [f"{folder / MANIFEST} is missing or unreadable"]
    problems = []
    for split, entry in manifest.get("splits", {}).items():
        path = folder / entry["file"]
        try:
            arrays = _load_npz(path)
        except Exception as e:  # noqa: BLE001 - any unreadable file is a problem to report
            problems.append(f"{path}: cannot be read ({e})")
            continue
        for key, want in entry["arrays"].items():
            if key not in arrays:
                problems.append(f"{path}: array {key!r} is missing")
            elif describe(arrays[key]) != want:
                problems.append(f"{path}: array {key!r} does not match its SHA-256/shape in the manifest")
    if sorted(manifest.get("splits", {})) != sorted(SPLITS):
        problems.append(f"{folder / MANIFEST}: splits {sorted(manifest.get('splits', {}))}, expected {sorted(SPLITS)}")
    return problems


def build(name: str | Spec, seed: int, out: str | os.PathLike, data_dir: str | os.PathLike | None = None,
          limit: int | None = None, epoch: int | None = None, force: bool = False,
          log=None) -> Path:
    """Write the three splits and the manifest into ``out``; reuse ``out`` if it already holds this build.

    ``limit`` keeps the first N examples of each split (quick runs); ``epoch`` picks train's
    fresh epoch instead of the fixed train set.
    """
    spec = get_spec(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
    check_seed(seed, epoch)  # refused input creates nothing, not even the lock
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise mnist.DataError(f"{out} is a file, not a build folder; choose another output folder")
    header = expected_header(spec, seed, limit, epoch, variant_name(name))
    out.mkdir(parents=True, exist_ok=True)
    with file_lock(out / ".lock"):
        old = read_manifest(out)
        if old is not None and not force and {k: old.get(k) for k in header} == header:
            problems = verify(out)
            if not problems:
                if log:
                    log(f"{out}: up to date")
                return out
            warnings.warn(f"{out}: cached build does not match its manifest ({problems[0]}"
                          f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); rebuilding",
                          CacheWarning, stacklevel=2)
        with contextlib.suppress(FileNotFoundError):
            (out / MANIFEST).unlink()  # the folder is incomplete until the new manifest lands
        splits = {}
        for split in SPLITS:
            split_epoch = epoch if split == "train" else None
            spec_, plan, images = plan_split(spec, split, seed, split_epoch, data_dir)
            if limit is not None:
                plan = _head(plan, limit)
            arrays = generate_split(spec_, plan, images)
            atomic_write(out / f"{split}.npz", lambda f, a=arrays: np.savez(f, **a))
            mnist_split, lo, hi = SPLITS[split]
            splits[split] = {
                "file": f"{split}.npz",
                "n": int(arrays["images"].shape[0]),
                "mnist_split": mnist_split,
                "source_range": [lo, hi],
                "fixed": is_fixed(spec, split, split_epoch),
                "arrays": {k: describe(arrays[k]) for k in NPZ_KEYS},
            }
            if log:
                log(f"{out / (split + '.npz')}: {splits[split]['n']} images")
            del arrays
        manifest = {**header, "splits": splits}
        text = (json.dumps(manifest, indent=1) + "\n").encode()
        atomic_write(out / MANIFEST, lambda f: f.write(text))
    return out


def _head(plan: Plan, n: int) -> Plan:
    sl = slice(0, min(n, len(plan)))
    return replace(plan, **{k: getattr(plan, k)[sl] for k in NPZ_KEYS[1:]})


def cache_dir(name: str | Spec, seed: int, data_dir: str | os.PathLike | None = None,
              limit: int | None = None, epoch: int | None = None) -> Path:
    tag = f"{variant_name(name)}-{int(seed)}-v{GENERATOR_VERSION}"
    tag += "" if limit is None else f"-n{int(limit)}"
    tag += "" if epoch is None else f"-e{int(epoch)}"
    return mnist.data_root(data_dir) / "built" / tag


def cached_build(name: str | Spec, seed: int = 0, data_dir: str | os.PathLike | None = None,
                 limit: int | None = None, epoch: int | None = None, log=None) -> Path:
    """The build folder under ``<data root>/built/``, building or rebuilding it when needed."""
    return build(name, seed, cache_dir(name, seed, data_dir, limit, epoch), data_dir, limit, epoch, log=log)


def load_built(folder: str | os.PathLike, split: str, check: bool = True) -> dict[str, np.ndarray]:
    """Read one split of a build folder, checking every array against the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or split not in manifest.get("splits", {}):
        raise mnist.DataError(f"{folder} holds no complete build with split {split!r}; run `python -m datasets build`")
    entry = manifest["splits"][split]
    try:
        arrays = _load_npz(folder / entry["file"])
    except Exception as e:  # noqa: BLE001 - missing, truncated or not an npz
        raise mnist.DataError(f"{folder / entry['file']} cannot be read ({e}); rebuild it with "
                              "`python -m datasets build`") from e
    if check:
        for key, want in entry["arrays"].items():
            if key not in arrays or describe(arrays[key]) != want:
                raise mnist.DataError(f"{folder / entry['file']}: array {key!r} does not match the manifest; "
                                      "rebuild it with `python -m datasets build`")
    return arrays
