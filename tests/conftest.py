"""Shared fixtures. Tests read MNIST from $GLIMPSE_DATA (default ./data); when the files are
missing they are fetched from $GLIMPSE_MNIST_SOURCE, else from ../shared/data/mnist when this
checkout sits beside it, else from the download fallbacks."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist"

if not os.environ.get("GLIMPSE_MNIST_SOURCE") and SHARED_MNIST.is_dir():
    os.environ["GLIMPSE_MNIST_SOURCE"] = str(SHARED_MNIST)

os.environ.setdefault("OMP_NUM_THREADS", "2")

# bench's default places for a user's runs (records, checkpoints, dry runs) go to a folder of the test
# session's own, removed at exit, so tests never write into the checkout's runs/ or a user's $GLIMPSE_RUNS
os.environ["GLIMPSE_RUNS"] = tempfile.mkdtemp(prefix="glimpse-test-runs-")
atexit.register(shutil.rmtree, os.environ["GLIMPSE_RUNS"], ignore_errors=True)


@pytest.fixture(scope="session")
def mnist_data():
    """(train_images, train_labels, test_images, test_labels) of the real MNIST."""
    from datasets import mnist

    tr = mnist.load("train")
    te = mnist.load("test")
    return tr[0], tr[1], te[0], te[1]


@pytest.fixture
def one_thread():
    """Small ops run fastest on one thread, and two threads thrash on a shared 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
