"""Building to disk: npz + manifest format, reuse, rebuild on hash mismatch, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from datasets import build as B
from datasets import mnist
from datasets import variants as V
from datasets.cli import main
from datasets.generator import GENERATOR_VERSION, NPZ_KEYS

REPO = Path(__file__).resolve().parent.parent
LIMIT = 150


@pytest.fixture()
def built(tmp_path, mnist_data):
    return B.build("twodigit60", 3, tmp_path / "b", limit=LIMIT)


def test_build_writes_npz_and_manifest_that_match_load_split(built):
    assert sorted(p.name for p in built.iterdir() if not p.name.startswith(".")) == [
        "manifest.json", "test.npz", "train.npz", "valid.npz"]
    m = json.loads((built / "manifest.json").read_text())
    assert m["name"] == "twodigit60" and m["seed"] == 3 and m["limit"] == LIMIT
    assert m["generator_version"] == GENERATOR_VERSION and m["mnist_sha256"] == mnist.checksums()
    assert m["spec"] == V.PRESETS["twodigit60"].to_dict()
    assert m["splits"]["valid"]["source_range"] == [50_000, 60_000] and m["splits"]["test"]["mnist_split"] == "test"
    assert all(m["splits"][s]["fixed"] for s in V.SPLITS)
    assert B.verify(built) == []
    for split in V.SPLITS:
        with np.load(built / f"{split}.npz") as z:
            assert sorted(z.files) == sorted(NPZ_KEYS)
            ref = V.load_split("twodigit60", split, seed=3)
            for key in NPZ_KEYS:
                assert np.array_equal(z[key], ref[key][:LIMIT]), (split, key)
                assert m["splits"][split]["arrays"][key]["sha256"] == B.array_sha256(z[key])
        assert np.array_equal(B.load_built(built, split)["labels"], ref["labels"][:LIMIT])


def test_second_build_reuses_the_folder(built):
    before = {p.name: p.stat().st_mtime_ns for p in built.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        B.build("twodigit60", 3, built, limit=LIMIT)
    assert {p.name: p.stat().st_mtime_ns for p in built.iterdir()} == before


@pytest.mark.parametrize("damage", ["pixel", "truncate", "missing"])
def test_mismatching_cache_is_rebuilt_with_a_warning(built, damage):
    good = B.load_built(built, "train")
    path = built / "train.npz"
    if damage == "pixel":
        bad = dict(good)
        bad["images"] = good["images"].copy()
        bad["images"][0, 0, 0] ^= 1
        np.savez(path, **bad)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.unlink()
    assert B.verify(built) != []
    with pytest.raises(mnist.DataError, match="train"):
        B.load_built(built, "train")
    with pytest.warns(B.CacheWarning, match="rebuilding"):
        B.build("twodigit60", 3, built, limit=LIMIT)
    assert B.verify(built) == []
    assert np.array_equal(B.load_built(built, "train")["images"], good["images"])


def test_different_request_rebuilds_without_reusing(built):
    B.build("twodigit60", 4, built, limit=LIMIT)
    m = B.read_manifest(built)
    assert m["seed"] == 4 and B.verify(built) == []
    ref = V.load_split("twodigit60", "test", 4)["images"][:LIMIT]
    assert np.array_equal(B.load_built(built, "test")["images"], ref)


def test_cache_folder_lives_under_the_data_root(tmp_path, monkeypatch, mnist_data):
    (tmp_path / "root").mkdir()
    os.symlink(mnist.mnist_dir(), tmp_path / "root" / "mnist")
    monkeypatch.setenv("GLIMPSE_DATA", str(tmp_path / "root"))
    folder = B.cached_build("binarized", 1, limit=20)
    assert folder == tmp_path / "root" / "built" / f"binarized-1-v{GENERATOR_VERSION}-n20"
    assert B.verify(folder) == []


def test_train_epoch_build_records_fresh(tmp_path, mnist_data):
    folder = B.build("cluttered60", 0, tmp_path / "e", limit=10, epoch=2)
    m = B.read_manifest(folder)
    assert m["train_epoch"] == 2 and m["splits"]["train"]["fixed"] is False and m["splits"]["test"]["fixed"]
    ref = V.plan_split("cluttered60", "train", 0, epoch=2)[1]
    assert np.array_equal(B.load_built(folder, "train")["digit_xy"], ref.digit_xy[:10])


def test_cli_build_and_show(tmp_path, mnist_data, capsys):
    assert main(["build", "translated60", "--seed", "2", "--out", str(tmp_path / "t"), "--limit", "40"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "t")
    assert B.verify(tmp_path / "t") == [] and B.read_manifest(tmp_path / "t")["seed"] == 2
    png = tmp_path / "grid.png"
    assert main(["show", "twodigit60", "--n", "9", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    with pytest.raises(SystemExit) as e:
        main(["build", "translated60", "--limit", "0", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "--limit: '0' must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_python_m_datasets_entry_point(tmp_path, mnist_data):
    out = subprocess.run([sys.executable, "-m", "datasets", "build", "binarized", "--seed", "1", "--limit", "5",
                          "--out", str(tmp_path / "bin")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "bin" / "valid.npz") as z:
        assert set(np.unique(z["images"])) <= {0, 255} and z["images"].shape == (5, 28, 28)
    bad = subprocess.run([sys.executable, "-m", "datasets", "build", "cluttered7"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "invalid choice: 'cluttered7'" in bad.stderr
