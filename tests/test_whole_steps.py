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


def signal_on_call(n: int):
    """A function that sends SIGINT to this process on its n-th call."""
    calls = []

    def hook():
        calls.append(1)
        if len(calls) == n:
            signal.raise_signal(signal.SIGINT)

    return hook


# Where, inside the 8th step (of 6 an epoch) or the 2nd epoch's end, the signal lands: each place sits
# between two of the updates that make up the step's state (after Adam's step, before the loss sums
# and counters; between the step counter and the images seen; after the counters, inside the RNG
# capture; inside the epoch's end, between its curve entry and the next epoch's counters).
PLACES = ["optimiser_step", "counters", "rng_capture", "best_weights_copy"]


@pytest.mark.parametrize("place", PLACES)
def test_a_signal_anywhere_in_a_step_resumes_exactly(tmp_path, monkeypatch, ctrl_c, place):
    ref = train(ToyTask(), CFG, tmp_path / "ref.pt", log=lambda m: None)
    task = ToyTask()
    if place == "counters":
        hook, count = signal_on_call(3 * 7 + 2), task.batch_images  # 3 calls a step: the 2nd follows step += 1

        def count_then_signal(batch):
            out = count(batch)
            hook()
            return out

        task.batch_images = count_then_signal
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
    else:
        hook, copy = signal_on_call(2), training_loop._state_to_cpu

        def copy_then_signal(state):
            out = copy(state)
            hook()
            return out

        monkeypatch.setattr(training_loop, "_state_to_cpu", copy_then_signal)
    ck = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(task, CFG, ck, log=lambda m: None)
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


@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_after_the_first_stop_signal_both_are_ignored_while_the_checkpoint_is_written(first):
    """Ctrl-C in a terminal reaches the whole process group, and parallel_runs.sh then sends SIGTERM
    too: the second signal must not interrupt the save the first one started."""
    from bench.distributed import stop_signals_to_interrupt

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_signals_to_interrupt()
        with pytest.raises(KeyboardInterrupt) as stopped:
            signal.raise_signal(first)
        assert (str(stopped.value) == "") == (first == signal.SIGINT)  # SIGINT: "interrupted (Ctrl-C)"
        signal.raise_signal(signal.SIGTERM)  # the save goes on
        signal.raise_signal(signal.SIGINT)
    finally:
        for s, h in before.items():
            signal.signal(s, h)
