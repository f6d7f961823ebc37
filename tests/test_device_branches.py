"""The device-dependent branches, run on a CPU-only machine with CUDA faked where only the
selection logic is under test (the numerical path CUDA takes is the PyTorch path, which the
suite runs on CPU with GLIMPSE_NATIVE=0)."""

from __future__ import annotations

import pytest
import torch

from bench import distributed, records, training_loop
from models.fast import native
from models.training import DeviceError, pick_device


@pytest.fixture
def fake_gpus(monkeypatch):
    """Pretend this machine has ``n`` CUDA devices, named 'Fake GPU'."""

    def install(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU H200")
    return install


def test_auto_picks_cuda_when_present_and_checks_the_index(fake_gpus):
    fake_gpus(2)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match="only 2 CUDA device"):
        pick_device("cuda:2")
    fake_gpus(0)
    assert pick_device("auto").type in ("cpu", "mps")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        pick_device("cuda")


def test_each_rank_takes_its_local_gpu(fake_gpus):
    fake_gpus(4)
    assert distributed._device_for("auto", 3) == "cuda:3"
    assert distributed._device_for("cuda", 0) == "cuda:0"
    with pytest.raises(distributed.DistError, match="each rank takes cuda:LOCAL_RANK"):
        distributed._device_for("cuda:1", 0)
    with pytest.raises(distributed.DistError, match="only 4 GPU"):
        distributed._device_for("cuda", 4)
    fake_gpus(0)
    assert distributed._device_for("auto", 1) == "cpu"


def test_a_gpu_record_names_the_gpu(fake_gpus):
    fake_gpus(1)
    info = records.machine_info("cuda:0", threads=1)
    assert info["device_name"] == "Fake GPU H200" and info["id"] == "cuda-fake-gpu-h200"
    cpu = records.machine_info("cpu", threads=1)
    assert cpu["id"].startswith("cpu-") and cpu["id"].endswith(f"-{cpu['cores']}c")


def test_checkpoint_rng_carries_cuda_state_when_cuda_is_in_use(monkeypatch):
    saved = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["gpu0-state"])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", saved.append)
    states = training_loop.rng_states()
    assert states["cuda"] == ["gpu0-state"]
    training_loop.set_rng_states(states)
    assert saved == [["gpu0-state"]]


def test_native_loops_are_never_used_for_tensors_off_the_cpu():
    x = torch.zeros(2, 1, 4, 4, device="meta")
    assert not native.usable(x)
