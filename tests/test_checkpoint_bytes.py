"""Lossless checkpoint compression (bench/checkpoint_bytes.py): the same bits back, smaller files for
trained-like weights, a damaged file named as such, and the training loop's lasting saves using it."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from bench import checkpoint_bytes, checkpoints
from bench.training_loop import LoopConfig, train
from bench.schedule import Schedule
from test_bench_loop import ToyTask, stopped_at

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int32, torch.uint8,
          torch.bool]


@st.composite
def tensors(draw):
    shape = draw(st.lists(st.integers(0, 5), min_size=0, max_size=3))
    dtype = draw(st.sampled_from(DTYPES))
    n = 1
    for d in shape:
        n *= d
    raw = draw(st.binary(min_size=n * torch.empty((), dtype=dtype).element_size(),
                         max_size=n * torch.empty((), dtype=dtype).element_size()))
    # any bit pattern, NaN payloads and subnormals included (bool: only 0 and 1 are valid)
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    if dtype == torch.bool:
        return (t % 2).bool().reshape(shape)
    return t.view(dtype).reshape(shape)


states = st.recursive(st.one_of(tensors(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                                st.none()),
                      lambda kids: st.one_of(st.lists(kids, max_size=3), st.tuples(kids, kids),
                                             st.dictionaries(st.text(max_size=4), kids, max_size=3)),
                      max_leaves=8)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=4), states, max_size=4))
def test_compression_gives_back_the_same_bits(state):
    data = checkpoint_bytes.compress(state)
    assert checkpoint_bytes.is_compressed(data)
    assert checkpoint_bytes.same_bits(checkpoint_bytes.decompress(data), state)


def test_non_contiguous_and_zero_dim_tensors_come_back_as_they_read():
    base = torch.randn(6, 4)
    state = {"t": base.t(), "slice": base[::2, 1:], "step": torch.tensor(3.0), "view": base.view(torch.int32)}
    back = checkpoint_bytes.decompress(checkpoint_bytes.compress(state))
    assert checkpoint_bytes.same_bits(back, {k: v.contiguous() for k, v in state.items()})
    assert not checkpoint_bytes.same_bits(back, {**back, "step": torch.tensor(3.0, dtype=torch.float64)})
    nan, other_nan = torch.tensor([float("nan")]), torch.tensor([0x7FC00001], dtype=torch.int32).view(torch.float32)
    assert not checkpoint_bytes.same_bits(nan, other_nan)  # bits, not values


def test_trained_like_weights_compress_better_than_plain_zlib(tmp_path):
    """Gaussian float32 weights (trained ones gain more): the byte planes beat git's zlib on the plain file."""
    import zlib

    g = torch.Generator().manual_seed(0)
    state = {"w": torch.randn(512, 256, generator=g) * 0.05, "m": (torch.randn(512, 256, generator=g) * 1e-3)}
    checkpoints.save(tmp_path / "plain.pt", state)
    checkpoints.save(tmp_path / "small.pt", state, compress=True)
    in_git = len(zlib.compress((tmp_path / "plain.pt").read_bytes(), 6))
    assert (tmp_path / "small.pt").stat().st_size < 0.95 * in_git
    assert checkpoint_bytes.same_bits(checkpoints.load(tmp_path / "small.pt"), checkpoints.load(tmp_path / "plain.pt"))


def test_a_damaged_compressed_checkpoint_is_named_as_such(tmp_path):
    path = tmp_path / "c.pt"
    checkpoints.save(path, {"w": torch.randn(64, 64)}, compress=True)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match=r"c\.pt: unreadable checkpoint \(LZMAError"):
        checkpoints.load(path)


def test_the_loop_compresses_the_states_that_last_and_resumes_from_them(tmp_path):
    """Interrupted: the checkpoint it leaves is compressed, and so is the state where the decay began;
    the run resumed from them ends as the uninterrupted one (the resume tests check that in depth)."""
    from test_bench_loop import params

    cfg = LoopConfig(epochs=3, lr=0.05, progress=False, batches_per_epoch=6,
                     schedule=Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0))
    whole = train(ToyTask(), cfg, tmp_path / "whole.pt", log=lambda m: None)
    assert checkpoint_bytes.is_compressed((tmp_path / "whole.pt").read_bytes())  # the end of the run
    path = stopped_at(15, ToyTask(), cfg, tmp_path / "run.pt")
    assert checkpoint_bytes.is_compressed(path.read_bytes())
    assert checkpoint_bytes.is_compressed((tmp_path / "run.stable.pt").read_bytes())
    again = train(ToyTask(), cfg, path, resume=True, log=lambda m: None)
    assert torch.equal(params(again.model), params(whole.model))


def test_the_script_compresses_an_uncompressed_checkpoint_in_place(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "compress_checkpoints.py"
    spec = importlib.util.spec_from_file_location("compress_checkpoints", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    path = tmp_path / "run.pt"
    train(ToyTask(), LoopConfig(epochs=1, lr=0.05, progress=False), path, log=lambda m: None)
    checkpoints.save(path, checkpoints.load(path))  # as a harness without compression wrote it
    before = checkpoints.load(path)
    assert mod.main([str(path)]) == 0
    assert checkpoint_bytes.is_compressed(path.read_bytes())
    assert checkpoint_bytes.same_bits(checkpoints.load(path), before)
    assert mod.main([str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("run.pt: compressed already")
    with pytest.raises(SystemExit, match="no such file"):
        mod.main([str(tmp_path / "missing.pt")])


def test_same_bits_takes_nans_by_their_bits():
    """A curve may hold a NaN (a diverged validation) and NumPy arrays may too: a lossless copy is the same."""
    import numpy as np

    state = {"curve": [{"valid_error": float("nan")}], "rng": np.array([np.nan, 1.0])}
    assert checkpoint_bytes.same_bits(checkpoint_bytes.decompress(checkpoint_bytes.compress(state)), state)
    assert not checkpoint_bytes.same_bits({"v": float("nan")}, {"v": 0.0})
    assert not checkpoint_bytes.same_bits({"v": 1.0}, {"v": 1})  # another type
    assert not checkpoint_bytes.same_bits(np.array([1.0, 2.0]), np.array([1.0, 2.5]))
    assert not checkpoint_bytes.same_bits(np.array([1.0], dtype=np.float32), np.array([1.0]))


def test_the_script_finds_new_and_changed_checkpoints_but_not_deleted_or_renamed_away(tmp_path):
    import importlib.util
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "scripts" / "compress_checkpoints.py"
    spec = importlib.util.spec_from_file_location("compress_checkpoints", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ck = tmp_path / "results" / "checkpoints"
    ck.mkdir(parents=True)
    for name in ("gone.pt", "old.pt", "kept.pt", "c d.pt"):
        (ck / name).write_bytes(b"0")
    git = lambda *a: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path,  # noqa
                                    check=True, capture_output=True)
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    git("rm", "-q", "results/checkpoints/gone.pt")
    git("mv", "results/checkpoints/old.pt", "results/checkpoints/new.pt")
    (ck / "c d.pt").write_bytes(b"1")
    (ck / "fresh.pt").write_bytes(b"2")
    mod.REPO = tmp_path
    assert [p.name for p in mod.changed_checkpoints()] == ["c d.pt", "fresh.pt", "new.pt"]
