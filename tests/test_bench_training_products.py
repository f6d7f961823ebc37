"""`bench run --training-products`: DRAW trained with bf16 products in some sittings and float32 in
others; each sitting and each unit say which, the tables too; what cannot be honoured is refused."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bench import records, runner, suites, tables
from bench.optim import Optim
from bench.suites import DrawJob, Suite
from models.draw import DRAWConfig
from models.fast import native, products

pytestmark = pytest.mark.skipif(not native.usable(torch.zeros(1)), reason="needs the native CPU loops")

TINY_DRAW = Suite(
    name="tinydraw", description="test suite", expected="seconds",
    jobs=(DrawJob(model=DRAWConfig(steps=3, enc_hidden=8, dec_hidden=8, z_size=4), optim=Optim(batch_size=16),
                  epochs=1, train_limit=64, valid_limit=32, test_limit=32, iwae_k=4, iwae_limit=16, samples=0),),
)
UNIT = "draw-binarized-attn-T3-s0"


@pytest.fixture
def tiny(monkeypatch, tmp_path, mnist_data):
    monkeypatch.setitem(suites.SUITES, "tinydraw", TINY_DRAW)
    monkeypatch.setattr(products, "bf16_supported", lambda: True)  # emulated where the CPU has none: slow, exact

    def opts(**kw):
        return runner.RunOptions(suite="tinydraw", out=str(tmp_path / "run.json"), threads=1, progress=False,
                                 checkpoint_dir=str(tmp_path / "ckpt"), **kw)

    return opts


def test_a_record_trained_partly_with_bf16_products_says_so(tiny, tmp_path):
    runner.run(tiny(), log=lambda m: None)
    rec, path = runner.run(tiny(resume=True, epochs=2, training_products="bfloat16"), log=lambda m: None)
    assert products.training_dtype() is None  # the setting ends with the run
    assert [s["training_products"] for s in rec["segments"]] == ["float32", "bfloat16"]
    assert rec["jobs"][UNIT]["training_products"] == {"float32": 64, "bfloat16": 64}
    assert rec["jobs"][UNIT]["images_seen"] == 128
    row = tables.markdown(path)
    assert "training products bfloat16 50% of images (evaluated in float32)" in row
    assert rec["status"] == "complete" and records.read(path)["segments"][1]["training_products"] == "bfloat16"


def test_float32_rows_say_nothing_of_it(tiny):
    rec, path = runner.run(tiny(), log=lambda m: None)
    assert rec["jobs"][UNIT]["training_products"] == {"float32": 64}
    assert "training products" not in tables.markdown(path)


def test_what_cannot_be_honoured_is_refused(tiny, monkeypatch):
    with pytest.raises(runner.SettingError, match="expected one of float32, bfloat16"):
        runner.run(tiny(training_products="fp8"), log=lambda m: None)
    learned = replace(TINY_DRAW.jobs[0], model=replace(TINY_DRAW.jobs[0].model, initial_state="learned"))
    monkeypatch.setitem(suites.SUITES, "tinydraw", replace(TINY_DRAW, jobs=(learned,)))
    with pytest.raises(runner.SettingError, match="initial_state 'learned' trains on the per-step path"):
        runner.run(tiny(training_products="bfloat16"), log=lambda m: None)
    monkeypatch.setattr(products, "bf16_supported", lambda: False)
    with pytest.raises(runner.SettingError, match="no native bf16 matrix products"):
        runner.run(tiny(training_products="bfloat16"), log=lambda m: None)
    assert products.training_dtype() is None


@pytest.mark.parametrize("supported", [True, False])
def test_auto_takes_bf16_where_it_would_be_accepted(tiny, monkeypatch, supported):
    monkeypatch.setattr(products, "bf16_supported", lambda: supported)
    rec, _ = runner.run(tiny(training_products="auto"), log=lambda m: None)
    name = "bfloat16" if supported else "float32"
    assert rec["segments"][0]["training_products"] == name
    assert rec["jobs"][UNIT]["training_products"] == {name: 64}
