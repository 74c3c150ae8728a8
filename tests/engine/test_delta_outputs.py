"""DELTA outputs carry exactly what CUMULATIVE snapshots add step by step (tokens, text, logprobs),
list every sample every time, end with the finish reasons and token counts, and concatenate to the
FINAL_ONLY result: seeded n>1 sampling with logprobs, prompt logprobs and stop strings."""

from __future__ import annotations

import asyncio

from engine import SamplingParams
from engine.async_engine import AsyncLLM
from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind, RequestOutput

PROMPT = [5, 6, 7, 8, 9, 10, 11]


def _engine(ckpt) -> LLMEngine:
    return LLMEngine(EngineArgs(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=8,
                                kv_cache_memory=16 << 20))


def _run(eng: LLMEngine, rid: str, params: SamplingParams, kind: OutputKind) -> list[RequestOutput]:
    eng.add_request(rid, PROMPT, params, output_kind=kind)
    outs = []
    while eng.has_unfinished():
        outs += [o for o in eng.step() if o.request_id == rid]
    return outs


def _params(**kw) -> SamplingParams:
    base = dict(n=3, temperature=1.0, seed=1234, max_tokens=24, logprobs=2, prompt_logprobs=1, ignore_eos=True)
    base.update(kw)
    return SamplingParams(**base)


def _stop_string(eng: LLMEngine) -> str:
    """A 3-character piece of sample 1's seeded text (no U+FFFD), found by a run without stops."""
    text = _run(eng, "probe", _params(), OutputKind.FINAL_ONLY)[0].outputs[1].text
    return next(text[i:i + 3] for i in range(4, len(text) - 3) if "\ufffd" not in text[i:i + 3])


def _concat(deltas: list[RequestOutput], k: int) -> tuple[list[int], str, list]:
    ids, text, lps = [], "", []
    for o in deltas:
        c = o.outputs[k]
        ids += c.token_ids
        text += c.text
        lps += c.logprobs
    return ids, text, lps


def test_deltas_are_the_differences_of_cumulative_snapshots(tiny_ckpt):
    eng = _engine(tiny_ckpt)
    stop = _stop_string(eng)
    params = _params(stop=[stop])
    cum = _run(eng, "cum", params, OutputKind.CUMULATIVE)
    delta = _run(eng, "delta", params, OutputKind.DELTA)
    final = _run(eng, "final", params, OutputKind.FINAL_ONLY)
    assert len(final) == 1 and len(cum) == len(delta) > 1
    assert {o.kind for o in delta} == {OutputKind.DELTA} and final[0].kind is OutputKind.FINAL_ONLY
    assert any(c.stop_reason == stop for c in final[0].outputs), "the stop string never matched"
    assert any(c.finish_reason == "length" for c in final[0].outputs)  # one sample ran past it
    prev = None
    for c_out, d_out in zip(cum, delta):
        assert d_out.finished == c_out.finished and [c.index for c in d_out.outputs] == [0, 1, 2]
        for c, d in zip(c_out.outputs, d_out.outputs):
            p = prev.outputs[c.index] if prev is not None else None
            n_prev = len(p.token_ids) if p is not None else 0
            assert d.token_ids == c.token_ids[n_prev:]
            assert d.logprobs == c.logprobs[n_prev:]
            assert d.text == c.text[len(p.text) if p is not None else 0:]
            assert d.num_tokens == c.num_tokens == len(c.token_ids)
            assert (d.finish_reason, d.stop_reason) == (c.finish_reason, c.stop_reason)
        prev = c_out
    for k, f in enumerate(final[0].outputs):
        assert _concat(delta, k) == (f.token_ids, f.text, f.logprobs)
        assert delta[-1].outputs[k].num_tokens == len(f.token_ids)
        assert (delta[-1].outputs[k].finish_reason, delta[-1].outputs[k].stop_reason) == \
            (f.finish_reason, f.stop_reason)
    # prompt logprobs ride on one delta output, complete
    carried = [o.prompt_logprobs for o in delta if o.prompt_logprobs is not None]
    assert carried == [final[0].prompt_logprobs] and len(carried[0]) == len(PROMPT) and carried[0][1] is not None


def test_delta_abort_reports_the_rest(tiny_ckpt):
    eng = _engine(tiny_ckpt)
    eng.add_request("a", PROMPT, _params(max_tokens=100, logprobs=None, prompt_logprobs=None),
                    output_kind=OutputKind.DELTA)
    seen = [0, 0, 0]
    for _ in range(4):
        for o in eng.step():
            for c in o.outputs:
                seen[c.index] += len(c.token_ids)
    out = eng.abort_request("a")
    assert out.finished and out.kind is OutputKind.DELTA
    assert [c.finish_reason for c in out.outputs] == ["abort"] * 3
    assert all(c.token_ids == [] and c.num_tokens == seen[c.index] == 4 for c in out.outputs)


