"""--devices: one worker per device, checked against the devices torch sees
before any block (a fake device list: this machine has no GPU)."""

from __future__ import annotations

import pytest

import pystitch
from pystitch import runner
from pystitch.errors import DeviceError, InputError


def _plan(backend: str) -> "pystitch.Plan":
    return pystitch.Plan(image=None, shape=(64, 256, 256), dtype="uint16", axes="zyx", block_shape=(32, 64, 64),
                         halo=(2, 4, 4), backend={"name": backend}, rule="exact", work_dir="w", output="o",
                         report_dir="r")


@pytest.fixture
def four_gpus(monkeypatch):
    monkeypatch.setattr(runner, "_cuda_devices", lambda: 4)


def test_device_lists_and_auto_against_the_devices_torch_sees(four_gpus):
    plan = _plan("cellpose")
    assert runner.resolve_devices("cuda:0,cuda:2", plan) == ["cuda:0", "cuda:2"]
    assert runner.resolve_devices("auto", plan) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert runner.resolve_devices(None, plan) is None
    with pytest.raises(DeviceError, match="cuda:4 not among the 4 CUDA device"):
        runner.resolve_devices("cuda:1,cuda:4", plan)
    assert runner.resolve_devices("cuda:7", plan, allow_cpu_fallback=True) is None


@pytest.mark.parametrize("devices, message", [
    ("gpu0,gpu1", "Expected --devices as cuda:0,cuda:1,... or auto"),
    ("cuda:0,cuda:0", "Expected each device once"),
])
def test_bad_device_lists_are_one_clear_error(four_gpus, devices, message):
    with pytest.raises(InputError, match=message):
        runner.resolve_devices(devices, _plan("cellpose"))


def test_devices_need_a_model_backend_and_exclude_device(four_gpus):
    with pytest.raises(InputError, match="only with a backend that runs a model"):
        runner.resolve_devices("cuda:0", _plan("threshold"))
    with pytest.raises(InputError, match="--device or --devices, not both"):
        runner.resolve_devices("cuda:0", _plan("cellpose"), device="cuda")


def test_no_gpu_is_a_device_error_before_any_block(monkeypatch):
    monkeypatch.setattr(runner, "_cuda_devices", lambda: 0)
    with pytest.raises(DeviceError, match="torch sees no CUDA device"):
        runner.resolve_devices("auto", _plan("cellpose"))


def test_one_worker_per_device_unless_a_count_is_given(four_gpus):
    plan = _plan("cellpose")
    devices = ["cuda:0", "cuda:1", "cuda:2"]
    assert runner.choose_workers("auto", plan, tasks=100, devices=devices)[0] == 3
    assert runner.choose_workers("auto", plan, tasks=2, devices=devices)[0] == 2
    n, why = runner.choose_workers(6, plan, tasks=100, devices=devices)
    assert n == 6 and "in turn" in why


def test_each_worker_keeps_one_device_for_its_life():
    """The pool's workers take the devices in turn when they start and keep
    them: every task a worker runs, it runs on its device."""
    with runner.Scheduler(2) as scheduler:
        scheduler.devices = ["fake:0", "fake:1"]  # names torch is never asked about
        seen = list(scheduler.map(runner.worker_device, list(range(16))))
    by_worker: dict[int, set] = {}
    for pid, device in seen:
        by_worker.setdefault(pid, set()).add(device)
    assert all(len(found) == 1 for found in by_worker.values()), by_worker
    pinned = [next(iter(found)) for found in by_worker.values()]
    assert len(set(pinned)) == len(pinned) and set(pinned) <= {"fake:0", "fake:1"}
