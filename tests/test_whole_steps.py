"""A stop signal (SIGINT, SIGTERM) that lands anywhere inside a training step or an epoch's end leaves
a checkpoint whose weights, optimiser, counters and RNG agree: the resumed run ends exactly where an
uninterrupted one does."""

from __future__ import annotations

import signal

import pytest
import torch

from bench import checkpoints, training_loop
from bench.signal_hold import uninterrupted
from bench.training_loop import LoopConfig, train
from tests.fixtures.bench_records import without_timings
from tests.test_bench_loop import ToyTask, params

CFG = LoopConfig(epochs=3, lr=0.05, progress=False)


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt, as in a plain Python process; the handler is restored after."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


class Status(dict):
    """A status dict (`train(status=...)`) that calls ``hook`` on every update."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook

    def update(self, *a, **k):
        super().update(*a, **k)
        self.hook()


def signal_on_call(n: int):
    """A function that sends SIGINT to this process on its n-th call."""
    calls = []

    def hook():
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)

    return hook


# Where, inside the 8th step (of 6 an epoch) or the 2nd epoch's end, the signal lands: each place sits
# between two of the updates that make up the step's state.
PLACES = ["forward", "optimiser_step", "rng_capture", "status_update", "best_weights_copy"]


@pytest.mark.parametrize("place", PLACES)
def test_a_signal_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, ctrl_c, place):
    ref = train(ToyTask(), CFG, tmp_path / "ref.pt", log=lambda m: None)
    task, status = ToyTask(), None
    if place == "forward":
        hook, loss = signal_on_call(8), task.loss

        def loss_then_signal(model, batch):
            out = loss(model, batch)
            hook()
            return out

        task.loss = loss_then_signal
    elif place == "optimiser_step":
        hook, step = signal_on_call(8), torch.optim.Adam.step

        def step_then_signal(self, *a, **k):
            out = step(self, *a, **k)
            hook()
            return out

        monkeypatch.setattr(torch.optim.Adam, "step", step_then_signal)
    elif place == "rng_capture":
        hook, capture = signal_on_call(9), training_loop.rng_states  # the first call is the loop's start

        def capture_then_signal():
            out = capture()
            hook()
            return out

        monkeypatch.setattr(training_loop, "rng_states", capture_then_signal)
    elif place == "status_update":
        status = Status(signal_on_call(9))  # the first update is the loop's start
    else:
        hook, copy = signal_on_call(2), training_loop._state_to_cpu

        def copy_then_signal(state):
            out = copy(state)
            hook()
            return out

        monkeypatch.setattr(training_loop, "_state_to_cpu", copy_then_signal)
    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(task, CFG, ck, status=status, log=lambda m: None)
    saved = checkpoints.load(ck)
    assert 0 < saved["step"] < ref.step
    monkeypatch.undo()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.manual_seed(999)  # the resumed process starts with another RNG state
    res = train(ToyTask(), CFG, ck, resume=True, log=lambda m: None)
    assert res.step == ref.step and res.images_seen == ref.images_seen
    assert without_timings(res.curve) == without_timings(ref.curve)
    assert torch.equal(params(res.model), params(ref.model))


def test_uninterrupted_delivers_a_held_signal_when_the_block_ends(ctrl_c):
    done = []
    with pytest.raises(KeyboardInterrupt):
        with uninterrupted():
            signal.raise_signal(signal.SIGINT)
            done.append("rest of the block")
        done.append("after the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_uninterrupted_restores_the_handlers_and_nests(ctrl_c):
    seen = []
    before = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with uninterrupted():
            with uninterrupted():
                signal.raise_signal(signal.SIGTERM)
            assert seen == []  # still inside the outer block
        assert seen == [signal.SIGTERM]
        with uninterrupted():
            pass
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGTERM, before)


def test_uninterrupted_passes_an_exception_through_and_leaves_ignored_signals_ignored(ctrl_c):
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with pytest.raises(ValueError, match="inside"):
            with uninterrupted():
                signal.raise_signal(signal.SIGTERM)
                raise ValueError("inside")
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
