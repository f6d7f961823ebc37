"""torch.distributed on this machine: 2 gloo processes against one process.

- W = 2 ranks at batch B/2 follow the one-process trajectory at batch B (classifier and DRAW,
  DRAW's noise keyed by example position), through the real training loop and tasks;
- sharded evaluation gives the one-process numbers (error counts exactly);
- a checkpoint resumes across world sizes (1 -> 2 and 2 -> 1);
- killing one rank mid-run stops the other with a clear error and a checkpoint that resumes.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import traceback
from pathlib import Path

import pytest
import torch

from bench import checkpoints, distributed
from bench.optim import Optim
from bench.suites import ClassifierJob, DrawJob
from bench.tasks import ClassifierTask, DrawTask
from bench.training_loop import LoopConfig, train
from models.classifier import ClassifierConfig
from models.draw import DRAWConfig

pytestmark = pytest.mark.slow

B = 16
CFG = LoopConfig(epochs=2, max_batches=3, lr=1e-2, progress=False, checkpoint_every_s=1e9)
CLS_JOB = ClassifierJob(dataset="cluttered60", glimpses=(1, 2), per_step_loss=True,
                        model=ClassifierConfig(read_n=4, hidden=32), optim=Optim(batch_size=B), valid_limit=101,
                        test_limit=251)
DRAW_JOB = DrawJob(dataset="binarized",
                   model=DRAWConfig(steps=3, read_n=2, write_n=3, enc_hidden=16, dec_hidden=16, z_size=4),
                   optim=Optim(batch_size=B), valid_limit=101, test_limit=251, iwae_k=3, iwae_limit=21)


def cls_task(rank=0, world=1):
    return ClassifierTask(CLS_JOB, 2, 0, eval_glimpses=(1, 2), rank=rank, world_size=world)


def draw_task(rank=0, world=1):
    return DrawTask(DRAW_JOB, 0, rank=rank, world_size=world)


def quiet(_msg):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def evaluations(task) -> dict:
    """Test metrics of the task's freshly built (seeded, identical everywhere) model."""
    model = task.build()
    out = {"test": task.evaluate(model, "test")}
    if isinstance(task, DrawTask):
        out["iwae"] = task.iwae(model, DRAW_JOB.iwae_k, DRAW_JOB.iwae_limit)
    return out


# ---------------------------------------------------------------- the ranks (spawned processes)

