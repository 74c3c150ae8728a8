"""Engine features on the synthetic tiny checkpoint (fp32, CPU): prompt/generated logprobs vs the
oracle, seeded sampling independent of the batch, n > 1, stop conditions, thinking budget, aborts
and cache accounting, admission errors, and the AsyncLLM front."""

from __future__ import annotations

import asyncio
import math

import pytest
import torch

from engine import LLM, SamplingParams
from engine.async_engine import AsyncLLM
from engine.errors import RequestTooLongError
from engine.llm_engine import LLMEngine
from models.config import tiny_config
from models.loader import load_state_dict

from tests.models.oracle import build_oracle, oracle_logits

BLOCK = 16


def make_engine(ckpt, **kw) -> LLMEngine:
    args = dict(device="cpu", dtype="float32", max_num_seqs=8, max_num_batched_tokens=256, num_kv_blocks=48,
                block_size=BLOCK)
    args.update(kw)
    return LLM(str(ckpt), **args).engine


def prompt(n: int, seed: int, vocab: int = 500) -> list[int]:
    return torch.randint(2, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def assert_empty(eng: LLMEngine) -> None:
    eng.kv.check_integrity()
    assert not eng.requests and not eng.scheduler.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.num_blocks
    assert eng.kv.num_free_slots == eng.kv.num_slots


def drive(eng: LLMEngine, reqs: list[tuple], max_steps: int = 1000) -> dict:
    """reqs: (request_id, prompt, params, step to add it at). -> request_id -> final RequestOutput."""
    done, step = {}, 0
    while len(done) < len(reqs):
        for rid, p, params, at in reqs:
            if at == step:
                eng.add_request(rid, p, params)
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out
        eng.kv.check_integrity()
        step += 1
        assert step < max_steps
    assert_empty(eng)
    return done


def run1(eng: LLMEngine, p, params: SamplingParams):
    return drive(eng, [("x", p, params, 0)])["x"]


GREEDY = dict(temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def eng(tiny_ckpt) -> LLMEngine:
    return make_engine(tiny_ckpt)


@pytest.fixture(scope="module")
def oracle(tiny_ckpt):
    sd = {k: v for k, v in load_state_dict(tiny_ckpt).items() if not k.startswith("mtp.")}
    return build_oracle(tiny_config(), sd)


# ---- logprobs ------------------------------------------------------------------------------------
def test_prompt_and_sample_logprobs_match_oracle(tiny_ckpt, oracle):
    eng = make_engine(tiny_ckpt, max_num_batched_tokens=7)  # prompt logprobs assembled over chunks
    p = prompt(40, 1)
    out = drive(eng, [("a", p, SamplingParams(max_tokens=4, prompt_logprobs=3, logprobs=2, **GREEDY), 0),
                      ("b", prompt(20, 2), SamplingParams(max_tokens=6, **GREEDY), 1)])["a"]
    gen = out.outputs[0].token_ids
    ref = oracle_logits(oracle, p + gen).log_softmax(-1)
    plp = out.prompt_logprobs
    assert len(plp) == len(p) and plp[0] is None
    for j in range(1, len(p)):
        d = ref[j - 1]
        assert p[j] in plp[j]
        top = d.topk(3).indices.tolist()
        assert set(top) <= set(plp[j]) and len(plp[j]) <= 4
        for t, lp in plp[j].items():
            assert math.isclose(lp, d[t].item(), abs_tol=1e-4), (j, t)
    lps = out.outputs[0].logprobs
    assert len(lps) == len(gen)
    for k, (t, d) in enumerate(zip(gen, lps)):
        row = ref[len(p) - 1 + k]
        assert t in d and set(row.topk(2).indices.tolist()) <= set(d) and len(d) <= 3
        assert t == row.argmax().item()  # greedy: the sampled token is the top-1
        for tid, lp in d.items():
            assert math.isclose(lp, row[tid].item(), abs_tol=1e-4)
    # logprobs=0: only the sampled token
    out = run1(eng, p[:10], SamplingParams(max_tokens=3, logprobs=0, temperature=1.0, seed=5))
    assert [list(d) for d in out.outputs[0].logprobs] == [[t] for t in out.outputs[0].token_ids]


# ---- seeded sampling -----------------------------------------------------------------------------
def test_seeded_sampling_independent_of_batch(eng, tiny_ckpt):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=10, ignore_eos=True)
    p = prompt(30, 3)
    alone = run1(eng, p, seeded).outputs[0].token_ids
    others = [("g0", prompt(35, 4), SamplingParams(max_tokens=6, **GREEDY), 0),
              ("r0", prompt(12, 5), SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True), 0),
              ("r1", prompt(40, 6), SamplingParams(temperature=0.7, top_k=20, max_tokens=4, ignore_eos=True), 2)]
    mixed = drive(eng, others + [("s", p, seeded, 1)])["s"].outputs[0].token_ids
    assert mixed == alone
    small = make_engine(tiny_ckpt, max_num_batched_tokens=7, num_kv_blocks=4)  # chunked + preempted
    again = drive(small, others + [("s", p, seeded, 1)])["s"].outputs[0].token_ids
    assert small.scheduler.num_preemptions_total > 0
    assert again == alone
    other_seed = run1(eng, p, seeded.with_updates(seed=99)).outputs[0].token_ids
    assert other_seed != alone


