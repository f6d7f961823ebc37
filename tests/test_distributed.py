"""bench.distributed in one process: launch parsing, batch split, sharding arithmetic, keyed noise,
sweep assignment. The multi-process checks are in test_distributed_ranks.py."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import distributed
from bench.distributed import DistContext, DistError


def test_env_ranks_absent_partial_bad_and_good():
    assert distributed.env_ranks({}) is None
    with pytest.raises(DistError, match="RANK and WORLD_SIZE go together"):
        distributed.env_ranks({"LOCAL_RANK": "0"})
    with pytest.raises(DistError, match="must be integers"):
        distributed.env_ranks({"RANK": "zero", "WORLD_SIZE": "2"})
    with pytest.raises(DistError, match="0 <= RANK < WORLD_SIZE"):
        distributed.env_ranks({"RANK": "2", "WORLD_SIZE": "2"})
    assert distributed.env_ranks({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (1, 4, 1)


def test_init_without_torchrun_is_one_process_without_a_group():
    ctx = distributed.init_from_env("cpu", environ={})
    assert ctx == DistContext(0, 1, 0, None, "cpu")
    assert not ctx.distributed and ctx.is_main and ctx.shard is None
    assert not dist.is_initialized()
    one = distributed.init_from_env("cpu", environ={"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    assert one.backend is None and not dist.is_initialized()


def test_init_under_a_broken_launch_says_what_is_missing():
    with pytest.raises(DistError, match="MASTER_ADDR and MASTER_PORT not set"):
        distributed.init_from_env("cpu", environ={"RANK": "0", "WORLD_SIZE": "2"})


def test_collectives_are_identities_in_one_process():
    t = torch.tensor([1.5, 2.0])
    out = distributed.all_reduce_sum(t)
    assert torch.equal(out, t) and out is not t
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1} and distributed.is_main()
    distributed.barrier()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, DistContext()) is model


def test_global_batch_must_split_evenly():
    assert distributed.per_rank_batch(128, 2) == 64
    with pytest.raises(DistError, match="global batch 130 does not split over 4 processes.*multiple of 4"):
        distributed.per_rank_batch(130, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6))
def test_round_robin_assignment_partitions_the_units(n, world):
    items = [f"unit{i}" for i in range(n)]
    shares = [distributed.assign(items, r, world) for r in range(world)]
    assert sorted(sum(shares, [])) == sorted(items)
    for r, share in enumerate(shares):
        assert share == [items[i] for i in range(r, n, world)]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300), st.integers(1, 5), st.integers(1, 17))
def test_positions_of_sharded_batches_partition_the_epoch(n, world, b):
    seen = []
    for r in range(world):
        count = len(range(r, n, world))  # the shard's size
        for start in range(0, count, b):
            seen += distributed.positions(start, min(b, count - start), (r, world)).tolist()
    assert sorted(seen) == list(range(n))


def test_example_noise_depends_only_on_key_and_position():
    a = distributed.example_noise(("train", 0, 3), torch.arange(10), (2, 5))
    b = distributed.example_noise(("train", 0, 3), torch.tensor([7, 2]), (2, 5))
    assert torch.equal(a[7], b[0]) and torch.equal(a[2], b[1])
    c = distributed.example_noise(("train", 0, 4), torch.arange(10), (2, 5))  # next epoch: other noise
    assert not torch.equal(a, c)
    big = distributed.example_noise(("eval", 1, "test"), torch.arange(400), (50,))
    assert abs(big.mean().item()) < 0.02 and abs(big.std().item() - 1) < 0.02
    rows = big.flatten(1)
    assert torch.corrcoef(rows[:20]).fill_diagonal_(0).abs().max() < 0.5  # rows are not copies of each other


@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_are_strides_of_the_one_process_batches(mnist_data, world):
    from datasets.torch_data import iterate_batches

    kw = dict(seed=0, epoch=1, shuffle=True, limit=287, drop_last=True)  # 287 = 2*12*12 - 1 = 3*12*8 - 1
    b = 12
    one = list(iterate_batches("translated60", "valid", b * world, **kw))
    ranks = [list(iterate_batches("translated60", "valid", b, shard=(r, world), **kw)) for r in range(world)]
    assert [len(r) for r in ranks] == [len(one)] * world == [287 // (b * world)] * world
    for k, (x, y) in enumerate(one):
        for r in range(world):
            assert torch.equal(ranks[r][k][0], x[r::world]) and torch.equal(ranks[r][k][1], y[r::world])


def test_draw_noise_on_two_ranks_is_the_one_process_noise(mnist_data):
    from bench.optim import Optim
    from bench.suites import DrawJob
    from bench.tasks import DrawTask
    from models.draw import DRAWConfig

    job = DrawJob(model=DRAWConfig(steps=3, z_size=4), optim=Optim(batch_size=8), train_limit=40)
    one = list(DrawTask(job, 5).batches(2))
    ranks = [list(DrawTask(job, 5, rank=r, world_size=2).batches(2)) for r in range(2)]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 5
    task = DrawTask(job, 5)
    for k, batch in enumerate(one):
        noise = task.noise(batch[2])  # (T, B, z)
        for r in range(2):
            assert torch.equal(ranks[r][k][0], batch[0][r::2])
            assert torch.equal(task.noise(ranks[r][k][2]), noise[:, r::2])


def test_sweep_parallel_ranks_share_the_units_and_write_their_own_records(tmp_path):
    from bench.runner import RunOptions, Runner

    runners = [Runner(RunOptions(suite="quick", dry_run=True, device="cpu", out=str(tmp_path / "run.json"),
                                 sweep_rank=r, sweep_world=2), log=lambda m: None) for r in range(2)]
    everything = Runner(RunOptions(suite="quick", dry_run=True, device="cpu"), log=lambda m: None).units
    ids = [[u.id for u in r.units] for r in runners]
    assert ids == [[u.id for u in everything[r::2]] for r in range(2)]
    paths = [r.open_record()[1] for r in runners]
    assert [p.name for p in paths] == ["run.rank0-of-2.json", "run.rank1-of-2.json"]


def test_peer_failure_names_collective_errors_only():
    gloo = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:1: Connection reset by peer")
    msg = distributed.peer_failure(gloo, 0, 7)
    assert msg.startswith("rank 0 lost the other ranks at step 7") and "--resume" in msg and "Connection reset" in msg
    assert distributed.peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 0, 7) is None
    assert distributed.peer_failure(KeyboardInterrupt(), 0, 7) is None
    assert distributed.peer_failure(ValueError("timeout"), 0, 7) is None


def test_ram_location_noise_on_two_ranks_is_the_one_process_noise(mnist_data):
    """Each image's location noise (all its episodes) is keyed by its place in the epoch: rank r's batch
    holds the one-process noise of its images, so two ranks do not draw the same noise."""
    from bench.optim import Optim
    from bench.suites import RamJob
    from bench.tasks import RamTask
    from models.ram import RamConfig

    job = RamJob(dataset="cluttered60", glimpses=(3,), model=RamConfig(samples=2), optim=Optim(batch_size=8),
                 train_limit=40)
    one = list(RamTask(job, 3, 5).batches(2))
    ranks = [list(RamTask(job, 3, 5, rank=r, world_size=2).batches(2)) for r in range(2)]
    task = RamTask(job, 3, 5)
    for k, batch in enumerate(one):
        noise = task.noise(batch[2]).view(3, 8, 2, 2)  # (T, image, episode, 2)
        assert not torch.equal(noise[:, 0], noise[:, 1]) and not torch.equal(noise[:, :, 0], noise[:, :, 1])
        for r in range(2):
            assert torch.equal(ranks[r][k][0], batch[0][r::2])
            assert torch.equal(task.noise(ranks[r][k][2]).view(3, 4, 2, 2), noise[:, r::2])
    assert not torch.equal(task.noise(one[0][2]), task.noise(list(task.batches(3))[0][2]))  # next epoch: other


def test_a_sweep_rank_checks_and_resumes_its_own_record_beside_out(tmp_path, monkeypatch, capsys):
    """Under torchrun with --sweep-parallel each rank writes NAME.rankR-of-W.json: the CLI refuses a new
    run over that file and a resume reads it (not --out itself, which no rank writes)."""
    from bench import records
    from bench.cli import main
    from fixtures.bench_records import make_record

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "run.json"
    records.write(make_record(), tmp_path / "run.rank1-of-2.json")
    assert main(["run", "--sweep-parallel", "--out", str(out)]) == 2
    assert "run.rank1-of-2.json (this rank's record of --out" in capsys.readouterr().err
    assert main(["run", "--sweep-parallel", "--resume", "--out", str(out), "--suite", "table1"]) == 2
    err = capsys.readouterr().err
    assert "no such record" not in err and "is a record of suite" in err, err  # it read the rank's record