def test_async_delta_stream_concatenates_to_final_only(tiny_ckpt):
    async def main():
        llm = AsyncLLM(_engine(tiny_ckpt), owns_engine=True)
        await llm.start()
        try:
            p = _params(stop=["\n"])
            deltas = [o async for o in llm.generate(PROMPT, p, "d", output_kind=OutputKind.DELTA)]
            (final,) = [o async for o in llm.generate(PROMPT, p, "f", output_kind=OutputKind.FINAL_ONLY)]
            return deltas, final
        finally:
            await llm.shutdown()

    deltas, final = asyncio.run(main())
    assert deltas[-1].finished and not any(o.finished for o in deltas[:-1])
    for k, f in enumerate(final.outputs):
        assert _concat(deltas, k) == (f.token_ids, f.text, f.logprobs)


def test_merged_deltas_equal_their_pieces(tiny_ckpt):
    """merge_deltas folds consecutive DELTA outputs into one with the same concatenation, the later state and
    the prompt logprobs of the first; it refuses other kinds, other requests and outputs after the last."""
    import pytest

    from engine.outputs import merge_deltas
    deltas = _run(_engine(tiny_ckpt), "m", _params(), OutputKind.DELTA)
    assert len(deltas) >= 4
    merged = deltas[0]
    for d in deltas[1:]:
        merged = merge_deltas(merged, d)
    assert merged.finished and merged.prompt_logprobs == deltas[0].prompt_logprobs
    for k, c in enumerate(merged.outputs):
        assert (c.token_ids, c.text, c.logprobs) == _concat(deltas, k)
        last = deltas[-1].outputs[k]
        assert (c.finish_reason, c.stop_reason, c.num_tokens) == (last.finish_reason, last.stop_reason, last.num_tokens)
    two = merge_deltas(deltas[1], deltas[2])
    assert not two.finished and two.prompt_logprobs is None and two.metrics == deltas[2].metrics
    with pytest.raises(ValueError, match="already finished"):
        merge_deltas(deltas[-1], deltas[-1])
    cum = _run(_engine(tiny_ckpt), "c", _params(), OutputKind.CUMULATIVE)
    with pytest.raises(ValueError, match="DELTA"):
        merge_deltas(cum[0], cum[1])


def test_slow_delta_consumer_gets_merged_outputs_with_the_same_text(tiny_ckpt):
    """A consumer that falls behind the engine receives the outputs waiting for it as one (fewer events),
    and the stream still concatenates to the FINAL_ONLY result."""
    async def main():
        llm = AsyncLLM(_engine(tiny_ckpt), owns_engine=True)
        await llm.start()
        try:
            p = _params(max_tokens=40)
            deltas = []
            async for o in llm.generate(PROMPT, p, "slow", output_kind=OutputKind.DELTA):
                deltas.append(o)
                await asyncio.sleep(0.05)  # far slower than a tiny CPU step: outputs pile up meanwhile
            (final,) = [o async for o in llm.generate(PROMPT, p, "f", output_kind=OutputKind.FINAL_ONLY)]
            return deltas, final
        finally:
            await llm.shutdown()

    deltas, final = asyncio.run(main())
    assert len(deltas) < 40  # merged: fewer outputs than steps
    assert any(len(o.outputs[0].token_ids) > 1 for o in deltas)
    assert deltas[-1].finished and not any(o.finished for o in deltas[:-1])
    for k, f in enumerate(final.outputs):
        assert _concat(deltas, k) == (f.token_ids, f.text, f.logprobs)


def test_slow_consumer_sees_the_merged_outputs_then_the_engine_error(tiny_ckpt):
    """An engine error queued behind outputs a slow consumer has not read yet comes after them (merged)."""
    import pytest

    from engine.errors import EngineDeadError

    async def main():
        llm = AsyncLLM(_engine(tiny_ckpt), owns_engine=True)
        left = [6]

        def hook():
            left[0] -= 1
            if left[0] < 0:
                raise RuntimeError("injected")
        llm.fault_hook = hook
        await llm.start()
        got = []
        try:
            with pytest.raises(EngineDeadError):
                async for o in llm.generate(PROMPT, _params(max_tokens=40), "e", output_kind=OutputKind.DELTA):
                    got.append(o)
                    await asyncio.sleep(0.05)
        finally:
            await llm.shutdown()
        return got

    got = asyncio.run(main())
    assert got and sum(len(o.outputs[0].token_ids) for o in got) >= 5  # the outputs before the fault all arrived
