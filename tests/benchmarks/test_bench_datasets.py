"""Dataset speed and memory: building cluttered100 (70,000 images) and feeding a training loop.

Bounds are checked on the process's CPU time (time.process_time), measured inside the test, so
they hold with --benchmark-disable and do not depend on what else shares the CPU; the
generator is single-threaded numpy, so its CPU time is its wall time on an idle machine. Wall
times are printed beside them. Run with
``pytest tests/benchmarks/test_bench_datasets.py -s`` to see the measured numbers.
"""

from __future__ import annotations

import time
import tracemalloc

import pytest

from datasets import variants as V
from datasets.torch_data import iterate_batches

BUILD_BOUND_S = 5.0  # issue 3: at most 5 s on 2 cores
CLASSIFIER_IMAGES_PER_S = 2000  # the fastest the 100x100 classifier trains on this CPU (issue 3)


def build_all(name: str) -> dict:
    out = {}
    for split in V.SPLITS:
        spec, plan, images = V.plan_split(name, split, seed=0)
        out[split] = V.generate_split(spec, plan, images)["images"]
    return out


@pytest.fixture(scope="module")
def pools(mnist_data):
    return {split: V.source_images(split) for split in V.SPLITS}  # MNIST loaded before timing


@pytest.mark.slow
def test_build_cluttered100_time(benchmark, pools):
    start, cpu = time.perf_counter(), time.process_time()
    out = benchmark.pedantic(build_all, args=("cluttered100",), rounds=1, iterations=1)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    n = sum(a.shape[0] for a in out.values())
    print(f"\ncluttered100 train+valid+test: {n} images in {cpu:.2f} s CPU, {elapsed:.2f} s wall "
          f"({n / cpu:,.0f} images per CPU second)")
    assert n == 70_000
    assert cpu < BUILD_BOUND_S


@pytest.mark.slow
def test_build_cluttered100_peak_memory(pools):
    output_bytes = 70_000 * 100 * 100
    tracemalloc.start()  # numpy reports its allocations to tracemalloc
    try:
        out = build_all("cluttered100")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(a.nbytes for a in out.values()) == output_bytes
    print(f"\npeak traced memory {peak / 1e6:.0f} MB for {output_bytes / 1e6:.0f} MB of output "
          f"({peak / output_bytes:.2f}x)")
    assert peak < 2 * output_bytes


@pytest.mark.slow
def test_loader_feeds_10x_faster_than_the_classifier(pools):
    n = 0
    list(iterate_batches("cluttered100", "train", 128, epoch=0, limit=256))  # warm up
    start, cpu = time.perf_counter(), time.process_time()
    for x, y in iterate_batches("cluttered100", "train", 128, epoch=1, shuffle=True, limit=12_800):
        n += x.shape[0]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"\niterate_batches cluttered100 train (fresh epoch, shuffled, batch 128): {n / cpu:,.0f} images "
          f"per CPU second ({n / wall:,.0f} images/s wall)")
    assert n == 12_800
    assert n / cpu > 10 * CLASSIFIER_IMAGES_PER_S


_SIDE_BY_SIDE = """
import time, torch
from datasets.torch_data import iterate_batches
from models import classifier
torch.set_num_threads(1)  # one thread is the classifier's fastest setting on a busy 2-core CPU
torch.manual_seed(0)
model = classifier.GlimpseClassifier(classifier.ClassifierConfig())
opt = torch.optim.Adam(model.parameters(), 1e-3)
batches = list(iterate_batches("cluttered100", "train", 64, epoch=0, limit=64 * 6))
def step(x, y):
    loss = torch.nn.functional.cross_entropy(model(x).logits[:, -1], y)
    opt.zero_grad()
    loss.backward()
    opt.step()
step(*batches[0])
cpu = time.process_time()
for x, y in batches[1:]:
    step(x, y)
model_rate = 64 * 5 / (time.process_time() - cpu)
cpu, n = time.process_time(), 0
for x, y in iterate_batches("cluttered100", "train", 64, epoch=1, shuffle=True, limit=64 * 60):
    n += x.shape[0]
print(model_rate, n / (time.process_time() - cpu))
"""


@pytest.mark.slow
@pytest.mark.benchmark_gate
def test_loader_outpaces_the_classifier_side_by_side(pools):
    """In-run ratio: images per CPU second of the loader vs one training step of the classifier, in a
    fresh process as `bench run` has them: inside a pytest process that has imported the whole test
    suite, the loader ran at a third of its speed (14,000-16,000 images per CPU second against
    41,000-44,000 on the AMD EPYC Zen 2; cause not found), which measures the test run, not the loader."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", _SIDE_BY_SIDE], cwd=repo, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    model_rate, loader_rate = map(float, out.stdout.split())
    print(f"\nclassifier {model_rate:,.0f} images per CPU second, loader {loader_rate:,.0f}: "
          f"{loader_rate / model_rate:.1f}x")
    assert loader_rate > 10 * model_rate