def test_n_samples_differ_and_reproduce(eng):
    params = SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=8, ignore_eos=True)
    p = prompt(20, 8)
    a = run1(eng, p, params)
    seqs = [o.token_ids for o in a.outputs]
    assert [o.index for o in a.outputs] == [0, 1, 2] and all(len(s) == 8 for s in seqs)
    assert len({tuple(s) for s in seqs}) == 3
    b = drive(eng, [("x", p, params, 1), ("y", prompt(9, 9), SamplingParams(max_tokens=5, **GREEDY), 0)])["x"]
    assert [o.token_ids for o in b.outputs] == seqs


# ---- stop conditions -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(eng):
    """A greedy run without stop conditions: (prompt, tokens, text)."""
    p = prompt(25, 10)
    o = run1(eng, p, SamplingParams(max_tokens=16, **GREEDY)).outputs[0]
    assert o.finish_reason == "length" and len(o.token_ids) == 16
    return p, o.token_ids, o.text


def test_stop_token_ids(eng, reference):
    p, toks, _ = reference
    t = toks[5]
    o = run1(eng, p, SamplingParams(max_tokens=16, stop_token_ids=[t], **GREEDY)).outputs[0]
    k = toks.index(t)
    assert o.token_ids == toks[:k + 1] and o.finish_reason == "stop" and o.stop_reason == t


def test_bad_words_avoid_the_greedy_word(eng, reference):
    """bad_words (vLLM): the engine tokenizes each word (with and without a leading space) and the
    sampler never emits a word's last token right after the rest of it."""
    p, toks, _ = reference
    enc = eng.tokenizer.encode
    k, word = next((i, w) for i, t in enumerate(toks)  # a generated token that is a whole word by itself
                   if (w := eng.tokenizer.decode([t])).strip() and [t] in (enc(w.lstrip()), enc(" " + w.lstrip())))
    o = run1(eng, p, SamplingParams(max_tokens=16, bad_words=[word], **GREEDY)).outputs[0]
    assert o.token_ids[:k] == toks[:k]  # identical up to the first place the word would appear
    assert toks[k] not in o.token_ids  # a single-token word: never generated
    with pytest.raises(ValueError, match="bad_words"):
        SamplingParams(bad_words=[" "])


def test_guided_choice_outputs_one_of_the_choices(eng):
    choices = ["alpha beta", "gamma", "delta epsilon zeta"]
    for seed in range(3):
        o = run1(eng, prompt(9, 40 + seed), SamplingParams(max_tokens=20, temperature=1.0, seed=seed,
                                                          guided_choice=choices)).outputs[0]
        assert o.text in choices and o.finish_reason == "stop", (o.text, o.finish_reason)
        assert o.token_ids[-1] == eng.tokenizer.eos_token_id
    o = run1(eng, prompt(9, 41), SamplingParams(max_tokens=20, temperature=0, guided_choice=["gamma"])).outputs[0]
    assert o.text == "gamma"


