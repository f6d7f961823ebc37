"""The learning-rate schedules (bench/schedule.py) and runs extended across budgets."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from bench.schedule import Schedule, ScheduleError
from bench.training_loop import LoopConfig, train
from test_bench_loop import ToyTask, params, stopped_at
from tests.fixtures.bench_records import without_timings

WSD = Schedule("wsd", warmup_epochs=1.0, decay_epochs=4.0, min_lr_ratio=0.1)


def test_wsd_shape():
    assert WSD.factor(0.5, 10) == pytest.approx(0.5)  # half-way through the warm-up
    assert WSD.factor(1.0, 10) == 1.0 and WSD.factor(5.99, 10) == 1.0  # stable
    assert WSD.decay_start(10) == 6.0
    assert WSD.factor(8.0, 10) == pytest.approx(0.1 + 0.9 * 0.5)  # cosine half-way
    assert WSD.factor(10.0, 10) == pytest.approx(0.1)
    assert Schedule().factor(3.3, 10) == 1.0 and math.isinf(Schedule().decay_start(10))


@given(st.floats(0.0, 30.0), st.floats(0.0, 30.0), st.integers(5, 100))
def test_wsd_is_bounded_and_falls_during_decay(a, b, epochs):
    lo, hi = sorted((a, b))
    s = Schedule("wsd", warmup_epochs=1.0, decay_epochs=3.0)
    fa, fb = s.factor(min(lo, epochs), epochs), s.factor(min(hi, epochs), epochs)
    assert 0.0 <= fa <= 1.0 and 0.0 <= fb <= 1.0
    if lo >= s.decay_start(epochs):
        assert fb <= fa + 1e-12


def test_a_longer_budget_shares_the_shorter_ones_stable_phase():
    for pos in (0.3, 1.0, 2.5, 5.9):
        assert WSD.factor(pos, 10) == WSD.factor(pos, 20)


@pytest.mark.parametrize("kw", [dict(kind="step"), dict(warmup_epochs=-1), dict(min_lr_ratio=2.0)])
def test_bad_schedules_are_refused(kw):
    with pytest.raises(ScheduleError):
        Schedule(**kw)


def cfg(epochs, schedule=Schedule()):
    return LoopConfig(epochs=epochs, lr=0.05, progress=False, schedule=schedule, batches_per_epoch=6)


def test_the_loop_follows_the_schedule(tmp_path):
    status = {}
    task = ToyTask()
    sched = Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)
    res = train(task, cfg(3, sched), tmp_path / "c.pt", log=lambda m: None, status=status)
    assert res.epochs_done == 3 and status["images_seen"] == 3 * 96 and status["lr"] == pytest.approx(0.0)
    assert (tmp_path / "c.stable.pt").is_file()  # the state where the decay began


@pytest.mark.parametrize("schedule", [Schedule(), Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)],
                         ids=["constant", "wsd"])
def test_extending_a_finished_run_equals_the_longer_run(tmp_path, schedule):
    """Train 3 epochs to the end, then ask for 5: the result is that of an uninterrupted 5-epoch
    run (with wsd, the decay of the short run is undone from the state kept when it began)."""
    quiet = lambda m: None  # noqa: E731
    long = train(ToyTask(), cfg(5, schedule), tmp_path / "long.pt", log=quiet)
    short = train(ToyTask(), cfg(3, schedule), tmp_path / "run.pt", log=quiet)
    assert short.epochs_done == 3
    again = train(ToyTask(), cfg(3, schedule), tmp_path / "run.pt", resume=True, log=quiet)
    assert again.epochs_done == 3 and torch.equal(params(again.model), params(short.model))  # nothing more to do
    lines = []
    ext = train(ToyTask(), cfg(5, schedule), tmp_path / "run.pt", resume=True, log=lines.append)
    assert ext.epochs_done == 5 and ext.images_seen == long.images_seen
    assert torch.equal(params(ext.model), params(long.model))
    assert without_timings(ext.curve) == without_timings(long.curve)
    assert any("extending" in m or "restarting" in m for m in lines)


def test_a_run_may_be_shortened_until_the_schedules_part(tmp_path):
    """A 5-epoch wsd run stopped 1.5 epochs in (6 batches an epoch), before a 3-epoch schedule's decay
    (epoch 2): resumed with 3 epochs, it ends where an uninterrupted 3-epoch run ends."""
    sched = Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)
    short = train(ToyTask(), cfg(3, sched), tmp_path / "short.pt", log=lambda m: None)
    path = stopped_at(9, ToyTask(), cfg(5, sched), tmp_path / "run.pt")
    lines = []
    shortened = train(ToyTask(), cfg(3, sched), path, resume=True, log=lines.append)
    assert shortened.epochs_done == 3 and torch.equal(params(shortened.model), params(short.model))
    assert any(x.startswith("shortened: made for a 5-epoch budget, it goes on to 3 epochs") for x in lines)


@pytest.mark.parametrize("schedule", [Schedule(), Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)],
                         ids=["constant", "wsd"])
def test_a_run_past_a_shorter_schedule_s_decay_or_end_is_not_ended_there(tmp_path, schedule):
    """Stopped a batch past 3 epochs into a 5-epoch run, past a 3-epoch schedule's decay (epoch 2) or
    its end: ending it at 3 would record as finished a run that never followed that schedule, so the
    loop refuses and says how to continue it; at its own budget it goes on."""
    from bench.training_loop import ResumeMismatch

    path = stopped_at(3 * 6 + 1, ToyTask(), cfg(5, schedule), tmp_path / "run.pt")
    where = "begins its decay" if schedule.kind == "wsd" else "ends"
    with pytest.raises(ResumeMismatch, match=rf"trained 3\.2 epochs of a 5-epoch budget, past epoch \d, where a "
                                             rf"3-epoch schedule {where}; continue it with --epochs 5"):
        train(ToyTask(), cfg(3, schedule), path, resume=True, log=lambda m: None)
    assert train(ToyTask(), cfg(5, schedule), path, resume=True, log=lambda m: None).epochs_done == 5


def test_a_run_stopped_exactly_where_a_shorter_schedule_ends_may_end_there(tmp_path):
    """Stopped after the last step of epoch 3 of a 5-epoch constant-rate run, before that epoch's
    validation: it has trained step for step as a 3-epoch run, so a 3-epoch budget ends it where an
    uninterrupted 3-epoch run ends."""
    short = train(ToyTask(), cfg(3), tmp_path / "short.pt", log=lambda m: None)
    path = stopped_at(3 * 6, ToyTask(), cfg(5), tmp_path / "run.pt")
    shortened = train(ToyTask(), cfg(3), path, resume=True, log=lambda m: None)
    assert shortened.epochs_done == 3 and torch.equal(params(shortened.model), params(short.model))


def test_a_run_finished_by_its_time_budget_is_not_reopened_by_a_smaller_epoch_budget():
    """Stopped by its time budget at epoch 4 of 20: a 10-epoch budget would train it on to 10 under a
    schedule it never had; refused, saying it finished and what to give."""
    from bench.training_loop import cannot_shorten

    state = {"epoch": 4, "batch_in_epoch": 0, "finished": True, "stopped_by": "time_budget",
             "loop": {"epochs": 20, "batches_per_epoch": 6, "schedule": None}}
    assert cannot_shorten(state, 10) == ("finished at epoch 4.0 of a 20-epoch budget (stopped by its time_budget); a "
                                         "smaller budget does not reopen it: give --epochs 20")
    assert cannot_shorten({**state, "finished": False}, 10) is None and cannot_shorten(state, 20) is None


def test_a_finished_run_kept_as_its_export_is_extended_from_where_its_decay_began(tmp_path):
    """A finished wsd run's checkpoint replaced by its evaluation-only export (a third of the file):
    the same budget is refused with a message saying what continues it, a larger one goes on from the
    state kept at the start of the decay and ends where an uninterrupted run ends."""
    from bench import checkpoints
    from bench.training_loop import ResumeMismatch

    sched = Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)
    quiet = lambda m: None  # noqa: E731
    long = train(ToyTask(), cfg(5, sched), tmp_path / "long.pt", log=quiet)
    short = train(ToyTask(), cfg(3, sched), tmp_path / "run.pt", log=quiet)
    full = (tmp_path / "run.pt").stat().st_size
    assert checkpoints.keep_for_evaluation(tmp_path / "run.pt")
    kept = checkpoints.load(tmp_path / "run.pt")
    assert checkpoints.is_export(kept) and "optimizer" not in kept
    assert (tmp_path / "run.pt").stat().st_size < full / 2
    exported = ToyTask().build()
    exported.load_state_dict(kept["model"])
    assert torch.equal(params(exported), params(short.model))  # the best-valid weights the run returned
    assert not checkpoints.keep_for_evaluation(tmp_path / "run.pt")  # already an export
    with pytest.raises(ResumeMismatch, match=r"finished under a 3-epoch budget .* a larger --epochs than 3"):
        train(ToyTask(), cfg(3, sched), tmp_path / "run.pt", resume=True, log=quiet)
    lines = []
    ext = train(ToyTask(), cfg(5, sched), tmp_path / "run.pt", resume=True, log=lines.append)
    assert any(m.startswith("extending a finished run kept as an evaluation-only export to 5 epochs") for m in lines)
    assert ext.epochs_done == 5 and torch.equal(params(ext.model), params(long.model))
    assert without_timings(ext.curve) == without_timings(long.curve)
    assert not checkpoints.is_export(checkpoints.load(tmp_path / "run.pt"))  # training state again


def test_a_checkpoint_that_would_be_continued_is_not_replaced_by_its_export(tmp_path):
    """Only a run that finished its epochs after its decay began, with the state kept there, gives up
    its full checkpoint: without a decay (constant rate), a larger budget continues from the checkpoint
    itself, as it does for a run stopped by its time budget; an unfinished run goes on from it; a
    missing stable state leaves nothing else to continue from."""
    from bench import checkpoints

    quiet = lambda m: None  # noqa: E731
    train(ToyTask(), cfg(3), tmp_path / "constant.pt", log=quiet)
    sched = Schedule("wsd", warmup_epochs=1.0, decay_epochs=1.0)
    unfinished = stopped_at(15, ToyTask(), cfg(3, sched), tmp_path / "unfinished.pt")  # in the decay
    assert (tmp_path / "unfinished.stable.pt").is_file()
    train(ToyTask(), cfg(3, sched), tmp_path / "lost.pt", log=quiet)
    (tmp_path / "lost.stable.pt").unlink()
    train(ToyTask(), cfg(3, sched), tmp_path / "timed.pt", log=quiet)
    timed = checkpoints.load(tmp_path / "timed.pt")
    assert timed["decay_saved"] and timed["stopped_by"] == "epochs"
    checkpoints.save(tmp_path / "timed.pt", {**timed, "stopped_by": "time_budget"})  # as a time budget ends one
    for path in (tmp_path / "constant.pt", unfinished, tmp_path / "lost.pt", tmp_path / "timed.pt"):
        before = path.read_bytes()
        assert not checkpoints.keep_for_evaluation(path)
        assert path.read_bytes() == before
