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
