"""Every committed checkpoint of a finished model re-evaluates to the test figure in its record (a long
run's or a recipe study's): the classifier's and RAM's test error at each glimpse count, the conv
net's test error, DRAW's variational bound on the whole test split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench import checkpoints, evaluate, records

REPO = Path(__file__).resolve().parent.parent
COMMITTED = sorted(p for p in (REPO / "results" / "checkpoints").rglob("*.pt") if not p.name.endswith(".stable.pt"))


def _finished(state: dict) -> bool:
    return "optimizer" not in state or bool(state.get("finished"))  # an evaluation export, or a finished run


def _record_of(checkpoint: Path, unit: str, images_seen: int) -> dict | None:
    """The record whose finished unit of this name trained on exactly these images: the one that
    names this checkpoint, else one that names no committed checkpoint (an exported copy). None when
    the record naming this checkpoint has not finished the unit: training ended, its test evaluation
    was cut short (a resume runs it)."""
    where = checkpoint.relative_to(REPO).as_posix()
    exported = None
    pending = False
    for path in [*records.find(REPO / "results" / "runs"), *records.find(REPO / "results" / "studies")]:
        rec = records.read(path)
        job = rec["jobs"].get(unit, {})
        if job.get("checkpoint") == where and job.get("status") != "complete":
            pending = True
        if job.get("status") != "complete" or job.get("images_seen", job.get("train_images_seen")) != images_seen:
            continue
        if job.get("checkpoint") == where:
            return rec
        if exported is None and not str(job.get("checkpoint", "")).startswith("results/checkpoints/"):
            exported = rec
    if exported is None and pending:
        return None
    if exported is None:
        raise AssertionError(f"no record under results/runs or results/studies has a finished unit {unit} with "
                             f"{images_seen} images")
    return exported


@pytest.mark.slow
@pytest.mark.parametrize("path", COMMITTED, ids=[f"{p.parent.name}/{p.stem}" for p in COMMITTED])
def test_committed_checkpoint_reproduces_its_record(path, mnist_data):
    state = checkpoints.load(path)
    if not _finished(state):
        pytest.skip("a run still in training: its record has no test figure yet")
    unit = path.stem
    rec = _record_of(path, unit, state["images_seen"])
    if rec is None:
        pytest.skip("training ended but its record's test evaluation has not run yet (a resume runs it)")
    desc = state["task"]
    mine = [m for m in rec["metrics"] if m["params"].get("job") == unit]
    # the test images the record scored: all 10,000, or a recipe study's first N
    limit = next((m["params"]["test_images"] for m in mine if m["params"].get("test_images")), None)
    job, task = evaluate._job_and_task(desc["task"], desc["model"], desc["dataset"], desc["seed"], limit, 1,
                                       dict(device="cpu", data_dir=None, data_seed=0))
    model = task.build()
    model.load_state_dict(state.get("best_state") or state["model"])
    torch.manual_seed(0)
    got = task.evaluate(model, "test")
    if desc["task"] in ("classifier", "ram"):
        for m in (m for m in mine if m["name"] == "test_error"):
            assert got[f"error@{m['params']['glimpses']}"] == pytest.approx(m["value"], abs=1.5e-4), m["params"]
    elif desc["task"] == "baseline-conv":  # its record names the images "train_images_seen"
        err = next(m for m in mine if m["name"] == "test_error")
        assert got["error"] == pytest.approx(err["value"], abs=1.5e-4)
    else:
        elbo = next(m for m in mine if m["name"] == "nll_elbo")
        assert got["nll_elbo"] == pytest.approx(elbo["value"], abs=0.02)