def test_stop_string(eng, reference):
    p, toks, text = reference
    stop = next(text[i:i + 2] for i in range(len(text) // 2, len(text) - 1)
                if "\ufffd" not in text[i:i + 2] and text[i:i + 2].strip())
    o = run1(eng, p, SamplingParams(max_tokens=16, stop=[stop], **GREEDY)).outputs[0]
    assert o.finish_reason == "stop" and o.stop_reason == stop
    assert o.text == text[:text.index(stop)]
    assert o.token_ids == toks[:len(o.token_ids)] and len(o.token_ids) < 16
    o = run1(eng, p, SamplingParams(max_tokens=16, stop=[stop], include_stop_str_in_output=True, **GREEDY))
    assert o.outputs[0].text == text[:text.index(stop) + len(stop)]


def test_eos_ignore_eos_and_min_tokens(eng, reference, monkeypatch):
    p, toks, _ = reference
    eos = toks[3]  # make a token the greedy run produces act as EOS
    k = toks.index(eos)
    monkeypatch.setattr(eng.tokenizer, "eos_token_id", eos)
    o = run1(eng, p, SamplingParams(temperature=0.0, max_tokens=16)).outputs[0]
    assert o.token_ids == toks[:k + 1] and o.finish_reason == "stop" and o.stop_reason is None
    o = run1(eng, p, SamplingParams(max_tokens=16, **GREEDY)).outputs[0]
    assert o.token_ids == toks and o.finish_reason == "length"
    m = k + 3
    o = run1(eng, p, SamplingParams(temperature=0.0, max_tokens=16, min_tokens=m)).outputs[0]
    assert o.token_ids[:k] == toks[:k] and eos not in o.token_ids[:m] and len(o.token_ids) >= m


def test_max_tokens_none_fills_context(tiny_ckpt):
    eng = make_engine(tiny_ckpt, max_model_len=24)
    o = run1(eng, prompt(13, 11), SamplingParams(max_tokens=None, **GREEDY)).outputs[0]
    assert len(o.token_ids) == 11 and o.finish_reason == "length"


def test_thinking_budget_forces_think_end(eng, reference):
    p, toks, _ = reference
    end_id = eng.tokenizer.token_to_id("</think>")
    assert end_id is not None and end_id not in toks
    params = SamplingParams(max_tokens=10, thinking_budget=4, thinking_end_token_id=end_id,
                            skip_special_tokens=False, **GREEDY)
    o = run1(eng, p, params).outputs[0]
    assert o.token_ids[:5] == toks[:4] + [end_id] and len(o.token_ids) == 10
    assert "</think>" in o.text
    # the end token generated within the budget is not forced again
    params = params.with_updates(thinking_budget=2, thinking_end_token_id=toks[1])
    o = run1(eng, p, params).outputs[0]
    assert o.token_ids == toks[:10]


# ---- aborts and accounting -----------------------------------------------------------------------
def test_abort_waiting_running_and_mid_prefill(tiny_ckpt):
    eng = make_engine(tiny_ckpt, max_num_seqs=2, max_num_batched_tokens=7)
    params = SamplingParams(max_tokens=20, **GREEDY)
    eng.add_request("running", prompt(3, 13), params)
    eng.add_request("prefill", prompt(40, 12), params)  # 40 tokens at <= 7 per step: several steps
    eng.add_request("waiting", prompt(5, 14), params)  # max_num_seqs=2: stays waiting
    eng.add_request("n2", prompt(6, 15), params.with_updates(n=2))
    eng.add_request("keep", prompt(4, 16), SamplingParams(max_tokens=3, **GREEDY))
    for _ in range(2):
        eng.step()
        eng.kv.check_integrity()
    assert eng.scheduler.get("prefill#0").num_computed_tokens < 40
    assert eng.scheduler.get("running#0").num_output_tokens > 0
    assert eng.scheduler.get("waiting#0").num_computed_tokens == 0
    for rid in ("waiting", "prefill", "running", "n2"):
        out = eng.abort_request(rid)
        assert out.finished and all(o.finish_reason == "abort" for o in out.outputs)
        eng.kv.check_integrity()
    assert eng.abort_request("prefill") is None and eng.abort_request("nope") is None
    assert list(eng.requests) == ["keep"]
    done = {}
    while eng.has_unfinished():
        done.update({o.request_id: o for o in eng.step() if o.finished})
        eng.kv.check_integrity()
    assert set(done) == {"keep"} and len(done["keep"].outputs[0].token_ids) == 3
    assert_empty(eng)
    assert eng.stats().num_requests == 0 and eng.stats().kv_cache_usage == 0.0


# ---- admission errors ----------------------------------------------------------------------------
def test_too_long_requests(tiny_ckpt):
    eng = make_engine(tiny_ckpt, max_model_len=64)
    with pytest.raises(RequestTooLongError) as e:
        eng.add_request("a", prompt(60, 17), SamplingParams(max_tokens=10))
    assert str(e.value) == ("This model's maximum context length is 64 tokens. However, you requested 70 tokens "
                            "(60 in the messages, 10 in the completion). Please reduce the length of the "
                            "messages or completion.")
    with pytest.raises(RequestTooLongError) as e:
        eng.add_request("b", prompt(64, 17), SamplingParams(max_tokens=None))
    assert str(e.value) == ("This model's maximum context length is 64 tokens. However, your request has 64 "
                            "input tokens. Please reduce the length of the input messages.")
    assert isinstance(e.value, ValueError)
    small = make_engine(tiny_ckpt, num_kv_blocks=2, max_model_len=64)  # cache holds 32 tokens
    with pytest.raises(RequestTooLongError, match="KV cache can hold at most 32 tokens"):
        small.add_request("c", prompt(30, 18), SamplingParams(max_tokens=10))
    assert_empty(eng)
    assert_empty(small)
    assert run1(eng, prompt(54, 17), SamplingParams(max_tokens=10, **GREEDY)).outputs[0].finish_reason == "length"


def test_invalid_requests(eng):
    V = eng.model_config.vocab_size
    for bad in ([1, -1, 2], [V], [3, V + 5]):
        with pytest.raises(ValueError, match="out of range"):
            eng.add_request("bad", bad, SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", [], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        eng.add_request("empty", "", SamplingParams())
    with pytest.raises(ValueError, match="logit_bias token ids out of range"):
        eng.add_request("bias", [3, 4], SamplingParams(logit_bias={V: 1.0}))
    with pytest.raises(ValueError, match="allowed_token_ids token ids out of range"):
        eng.add_request("allow", [3, 4], SamplingParams(allowed_token_ids=[2, V + 1]))
    with pytest.raises(ValueError, match="nothing could be sampled"):
        eng.add_request("allow", [3, 4], SamplingParams(allowed_token_ids=[eng.tokenizer.eos_token_id], min_tokens=2))
    assert_empty(eng)
    eng.add_request("dup", prompt(5, 19), SamplingParams(max_tokens=4, **GREEDY))
    with pytest.raises(ValueError, match="duplicate request id"):
        eng.add_request("dup", prompt(6, 20), SamplingParams(max_tokens=4))
    outs = []
    while eng.has_unfinished():
        outs += [o for o in eng.step() if o.finished]
    assert [o.request_id for o in outs] == ["dup"] and outs[0].prompt_token_ids == prompt(5, 19)
    assert len(outs[0].outputs[0].token_ids) == 4
    assert_empty(eng)


def test_offline_generate_strings_and_params_list(tiny_ckpt):
    llm = LLM(str(tiny_ckpt), device="cpu", dtype="float32", num_kv_blocks=32, block_size=BLOCK)
    outs = llm.generate(["Hello world", prompt(7, 21)],
                        [SamplingParams(max_tokens=3, **GREEDY), SamplingParams(max_tokens=5, **GREEDY)])
    assert [len(o.outputs[0].token_ids) for o in outs] == [3, 5]
    assert outs[0].prompt == "Hello world" and outs[0].prompt_token_ids == llm.tokenizer.encode("Hello world")
    with pytest.raises(ValueError):  # one bad prompt: nothing stays queued
        llm.generate([prompt(5, 22), []], SamplingParams(max_tokens=2))
    assert_empty(llm.engine)


# ---- AsyncLLM ------------------------------------------------------------------------------------
async def _wait_idle(llm: AsyncLLM, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while llm.stats().num_requests or llm._cmds.qsize():
        assert loop.time() < end, "engine did not go idle"
        await asyncio.sleep(0.01)


def test_async_engine(tiny_ckpt):
    eng = make_engine(tiny_ckpt, max_num_seqs=4)
    ref = {i: run1(eng, prompt(5 + i, 30 + i), SamplingParams(max_tokens=6, **GREEDY)).outputs[0].token_ids
           for i in range(10)}

    async def main():
        llm = AsyncLLM(eng)
        await llm.start()
        try:
            # growing snapshots ending in the finished one
            snaps = [o async for o in llm.generate(prompt(8, 40), SamplingParams(max_tokens=5, **GREEDY), "s")]
            lens = [len(s.outputs[0].token_ids) for s in snaps]
            assert lens == sorted(lens) and lens[-1] == 5 and snaps[-1].finished
            assert not any(s.finished for s in snaps[:-1])

            # closing the iterator early aborts the request and frees its cache
            gen = llm.generate(prompt(10, 41), SamplingParams(max_tokens=200, **GREEDY), "early")
            first = await gen.__anext__()
            assert not first.finished
            await gen.aclose()
            await _wait_idle(llm)
            assert "early" not in eng.requests and eng.kv.num_free_blocks == eng.kv.num_blocks

            # abort() of a request someone is still consuming ends its stream with finish_reason "abort"
            async def consume():
                return [o async for o in llm.generate(prompt(10, 42), SamplingParams(max_tokens=200, **GREEDY),
                                                      "aborted")]

            task = asyncio.create_task(consume())
            while "aborted" not in eng.requests or not eng.requests["aborted"].samples[0].seq.output_token_ids:
                await asyncio.sleep(0.005)
            await llm.abort("aborted")
            outs = await asyncio.wait_for(task, 20)
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "abort"

            # admission errors reach the caller
            with pytest.raises(RequestTooLongError):
                await llm.generate(prompt(10, 43), SamplingParams(max_tokens=10_000), "long").__anext__()

            # many concurrent requests (more than max_num_seqs) all complete with their solo outputs
            async def one(i):
                last = None
                async for o in llm.generate(prompt(5 + i, 30 + i), SamplingParams(max_tokens=6, **GREEDY), f"c{i}"):
                    last = o
                return last

            res = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 60)
            assert all(r.finished for r in res)
            assert {i: r.outputs[0].token_ids for i, r in enumerate(res)} == ref
            await _wait_idle(llm)
        finally:
            await llm.shutdown()

    asyncio.run(main())
    assert_empty(eng)
