"""While AsyncLLM's engine loop runs in the server process it shortens Python's GIL switch interval (the
engine thread otherwise waits up to 5 ms for the event loop to hand the GIL over, about half an H200 decode
step), never raises a shorter interval the host chose, and restores the previous one at shutdown."""

from __future__ import annotations

import asyncio
import sys

import pytest

import engine.async_engine as async_engine
from engine.async_engine import AsyncLLM
from engine.config import EngineArgs


@pytest.mark.parametrize("host_interval", [0.005, 1e-4])
def test_engine_loop_shortens_and_restores_the_switch_interval(tiny_ckpt, host_interval):
    saved = sys.getswitchinterval()
    sys.setswitchinterval(host_interval)
    try:
        eng = AsyncLLM.from_engine_args(EngineArgs(model=str(tiny_ckpt), device="cpu", dtype="float32",
                                                   max_num_seqs=2, kv_cache_memory=16 << 20), defer_load=True)

        async def run():
            await eng.start()
            during = sys.getswitchinterval()
            await eng.shutdown()
            return during
        during = asyncio.run(run())
        want = min(host_interval, async_engine.ENGINE_GIL_SWITCH_INTERVAL_S)
        assert during == pytest.approx(want) and sys.getswitchinterval() == pytest.approx(host_interval)
    finally:
        sys.setswitchinterval(saved)
