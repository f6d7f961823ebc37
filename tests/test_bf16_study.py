"""bench.bf16_study at a tiny size: the output's structure, the float32 reference against itself
(float64 products; the per-step and sequence paths' training), and the products it lists against
those the sequence path makes."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from bench import bf16_study
from models.draw import DRAW
from models.fast import native

TINY = dict(steps=3, hidden=8, z_size=3)


def _cfg(attention: bool):
    return bf16_study.train_config(attention, **TINY)


@pytest.mark.parametrize("attention", [False, True])
def test_gemm_part_structure_and_float32_reference(attention):
    r = bf16_study.measure_gemms(attention, rounds=3, batch=4, cfg=_cfg(attention), min_call_s=0.0)
    names = [g["name"] for g in r["gemms"]]
    assert len(names) == len(set(names)) == (12 if attention else 14)
    assert {g["phase"] for g in r["gemms"]} == {"forward", "input-grad", "weight-grad"}
    for g in r["gemms"]:
        for k in ("f32_us", "bf16_us", "cast_in_us", "cast_out_us", "f32_gflops", "bf16_gflops"):
            assert g[k] > 0 and math.isfinite(g[k]), (g["name"], k)
        for k in ("speedup", "speedup_with_conversions"):
            assert g[k]["median"] > 0 and g[k]["iqr"] >= 0
        e = g["rel_err"]
        assert e["f32"] < 1e-5, g  # the float32 product against float64
        assert 1e-4 < e["bf16_inputs"] <= e["bf16"] * 1.5 and e["bf16"] < 2e-2, g
    for k in ("floor_f32_s", "floor_bf16_s", "floor_bf16_conv_s", "step_s", "gemm_fraction", "floor_speedup",
              "floor_speedup_with_conversions", "step_speedup_bound", "step_speedup_bound_with_conversions"):
        assert r[k]["median"] > 0 and r[k]["iqr"] >= 0, k
    assert r["sequence_path"] == (native.library() is not None)
    json.dumps(r)


def test_listed_products_are_the_sequence_paths(one_thread):
    """Every product the sequence path makes in a training step is one of draw_gemms (the count per
    step of each): the emulation counts them, for both models."""
    if native.library() is None:
        pytest.skip("the sequence path needs the native loops")
    for attention in (False, True):
        cfg = _cfg(attention)
        torch.manual_seed(0)
        gemms, _, _ = bf16_study.draw_gemms(DRAW(cfg), 4)
        r = bf16_study.train_fidelity(attention, steps=2, batch=4, cfg=cfg, data="synthetic", window=1,
                                      variants=("f32_step", "bf16_gemm_sequence"), n_valid=1)
        calls = r["variants"]["bf16_gemm_sequence"]["emulated_gemm_calls_per_step"]
        assert sum(calls.values()) == sum(g.count for g in gemms)


@pytest.mark.parametrize("attention", [False, True])
def test_train_part_structure_and_float32_reference(attention, one_thread):
    r = bf16_study.train_fidelity(attention, steps=6, batch=4, cfg=_cfg(attention), data="synthetic", window=3,
                                  n_valid=1)
    assert r["windows"] == [(0, 3), (3, 6)] and r["data"].startswith("synthetic")
    v = r["variants"]
    assert list(v) == list(bf16_study.VARIANTS)
    for name, rec in v.items():
        assert rec["finite"] and len(rec["losses"]) == 6 and len(rec["loss_window_mean"]) == 2
        assert rec["wall_s"]["median"] > 0 and math.isfinite(rec["valid_loss"])
        assert ("wall_over_ref" in rec) == (name != "f32_step")
    ref, seq = v["f32_step"], v["f32_sequence"]
    assert ref["sequence_path"] is False and v["bf16_autocast_step"]["sequence_path"] is False
    assert seq["sequence_path"] == (native.library() is not None)
    # the float32 reference matches itself: the same training through the other path
    assert seq["max_abs_diff_first_10"] <= 1e-4 * abs(ref["loss_first"])
    assert abs(seq["valid_diff"]) <= 1e-3 * abs(ref["valid_loss"])
    assert v["f32_step_seed1"]["max_abs_diff_first_10"] > 0
    json.dumps(r)


def test_train_part_repeats_itself(one_thread):
    a, b = (bf16_study.train_fidelity(False, steps=3, batch=4, cfg=_cfg(False), data="synthetic", window=3,
                                      variants=("f32_step", "f32_sequence"), n_valid=1) for _ in range(2))
    for name in ("f32_step", "f32_sequence"):
        assert a["variants"][name]["losses"] == b["variants"][name]["losses"]


def test_bf16_gemms_mode_rounds_every_product():
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(5, 7, generator=g), torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    exact = a.double() @ b.double()
    want = (a.bfloat16() @ b.bfloat16()).double()
    out = torch.empty(5, 3)
    mode = bf16_study.Bf16Gemms()
    with mode:
        results = [a @ b, torch.mm(a, b), torch.mm(a, b, out=out).clone(), torch.addmm(c, a, b) - c,
                   c.clone().addmm_(a, b) - c]
    for r in results:
        assert r.dtype == torch.float32
        assert torch.allclose(r.double(), want, atol=1e-5), r
    assert (want - exact).abs().max() > 1e-4  # the rounding is visible at all
    assert sum(mode.calls.values()) == 5


def test_cli_writes_json(tmp_path):
    out = tmp_path / "bf16.json"
    res = bf16_study.main(["--model", "noattn", "--steps", "2", "--hidden", "8", "--z-size", "3", "--batch", "4",
                           "--rounds", "1", "--no-step", "--train-steps", "2", "--window", "1", "--data",
                           "synthetic", "--variants", "f32_step", "bf16_autocast_step", "--json", str(out)])
    rec = json.loads(out.read_text())
    assert set(rec) >= {"cpu", "machine", "commit", "gemm", "step", "train"} and "step_s" not in rec["gemm"]["noattn"]
    assert set(rec["train"]["noattn"]["variants"]) == {"f32_step", "bf16_autocast_step"}
    assert res["cpu"]["mkldnn_bf16"] in (True, False)


@pytest.mark.skipif(native.library() is None, reason="the option needs the native CPU loops")
@pytest.mark.parametrize("attention", [False, True])
def test_step_part_times_the_option_against_float32(attention):
    r = bf16_study.measure_step(attention, rounds=2, batch=4, cfg=_cfg(attention))
    assert r["rounds"] == 2 and r["config"]["attention"] is attention
    assert r["f32_s"]["median"] > 0 and r["bf16_s"]["median"] > 0
    rounds = r["per_round_s"]  # the speedup is the median of the rounds' own ratios
    assert r["speedup"]["median"] == pytest.approx(
        statistics.median(a / b for a, b in zip(rounds["f32"], rounds["bf16"])), rel=1e-4)
    assert r["f32_s"]["median"] == pytest.approx(statistics.median(rounds["f32"]), rel=1e-4)
    json.dumps(r)
