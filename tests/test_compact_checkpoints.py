"""Compact checkpoints (bench/checkpoints.py pack/unpack): exact where stored exactly, and a
continuation from bfloat16 Adam moments tracks the uninterrupted run."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench import checkpoints
from bench.training_loop import LoopConfig, train
from test_bench_loop import ToyTask, params


def test_best_weights_equal_to_the_model_are_stored_once_and_restored_exactly(tmp_path):
    model = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    state = {"model": model, "best_state": {k: v.clone() for k, v in model.items()}, "optimizer": None}
    checkpoints.save(tmp_path / "a.pt", state)
    raw = torch.load(tmp_path / "a.pt", weights_only=False)
    assert raw["best_state"] is None and raw["best_is_model"]
    back = checkpoints.load(tmp_path / "a.pt")
    assert all(torch.equal(back["best_state"][k], model[k]) for k in model)
    assert back["best_state"]["w"].data_ptr() != back["model"]["w"].data_ptr()  # a copy, not an alias
    other = dict(state, best_state={"w": model["w"] + 1, "b": model["b"]})
    checkpoints.save(tmp_path / "b.pt", other)
    assert torch.equal(checkpoints.load(tmp_path / "b.pt")["best_state"]["w"], model["w"] + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the model on cuda, its best weights on the CPU")
def test_best_weights_kept_on_the_cpu_compare_with_a_model_on_the_gpu(tmp_path):
    model = {"w": torch.randn(8, 8, device="cuda")}
    checkpoints.save(tmp_path / "a.pt", {"model": model, "best_state": {"w": model["w"].cpu()}, "optimizer": None})
    assert torch.load(tmp_path / "a.pt", weights_only=False)["best_is_model"]


def test_compact_moments_halve_the_optimiser_and_round_trip_within_bf16(tmp_path):
    net = torch.nn.Linear(256, 256)
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(8, 256)).square().sum().backward()
    opt.step()
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "best_state": None}
    checkpoints.save(tmp_path / "full.pt", state)
    checkpoints.save(tmp_path / "compact.pt", state, compact=True)
    full, small = (tmp_path / "full.pt").stat().st_size, (tmp_path / "compact.pt").stat().st_size
    assert small < 0.7 * full
    back = checkpoints.load(tmp_path / "compact.pt")
    for i, st in opt.state_dict()["state"].items():
        for k in ("exp_avg", "exp_avg_sq"):
            got = back["optimizer"]["state"][i][k]
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, st[k], rtol=2 ** -8, atol=0)
        assert torch.equal(back["optimizer"]["state"][i]["step"], st["step"])
    assert all(torch.equal(back["model"][k], v) for k, v in net.state_dict().items())  # weights stay exact


@pytest.mark.parametrize("crash_at", [5, 13])
def test_a_continuation_from_a_compact_checkpoint_tracks_the_uninterrupted_run(tmp_path, crash_at):
    cfg = LoopConfig(epochs=4, lr=0.05, progress=False, compact_checkpoints=True)
    ref = train(ToyTask(), replace(cfg, compact_checkpoints=False), None, log=lambda m: None)

    def crash(step):
        if step == crash_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(ToyTask(), cfg, tmp_path / "c.pt", log=lambda m: None, on_step=crash)
    res = train(ToyTask(), cfg, tmp_path / "c.pt", resume=True, log=lambda m: None)
    assert res.images_seen == ref.images_seen
    drift = (params(res.model) - params(ref.model)).norm() / params(ref.model).norm()
    assert 0 < drift < 1e-2  # close, and honestly not bit-identical
    for a, b in zip(res.curve, ref.curve):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=2e-2)
