"""kernels/triton/device_memory.py: the allocatable-bytes estimate asks the driver (cudaMemGetInfo, a device sync on
some drivers) once per REFRESH_S per device, and follows torch's own allocations in between."""

import torch

from kernels.triton import device_memory as dm


def test_driver_asked_once_per_interval(monkeypatch):
    calls = []
    state = {"free": 10_000, "reserved": 3_000, "allocated": 1_000, "now": 100.0}

    def mem_get_info(index):
        calls.append(index)
        return state["free"], 20_000

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: state["reserved"])
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: state["allocated"])
    monkeypatch.setattr(dm.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(dm, "_HEADROOM", {})
    assert dm.allocatable_bytes(0) == 10_000 + 3_000 - 1_000 and calls == [0]
    # torch allocates 4,000 more (the cache grows from the driver's free memory): followed without a query
    state.update(allocated=5_000, reserved=7_000, free=6_000)
    for _ in range(100):
        assert dm.allocatable_bytes(0) == 8_000
    assert calls == [0]
    assert dm.allocatable_bytes(1) == 8_000 and calls == [0, 1]  # another device: its own query
    # memory taken outside torch shows after REFRESH_S
    state.update(free=1_000, now=100.0 + dm.REFRESH_S + 0.1)
    assert dm.allocatable_bytes(0) == 1_000 + 7_000 - 5_000 and calls == [0, 1, 0]


def test_moe_prefill_room_check_asks_the_driver_once(monkeypatch):
    """moe_prefill.use_grouped runs once per MoE layer and prefill step: it must not ask the driver each time (a
    cudaMemGetInfo per call, a device sync on some drivers, is the suspected cause of ~9 s of GPU idle in a
    1M-token prompt)."""
    from types import SimpleNamespace

    from kernels.triton import moe_prefill as mp

    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index: calls.append(index) or (100 << 30, 140 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda index: 0)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(mp, "interpreting", lambda: False)
    monkeypatch.setattr(dm, "_HEADROOM", {})
    x = SimpleNamespace(is_cuda=True, dtype=torch.bfloat16, shape=(8192, 4096), device=torch.device("cuda", 0))
    w1 = SimpleNamespace(fmt="fp4", shape=(256, 2048, 4096))
    ids = SimpleNamespace(shape=(8192, 6))
    if not hasattr(torch, "_grouped_mm"):
        monkeypatch.setattr(torch, "_grouped_mm", object(), raising=False)
    assert all(mp.use_grouped(x, w1, ids) for _ in range(64))
    assert calls == [0]
