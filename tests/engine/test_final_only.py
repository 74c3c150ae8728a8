"""Non-streaming callers ask for the finished output only: no per-step snapshots are built for them."""

from __future__ import annotations

import asyncio

from engine import SamplingParams
from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind


def _engine(ckpt) -> LLMEngine:
    return LLMEngine(EngineArgs(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=4,
                                kv_cache_memory=16 << 20))


def test_step_reports_final_only_requests_once(tiny_ckpt):
    eng = _engine(tiny_ckpt)
    p = SamplingParams(temperature=0, max_tokens=5, ignore_eos=True)
    eng.add_request("stream", [5, 6, 7], p)
    eng.add_request("final", [5, 6, 7], p, output_kind=OutputKind.FINAL_ONLY)
    seen = {"stream": 0, "final": 0}
    finals = {}
    while eng.has_unfinished():
        for out in eng.step():
            seen[out.request_id] += 1
            if out.finished:
                finals[out.request_id] = out
    assert seen == {"stream": 5, "final": 1}
    assert finals["final"].outputs[0].token_ids == finals["stream"].outputs[0].token_ids
    assert len(finals["final"].outputs[0].token_ids) == 5


def test_async_generate_final_only(tiny_ckpt):
    async def main():
        llm = AsyncLLM(_engine(tiny_ckpt), owns_engine=True)
        await llm.start()
        try:
            p = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
            outs = [o async for o in llm.generate([5, 6, 7], p, "r1", output_kind=OutputKind.FINAL_ONLY)]
            assert len(outs) == 1 and outs[0].finished and len(outs[0].outputs[0].token_ids) == 4
        finally:
            await llm.shutdown()

    asyncio.run(main())