def _init(rank: int, world: int, port: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    return distributed.init_from_env("cpu", timeout_s=30)


def _equivalence(rank: int, world: int, ctx, ckpt: str) -> dict:
    wrap = lambda m: distributed.wrap_ddp(m, ctx)  # noqa: E731
    res = {"cls": train(cls_task(rank, world), CFG, log=quiet, rank=rank, world_size=world, wrap=wrap),
           "cls_resumed": train(cls_task(rank, world), CFG, ckpt, resume=True, log=quiet, rank=rank,
                                world_size=world, wrap=wrap),
           "draw": train(draw_task(rank, world), CFG, log=quiet, rank=rank, world_size=world, wrap=wrap)}
    out = {k: {"params": r.model.state_dict(), "curve": r.curve, "images_seen": r.images_seen} for k, r in res.items()}
    out["eval_cls"] = evaluations(cls_task(rank, world))
    out["eval_draw"] = evaluations(draw_task(rank, world))
    return out


def _cli(tmp: Path) -> dict:
    """`bench run` as torchrun starts it on each rank (the process group exists; the CLI ends it)."""
    import contextlib
    import io

    from bench import cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(["run", "--suite", "quick", "--dry-run", "--no-progress",
                         "--out", str(tmp / "cli" / "run.json"), "--checkpoint-dir", str(tmp / "cli" / "ck")])
    return {"code": code, "stdout": buf.getvalue()}


def _kill(rank: int, world: int, ctx, ckpt: str) -> None:
    def die(step):
        if rank == 1 and step == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    train(cls_task(rank, world), CFG, ckpt, log=quiet, rank=rank, world_size=world,
          wrap=lambda m: distributed.wrap_ddp(m, ctx), on_step=die)


def _worker(rank: int, world: int, ports: tuple[int, int], tmp: str, ckpt: str) -> None:
    """Equivalence and sharded evaluation, then the CLI, then (in a new process group) the kill."""
    torch.set_num_threads(1)
    tmp_ = Path(tmp)
    for stage in ("main", "kill"):
        result: dict = {}
        try:
            ctx = _init(rank, world, ports[stage == "kill"])
            if stage == "main":
                result = _equivalence(rank, world, ctx, ckpt)
                result["cli"] = _cli(tmp_)
            else:
                _kill(rank, world, ctx, str(tmp_ / "killed.pt"))
                result["finished"] = True
        except BaseException as e:  # noqa: BLE001 - reported to the test
            result["error"] = (type(e).__name__, str(e), traceback.format_exc())
        torch.save(result, tmp_ / f"{stage}{rank}.pt")
        if stage == "main" and "error" in result:
            return


@pytest.fixture(scope="module")
def ranks(one_process, tmp_path_factory):
    """One launch of 2 spawned ranks for every scenario (each process start costs seconds here)."""
    tmp = tmp_path_factory.mktemp("ranks")
    ctx = torch.multiprocessing.get_context("spawn")
    ports = (free_port(), free_port())
    procs = [ctx.Process(target=_worker, args=(r, 2, ports, str(tmp), str(one_process[1]))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    for p in procs:
        if p.is_alive():
            p.kill()
    load = lambda f: torch.load(f, weights_only=False) if f.exists() else None  # noqa: E731
    main = [load(tmp / f"main{r}.pt") for r in range(2)]
    for r, got in enumerate(main):
        assert got is not None, f"rank {r} wrote no result"
        assert "error" not in got, f"rank {r} failed:\n{got['error'][2]}"
    return {"main": main, "kill": [load(tmp / f"kill{r}.pt") for r in range(2)], "tmp": tmp}


def assert_close_params(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=2e-6), \
            f"{what}: {k} differs by {(a[k] - b[k]).abs().max():.3g}"


# ---------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Single-process references, and a W = 1 checkpoint interrupted at step 2 for the ranks to resume."""
    tmp = tmp_path_factory.mktemp("one")
    torch.manual_seed(0)
    ref = {"cls": train(cls_task(), CFG, log=quiet), "draw": train(draw_task(), CFG, log=quiet)}
    ckpt = tmp / "interrupted_w1.pt"

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cls_task(), CFG, ckpt, log=quiet, on_step=stop)
    return ref, ckpt, {"cls": evaluations(cls_task()), "draw": evaluations(draw_task())}


@pytest.mark.parametrize("model", ["cls", "draw"])
def test_two_ranks_at_half_batch_follow_one_process(one_process, ranks, model):
    ref = one_process[0][model]
    for rank, got in enumerate(ranks["main"]):
        assert_close_params(got[model]["params"], ref.model.state_dict(), f"{model} rank {rank}")
        assert got[model]["images_seen"] == ref.images_seen == 2 * 3 * B
        for a, b in zip(got[model]["curve"], ref.curve):  # the global train loss, and the sharded valid score
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["valid_images"] == b["valid_images"] == 101
    costs = [got[model]["curve"][-1]["train_cost"] for got in ranks["main"]]
    assert costs[0] == costs[1] and costs[0]["cpu"] > 0  # both ranks' CPU time, summed on every rank
    untrained = (cls_task() if model == "cls" else draw_task()).build().state_dict()
    moved = max((ref.model.state_dict()[k] - untrained[k]).abs().max().item() for k in untrained)
    assert moved > 1e-3, "training did not move the parameters: the comparison would be vacuous"


def test_sharded_evaluation_equals_one_process(one_process, ranks):
    ref = one_process[2]
    for got in ranks["main"]:
        assert got["eval_cls"] == ref["cls"]  # error counts and image counts: exactly
        assert got["eval_cls"]["test"]["images"] == 251
        for part in ("test", "iwae"):
            a, b = got["eval_draw"][part], ref["draw"][part]
            assert a["images"] == b["images"]
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=0), f"DRAW {part} {k}"


def test_resume_of_a_one_process_checkpoint_on_two_ranks(one_process, ranks):
    for rank, got in enumerate(ranks["main"]):
        assert_close_params(got["cls_resumed"]["params"], one_process[0]["cls"].model.state_dict(),
                            f"resumed 1 -> 2, rank {rank}")


def test_killed_rank_stops_the_job_clearly_and_the_run_resumes(one_process, ranks):
    res = ranks["kill"]
    assert res[1] is None  # SIGKILLed before writing anything
    assert res[0] is not None and "error" in res[0], "rank 0 went on after its peer died"
    kind, msg, _ = res[0]["error"]
    assert kind == "TrainingError"
    assert "rank 0 lost the other ranks at step 3" in msg and "--resume" in msg
    ckpt = ranks["tmp"] / "killed.pt"
    state = checkpoints.load(ckpt)
    assert (state["step"], state["batch_in_epoch"], state["epoch"]) == (3, 3, 0)
    resumed = train(cls_task(), CFG, ckpt, resume=True, log=quiet)  # on one process: 2 -> 1
    assert resumed.resumed and resumed.step == 6
    assert_close_params(resumed.model.state_dict(), one_process[0]["cls"].model.state_dict(), "resumed 2 -> 1")


def test_cli_run_on_two_ranks_records_world_and_backend(ranks):
    cli = [got["cli"] for got in ranks["main"]]
    assert [c["code"] for c in cli] == [0, 0]
    assert "record: " in cli[0]["stdout"] and cli[1]["stdout"] == ""  # rank 0 alone reports
    out = ranks["tmp"] / "cli"
    record = json.loads((out / "run.json").read_text())
    assert (record["machine"]["world_size"], record["machine"]["backend"]) == (2, "gloo")
    assert record["status"] == "complete"
    assert sorted(x.name for x in out.iterdir()) == ["run.json", "run.npz"]  # a dry run's checkpoints go apart
