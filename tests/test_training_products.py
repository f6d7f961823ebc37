"""The precision of DRAW's training products (models/fast/products.py) on the sequence path.

The operand copies are checked in float64 with float64 copies: every copy is then exact, so any row
the pass casts late, early or never (the copies start as NaN) shows as a difference from the plain
products. bf16 operands are checked against float32 within bf16's rounding."""

from __future__ import annotations

import pytest
import torch

from models.draw import DRAW, DRAWConfig
from models.fast import draw_sequence, native, products
from tests.test_draw_sequence import (CONFIGS, NO_ATTENTION, _data, _grads, _objective,
                                      assert_float64_pass_unchanged_within)

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not native.usable(torch.zeros(1)), reason="needs the native CPU loops")]


@pytest.mark.parametrize("kw", CONFIGS + NO_ATTENTION)
def test_operand_copies_in_the_pass_dtype_change_nothing(kw):
    assert_float64_pass_unchanged_within(kw, products.training(torch.float64))


@pytest.mark.parametrize("attention", [True, False])
def test_bf16_products_track_float32(attention):
    """The paper's model (16 of its 64 steps: CPUs without bf16 emulate the products) at batch 8: the
    loss within 1e-3 relative, each parameter's gradient within 2.5% (Frobenius) of float32's (0.4-0.8%
    measured on AMD EPYC)."""
    torch.manual_seed(0)
    cfg = DRAWConfig(attention=attention, steps=16)
    model = DRAW(cfg)
    x, noise = _data(cfg, 8, torch.float32)
    want, want_g = _grads(model, lambda: _objective(model(x, noise, windows=False)))
    with products.training(torch.bfloat16):
        got, got_g = _grads(model, lambda: _objective(model(x, noise, windows=False)))
    assert torch.isfinite(got) and abs(got - want) <= 1e-3 * abs(want)
    for k in want_g:
        err = (got_g[k] - want_g[k]).norm() / want_g[k].norm().clamp_min(1e-30)
        assert err <= 0.025, (k, float(err))
    assert any((got_g[k] != want_g[k]).any() for k in want_g)  # the setting took effect


def test_evaluation_ignores_the_setting():
    torch.manual_seed(0)
    cfg = DRAWConfig(**CONFIGS[0])
    model = DRAW(cfg)
    x, noise = _data(cfg, 4, torch.float32)
    with torch.no_grad():
        want = model(x, noise, windows=False).loss
        with products.training(torch.bfloat16):
            got = model(x, noise, windows=False).loss
    assert torch.equal(got, want)


def test_check_names_what_is_wrong(monkeypatch):
    assert products.check("float32") is None
    with pytest.raises(ValueError, match="expected one of float32, bfloat16"):
        products.check("fp8")
    monkeypatch.setattr(products, "bf16_supported", lambda: False)
    with pytest.raises(ValueError, match="no native bf16"):
        products.check("bfloat16")
    monkeypatch.setattr(products, "bf16_supported", lambda: True)
    assert products.check("bfloat16") is torch.bfloat16


def test_workspaces_of_each_precision_are_pooled_apart():
    cfg = DRAWConfig(**CONFIGS[0])
    model = DRAW(cfg)
    x, noise = _data(cfg, 3, torch.float32)
    for dtype in (None, torch.bfloat16, None):
        with products.training(dtype):
            _grads(model, lambda: _objective(model(x, noise, windows=False)))
    keys = {k[3] for k in draw_sequence._POOLS[model]}
    assert keys == {None, torch.bfloat16}


def test_bf16_counts_as_native_only_with_an_instruction_for_it(monkeypatch):
    from models.fast import native_cpu

    read = native_cpu.cpu_flags
    assert read("processor : 0\nflags : fpu avx512_bf16\n\nprocessor : 1\n") == {"fpu", "avx512_bf16"}
    assert read("Features : fp asimd bf16\n") == {"fp", "asimd", "bf16"} and read("") == set()
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    for flags, want in (({"avx512f", "avx512bw"}, False), ({"avx512f", "avx512_bf16"}, True),
                        ({"amx_tile", "amx_bf16"}, True), ({"asimd", "bf16"}, True), (set(), False)):
        monkeypatch.setattr(native_cpu, "cpu_flags", lambda f=flags: f)
        assert products.bf16_supported() is want, flags
