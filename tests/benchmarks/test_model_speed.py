"""bench.model_speed: one round at the issue's shapes writes a complete record."""

from __future__ import annotations

import json

import pytest

from bench import model_speed


@pytest.mark.slow
def test_model_speed_writes_every_ratio(tmp_path):
    out = tmp_path / "speed.json"
    model_speed.main(["--model", "classifier", "--threads", "1", "--rounds", "1", "--json", str(out)])
    rec = json.loads(out.read_text())
    r = rec["results"]["classifier-threads1"]
    assert r["fast_s"] > 0 and r["naive_s"] > 0 and r["fast_speedup"] == pytest.approx(r["naive_s"] / r["fast_s"])
    assert ("fast_torch_path_speedup" in r) == rec["native"]
    assert rec["commit"]["sha"] and rec["machine"]["cores"] >= 1


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="one of classifier, draw, draw-noattn, ram; got 'rnn'"):
        model_speed._pair("rnn")
