"""The gate's arithmetic and baselines (bench/perf_gate.py), without timing anything."""

from __future__ import annotations

import json

import pytest
import torch

from bench import perf_gate, records


def test_bound_uses_this_cpus_baseline_plus_tolerance():
    base = {"cpu A": {"draw-1t": {"factor": 1.3}}}
    limit, why = perf_gate.bound("draw-1t", base, "cpu A")
    assert limit == pytest.approx(1.3 * (1 + perf_gate.TOLERANCE))
    assert "baseline" in why
    limit, why = perf_gate.bound("draw-1t", base, "cpu B [avx2] native")
    assert limit == perf_gate.LOOSE_BOUND["draw-1t"] and "--record" in why
    limit, _ = perf_gate.bound("draw-1t", base, "cpu B [avx2] torch")  # the PyTorch path: no native loops
    assert limit == perf_gate.LOOSE_BOUND_TORCH_PATH["draw-1t"] > perf_gate.LOOSE_BOUND["draw-1t"]


@pytest.mark.parametrize("factor, ok", [(1.3, True), (1.3 * 1.1, True), (1.3 * 1.25, False)])
def test_judge_fails_a_quarter_slower_step(factor, ok):
    base = {"k": {"classifier-1t": {"factor": 1.3}}}
    m = {"gate": "classifier-1t", "step_s": factor * 0.05, "floor_s": 0.05, "factor": factor}
    assert perf_gate.judge(m, base, "k")[0] is ok


def test_tolerance_leaves_room_for_noise_and_catches_25_percent():
    assert 0.05 <= perf_gate.TOLERANCE <= 0.2


def test_planted_slowdown_spins_for_its_fraction():
    calls = []
    model = torch.nn.Linear(2, 1)
    clock_values = iter([0.0, 1.0, 1.0, 1.0, 1.2, 1.3])  # t0, work ends at 1.0, then the spin polls

    def clock():
        calls.append(1)
        return next(clock_values)

    step = perf_gate.train_stepper(model, lambda: model(torch.ones(1, 2)).sum(), slowdown=0.25, clock=clock)
    step()  # spins until clock >= 1.0 + 0.25 * 1.0
    assert len(calls) == 6


def test_record_writes_a_baseline_for_this_cpu(tmp_path, monkeypatch):
    factors = iter([1.2, 1.4, 1.3] * 3)
    monkeypatch.setattr(perf_gate, "measure", lambda name: {"gate": name, "factor": next(factors)})
    path = tmp_path / "baselines.json"
    path.write_text(json.dumps({"other cpu": {"draw-1t": {"factor": 9.0}}}))
    entry = perf_gate.record(repeats=3, path=path)
    data = json.loads(path.read_text())
    assert data["other cpu"] == {"draw-1t": {"factor": 9.0}}  # other CPUs' baselines are kept
    assert data[perf_gate.cpu_key()] == entry
    assert entry["draw-1t"]["factor"] == 1.3 and entry["draw-1t"]["min"] == 1.2


def test_cpu_key_tells_generations_apart_behind_a_masked_model_name():
    zen4, zen5 = ({"vendor": "AuthenticAMD", "family": f, "model": m} for f, m in ((25, 17), (26, 2)))
    a, b = perf_gate.cpu_key(zen4), perf_gate.cpu_key(zen5)
    assert a != b and "(family 25 model 17) [" in a and "(family 26 model 2) [" in b
    assert "family" not in perf_gate.cpu_key({})  # off Linux: no identity, the name and features alone
    assert perf_gate.cpu_key() == perf_gate.cpu_key(records.cpu_identity())


def test_committed_baselines_are_well_formed():
    for key, entry in perf_gate.load_baselines().items():
        for name in perf_gate.GATES:
            if name in entry:
                assert 1.0 <= entry[name]["factor"] < perf_gate.LOOSE_BOUND[name], (key, name)


def test_side_by_side_times_the_planted_step_in_the_same_rounds(monkeypatch):
    """Each round times the step, the floor and the slowed step in turn on a clock that advances by a
    fixed amount per call: the planted step's factor comes out 50% above the unchanged one's, each step
    training its own copy of the model."""
    built = []
    now = [0.0]

    def clock():
        now[0] += 0.001
        return now[0]

    def build():
        model = torch.nn.Linear(4, 1)
        built.append(model)
        return model, (lambda: model(torch.ones(3, 4)).square().sum()), (lambda: None)

    monkeypatch.setitem(perf_gate.GATES, "toy", perf_gate.Gate("toy", build, 1, clock, rounds=3))
    unchanged, planted = perf_gate.measure_side_by_side("toy", 0.5)
    assert len(built) == 2 and len(unchanged["steps_s"]) == len(planted["steps_s"]) == 3
    assert unchanged["floors_s"] == planted["floors_s"]  # one floor, timed once per round
    assert planted["factor"] > 1.4 * unchanged["factor"]
