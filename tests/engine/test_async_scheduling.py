"""The overlapped engine loop (`EngineArgs.async_scheduling`, engine/async_step.py) gives the outputs
of the synchronous loop: the same requests, added at the same steps, produce identical tokens, text,
logprobs, finish / stop reasons and token counts with the loop on and off — greedy and seeded rows,
n > 1, stop strings / tokens, EOS, min_tokens, max_tokens, prompt logprobs, structured outputs and
the other host-dependent sampling features (which take synchronous steps), chunked prefill,
recompute preemption with a tiny cache and aborts mid-flight. `kv.check_integrity()` runs after every
step, and the loop really overlaps: decode inputs come from the previous step's device tensor
before the host has seen those tokens."""

from __future__ import annotations

import asyncio

import pytest
import torch

from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind
from engine.sampling_params import SamplingParams

BLOCK = 16
GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(ckpt, async_scheduling: bool, **kw) -> LLMEngine:
    args = dict(model=str(ckpt), device="cpu", dtype="float32", max_num_seqs=8, max_num_batched_tokens=256,
                num_kv_blocks=48, block_size=BLOCK, async_scheduling=async_scheduling)
    args.update(kw)
    return LLMEngine(EngineArgs(**args))


def prompt(n: int, seed: int, vocab: int = 500) -> list[int]:
    return torch.randint(2, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def drive(eng: LLMEngine, reqs: list[tuple], kind: OutputKind = OutputKind.CUMULATIVE,
          abort_at: dict[str, int] | None = None, max_steps: int = 2000) -> dict[str, dict]:
    """reqs: (request_id, prompt, params, step to add it at); abort_at: request_id -> abort it once an
    output shows that many tokens of sample 0. -> request_id -> summary of its finished output (DELTA
    pieces concatenated). Checks the cache after every step and that the engine ends empty."""
    got: dict[str, dict] = {}
    step = 0
    abort_at = dict(abort_at or {})

    def take(out) -> None:
        r = got.setdefault(out.request_id, {"samples": {}, "prompt_logprobs": None})
        if out.prompt_logprobs is not None:
            r["prompt_logprobs"] = (out.prompt_logprobs, out.prompt_logprob_ranks)
        for o in out.outputs:
            s = r["samples"].setdefault(o.index, {"token_ids": [], "text": "", "logprobs": []})
            if out.kind is OutputKind.DELTA:
                s["token_ids"] += o.token_ids
                s["text"] += o.text
                s["logprobs"] += o.logprobs or []
            else:
                s.update(token_ids=list(o.token_ids), text=o.text, logprobs=list(o.logprobs or []))
            s.update(finish_reason=o.finish_reason, stop_reason=o.stop_reason, num_tokens=o.num_tokens)
        r["finished"] = out.finished

    while eng.has_unfinished() or step <= max(at for *_, at in reqs):
        for rid, p, params, at in reqs:
            if at == step:
                eng.add_request(rid, p, params, output_kind=kind)
        for out in eng.step():
            take(out)
            n = abort_at.get(out.request_id)
            if n is not None and not out.finished and len(got[out.request_id]["samples"][0]["token_ids"]) >= n:
                del abort_at[out.request_id]
                take(eng.abort_request(out.request_id))
        eng.kv.check_integrity()
        step += 1
        assert step < max_steps
    eng.kv.check_integrity()
    assert not eng.requests and not eng.scheduler.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.num_blocks and eng.kv.num_free_slots == eng.kv.num_slots
    assert all(r["finished"] for r in got.values())
    return got


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for rid in a:
        ra, rb = a[rid], b[rid]
        assert ra["samples"].keys() == rb["samples"].keys(), rid
        for k, sa in ra["samples"].items():
            sb = rb["samples"][k]
            for key in ("token_ids", "text", "finish_reason", "stop_reason", "num_tokens"):
                assert sa[key] == sb[key], (rid, k, key, sa[key], sb[key])
            assert len(sa["logprobs"]) == len(sb["logprobs"])
            for da, db in zip(sa["logprobs"], sb["logprobs"]):
                assert list(da) == list(db), (rid, k)
                assert all(abs(da[t] - db[t]) <= 1e-4 for t in da)
        pa, pb = ra["prompt_logprobs"], rb["prompt_logprobs"]
        assert (pa is None) == (pb is None), rid
        if pa is not None:
            assert pa[1] == pb[1]
            for da, db in zip(pa[0], pb[0]):
                assert (da is None) == (db is None)
                if da is not None:
                    assert list(da) == list(db) and all(abs(da[t] - db[t]) <= 1e-4 for t in da)


def run_both(ckpt, reqs, kind=OutputKind.CUMULATIVE, abort_at=None, setup=None, **kw):
    """The same workload on a synchronous and an overlapped engine -> (sync result, async result, engines)."""
    res, engines = [], []
    for on in (False, True):
        eng = make_engine(ckpt, on, **kw)
        assert eng.async_scheduling is on
        if setup is not None:
            setup(eng)
        sampled = [0]
        sampler = eng.sampler

        def count(logits, meta, _sampler=sampler):
            sampled[0] += logits.shape[0]
            return _sampler(logits, meta)

        eng.sampler = count
        res.append(drive(eng, reqs, kind, abort_at))
        engines.append(eng)
        num_out = sum(s["num_tokens"] for r in res[-1].values() for s in r["samples"].values())
        assert eng.generation_tokens_total == num_out  # tokens of aborted rows in flight are not counted
        if not abort_at:  # a sequence that stopped is never sampled again (its next forward row is wasted)
            assert sampled[0] == num_out
    assert_same(res[0], res[1])
    assert engines[0].prompt_tokens_total == engines[1].prompt_tokens_total
    return res[0], res[1], engines


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    """A greedy run without stop conditions: (prompt, tokens, text)."""
    eng = make_engine(tiny_ckpt, False)
    p = prompt(25, 10)
    o = drive(eng, [("x", p, SamplingParams(max_tokens=16, **GREEDY), 0)])["x"]["samples"][0]
    assert o["finish_reason"] == "length" and len(o["token_ids"]) == 16
    return p, o["token_ids"], o["text"]


def mixed_requests(reference) -> list[tuple]:
    p, toks, text = reference
    stop = next(text[i:i + 2] for i in range(len(text) // 2, len(text) - 1)
                if "\ufffd" not in text[i:i + 2] and text[i:i + 2].strip())
    return [
        ("greedy", prompt(37, 1), SamplingParams(max_tokens=9, **GREEDY), 0),
        ("seeded", prompt(20, 2), SamplingParams(temperature=0.9, top_k=40, top_p=0.9, seed=11, max_tokens=12,
                                                 ignore_eos=True), 0),
        ("n3", prompt(12, 3), SamplingParams(n=3, temperature=1.0, seed=5, max_tokens=7, ignore_eos=True), 1),
        ("logprobs", prompt(30, 4), SamplingParams(max_tokens=6, logprobs=3, temperature=0.8, seed=2,
                                                   ignore_eos=True), 1),
        ("stop_tok", p, SamplingParams(max_tokens=16, stop_token_ids=[toks[5]], **GREEDY), 2),
        ("stop_str", p, SamplingParams(max_tokens=16, stop=[stop], **GREEDY), 3),
        ("stop_incl", p, SamplingParams(max_tokens=16, stop=[stop], include_stop_str_in_output=True, **GREEDY), 3),
        ("eos", p, SamplingParams(max_tokens=16, temperature=0.0), 4),  # toks[3] acts as EOS (setup)
        ("min_tokens", p, SamplingParams(max_tokens=16, temperature=0.0, min_tokens=toks.index(toks[3]) + 3), 4),
        ("one", prompt(9, 5), SamplingParams(max_tokens=1, **GREEDY), 5),
        ("long_prompt", prompt(70, 6), SamplingParams(max_tokens=5, temperature=0.7, seed=3, ignore_eos=True), 6),
    ]


def eos_is(token: int):
    def setup(eng: LLMEngine) -> None:
        eng.tokenizer.eos_token_id = token  # each engine loads its own tokenizer
    return setup


@pytest.mark.parametrize("kind", [OutputKind.CUMULATIVE, OutputKind.DELTA, OutputKind.FINAL_ONLY])
def test_mixed_requests_identical(tiny_ckpt, reference, kind):
    reqs = mixed_requests(reference)
    a, _, _ = run_both(tiny_ckpt, reqs, kind, setup=eos_is(reference[1][3]))
    assert a["stop_tok"]["samples"][0]["finish_reason"] == "stop"
    assert a["stop_str"]["samples"][0]["stop_reason"] is not None
    assert a["eos"]["samples"][0]["token_ids"][-1] == reference[1][3]
    assert len(a["min_tokens"]["samples"][0]["token_ids"]) > len(a["eos"]["samples"][0]["token_ids"])


def test_chunked_prefill_and_prompt_logprobs_identical(tiny_ckpt, reference):
    reqs = mixed_requests(reference)[:4] + [
        ("plp", prompt(45, 7), SamplingParams(max_tokens=4, prompt_logprobs=2, logprobs=1, **GREEDY), 1),
        ("plp_n2", prompt(33, 8), SamplingParams(n=2, max_tokens=3, prompt_logprobs=0, temperature=1.0, seed=9,
                                                 ignore_eos=True), 2)]
    a, _, _ = run_both(tiny_ckpt, reqs, OutputKind.DELTA, max_num_batched_tokens=11)
    assert len(a["plp"]["prompt_logprobs"][0]) == 45 and a["plp"]["prompt_logprobs"][0][0] is None


def test_preemption_with_a_tiny_cache_identical(tiny_ckpt, reference):
    reqs = mixed_requests(reference)
    _, _, (sync, over) = run_both(tiny_ckpt, reqs, setup=eos_is(reference[1][3]), num_kv_blocks=7,
                                  max_num_batched_tokens=13)
    assert sync.scheduler.num_preemptions_total > 0 and over.scheduler.num_preemptions_total > 0


def test_host_dependent_sampling_identical(tiny_ckpt, reference):
    """Grammars, guided_choice, penalties, multi-token bad words and the thinking budget read the
    previous tokens: the loop samples N+1 only after processing N, mixed with plain rows."""
    p, toks, _ = reference
    with_end = SamplingParams(max_tokens=10, thinking_budget=4, thinking_end_token_id=toks[9],
                              skip_special_tokens=False, **GREEDY)
    reqs = [
        ("plain", prompt(30, 20), SamplingParams(max_tokens=14, **GREEDY), 0),
        ("regex", prompt(9, 21), SamplingParams(max_tokens=12, temperature=1.0, seed=4,
                                                guided_regex=r"(cat|dog)s? [0-9]{2,3}"), 0),
        ("choice", prompt(9, 22), SamplingParams(max_tokens=20, temperature=1.0, seed=1,
                                                 guided_choice=["alpha beta", "gamma"]), 1),
        ("json", prompt(11, 23), SamplingParams(max_tokens=15, temperature=1.0, seed=6, guided_json_object=True), 2),
        ("penalties", p, SamplingParams(max_tokens=12, repetition_penalty=1.3, frequency_penalty=0.5,
                                        presence_penalty=0.2, **GREEDY), 3),
        ("pen_seeded", prompt(14, 25), SamplingParams(n=2, max_tokens=16, temperature=1.0, seed=12, top_k=3,
                                                      frequency_penalty=1.5, min_tokens=5, ignore_eos=True), 1),
        ("bad_words", p, SamplingParams(max_tokens=12, bad_words_token_ids=[[toks[2], toks[3]]], **GREEDY), 3),
        ("thinking", p, with_end, 4),
        ("seeded", prompt(15, 24), SamplingParams(temperature=1.0, seed=8, max_tokens=10, ignore_eos=True), 5),
    ]
    a, _, _ = run_both(tiny_ckpt, reqs)
    assert a["choice"]["samples"][0]["text"] in ("alpha beta", "gamma")
    assert toks[3] not in a["bad_words"]["samples"][0]["token_ids"][:4]
    assert a["thinking"]["samples"][0]["token_ids"][4] == toks[9]


def test_abort_mid_flight_identical(tiny_ckpt, reference):
    """An abort drops the token still in flight: the aborted output holds the tokens the caller has
    seen, as in the synchronous loop; the other requests are untouched."""
    reqs = mixed_requests(reference)
    a, _, _ = run_both(tiny_ckpt, reqs, OutputKind.DELTA, abort_at={"greedy": 3, "seeded": 1},
                       setup=eos_is(reference[1][3]), max_num_batched_tokens=17)
    full, _, _ = run_both(tiny_ckpt, reqs, OutputKind.DELTA, setup=eos_is(reference[1][3]))
    for rid, n in (("greedy", 3), ("seeded", 1)):
        s = a[rid]["samples"][0]
        assert s["finish_reason"] == "abort" and s["token_ids"] == full[rid]["samples"][0]["token_ids"][:n]
    # n > 1 aborted mid-flight (its samples may be chunked differently in the two loops): every sample
    # ends "abort" holding a prefix of its full output
    eng = make_engine(tiny_ckpt, True, max_num_batched_tokens=17)
    eos_is(reference[1][3])(eng)
    b = drive(eng, reqs, OutputKind.DELTA, abort_at={"n3": 2})
    for k, s in b["n3"]["samples"].items():
        whole = full["n3"]["samples"][k]["token_ids"]
        assert s["finish_reason"] == "abort" and s["token_ids"] == whole[:len(s["token_ids"])]
    assert len(b["n3"]["samples"][0]["token_ids"]) == 2


def test_the_loop_overlaps(tiny_ckpt):
    """Step N+1 is launched before the host has step N's tokens: its decode inputs come from the
    device tensor, the sequences hold a pending token meanwhile, and the first step returns nothing.
    Without the switch no input ever comes from the device."""
    for on in (False, True):
        eng = make_engine(tiny_ckpt, on)
        seen: list[tuple[int, int]] = []  # (rows taking device inputs, rows with a pending token)
        execute = eng.runner.execute

        def spy(sched, want_prompt, device_tokens=None, _execute=execute):
            pending = sum(c.seq.num_pending_tokens > 0 for c in sched.chunks)
            seen.append((len(device_tokens.chunk_idx) if device_tokens is not None else 0, pending))
            return _execute(sched, want_prompt, device_tokens) if device_tokens is not None else \
                _execute(sched, want_prompt)

        eng.runner.execute = spy
        eng.add_request("a", prompt(10, 30), SamplingParams(max_tokens=6, **GREEDY))
        eng.add_request("b", prompt(13, 31), SamplingParams(max_tokens=4, temperature=1.0, seed=3, ignore_eos=True))
        first = eng.step()
        steps = 1
        while eng.has_unfinished():
            eng.step()
            eng.kv.check_integrity()
            steps += 1
        if on:
            assert first == []  # step 1's tokens are processed by the next call
            assert all(d == p == 2 for d, p in seen[1:4])  # both decode from device inputs
            assert seen[4:] == [(1, 1), (1, 1)]  # b's 4th token ends it: only a is launched
            assert steps == 7  # the 7th call only processes the 6th launch
        else:
            assert all(d == p == 0 for d, p in seen) and len(first) == 2
            assert steps == 6
        assert len(seen) == 6  # as many launches either way: no step past max_tokens


def test_no_input_past_the_last_token(tiny_ckpt):
    """A sequence whose pending token reaches max_tokens / max_model_len is not scheduled again: no
    chunk ever feeds a sequence's final token, as in the synchronous loop."""
    eng = make_engine(tiny_ckpt, True, max_model_len=40)
    schedule = eng.scheduler.schedule
    fed: dict[str, int] = {}

    def spy():
        out = schedule()
        for c in out.chunks:
            fed[c.seq.seq_id] = max(fed.get(c.seq.seq_id, 0), c.start + c.num_tokens)
        return out

    eng.scheduler.schedule = spy
    reqs = [("m", prompt(12, 40), SamplingParams(max_tokens=5, **GREEDY), 0),
            ("ctx", prompt(30, 41), SamplingParams(max_tokens=None, **GREEDY), 0)]
    got = drive(eng, reqs)
    assert len(got["m"]["samples"][0]["token_ids"]) == 5 and len(got["ctx"]["samples"][0]["token_ids"]) == 10
    assert fed == {"m#0": 12 + 5 - 1, "ctx#0": 40 - 1}


def test_async_engine_front(tiny_ckpt, reference):
    """AsyncLLM drives the overlapped loop: streamed deltas equal the synchronous engine's output."""
    from engine.async_engine import AsyncLLM

    reqs = mixed_requests(reference)[:4]
    want = drive(make_engine(tiny_ckpt, False), [(r, p, sp, 0) for r, p, sp, _ in reqs])

    async def main() -> dict:
        llm = AsyncLLM(make_engine(tiny_ckpt, True))
        await llm.start()
        try:
            async def one(rid, p, sp):
                toks: dict[int, list[int]] = {}
                async for out in llm.generate(p, sp, rid, output_kind=OutputKind.DELTA):
                    for o in out.outputs:
                        toks.setdefault(o.index, []).extend(o.token_ids)
                return rid, toks
            return dict(await asyncio.gather(*(one(r, p, sp) for r, p, sp, _ in reqs)))
        finally:
            await llm.shutdown()

    got = asyncio.run(main())
    for rid, toks in got.items():
        assert toks == {k: s["token_ids"] for k, s in want[rid]["samples"].items()}


def test_engine_args_switch():
    args = EngineArgs()
    assert args.resolve_async_scheduling(torch.device("cuda")) is True
    assert args.resolve_async_scheduling(torch.device("cpu")) is False
    assert EngineArgs(async_scheduling=True).resolve_async_scheduling(torch.device("cpu")) is True
    assert EngineArgs(tensor_parallel_size=2).resolve_async_scheduling(torch.device("cuda")) is False
    with pytest.raises(ValueError, match="async_scheduling"):
        EngineArgs(async_scheduling=True, tensor_parallel_size=2).validate()


def test_host_dependent_rows_overlap(tiny_ckpt, reference):
    """Rows whose sampling reads their previous tokens (penalties, thinking budget, grammars) still
    decode from device inputs every step: the forward of N+1 is launched before N is processed, and
    N+1 is sampled after. (Off: no device inputs, same tokens.)"""
    p, toks, _ = reference
    budget, end = 6, toks[12]
    fresh = next(t for t in range(2, 500) if t not in p)
    runs = {}
    for on in (False, True):
        eng = make_engine(tiny_ckpt, on, enable_prefix_caching=False)  # one prefill chunk per prompt
        dev_rows: list[int] = []
        execute = eng.runner.execute

        def spy(sched, want_prompt, device_tokens=None, _execute=execute, _rows=dev_rows):
            _rows.append(len(device_tokens.chunk_idx) if device_tokens is not None else 0)
            return _execute(sched, want_prompt, device_tokens) if device_tokens is not None else \
                _execute(sched, want_prompt)

        eng.runner.execute = spy
        # a biased token is taken until its count's penalty outweighs the bias: off by one if the
        # pending token were not counted
        reqs = [("pen", p, SamplingParams(max_tokens=14, frequency_penalty=2.0, logit_bias={toks[0]: 7.0},
                                          **GREEDY), 0)]
        runs[on, "pen"] = drive(eng, reqs)["pen"]["samples"][0]["token_ids"], list(dev_rows)
        # the seen table: a strongly biased token is taken once, then the repetition penalty bans it
        rep = SamplingParams(max_tokens=6, repetition_penalty=50.0, logit_bias={fresh: 30.0}, **GREEDY)
        runs[on, "rep"] = drive(eng, [("rep", p, rep, 0)])["rep"]["samples"][0]["token_ids"], []
        dev_rows.clear()
        think = SamplingParams(max_tokens=14, thinking_budget=budget, thinking_end_token_id=end,
                               skip_special_tokens=False, **GREEDY)
        runs[on, "think"] = drive(eng, [("think", p, think, 0)])["think"]["samples"][0]["token_ids"], list(dev_rows)
        dev_rows.clear()
        regex = SamplingParams(max_tokens=14, temperature=1.0, seed=4, guided_regex=r"(cat|dog)s? [0-9]{2,12}")
        runs[on, "regex"] = drive(eng, [("regex", p, regex, 0)])["regex"]["samples"][0]["token_ids"], list(dev_rows)
    assert runs[False, "pen"][0].count(toks[0]) >= 2 and runs[False, "rep"][0].count(fresh) == 1
    for kind in ("pen", "rep", "think", "regex"):
        assert runs[False, kind][0] == runs[True, kind][0]
        assert not any(runs[False, kind][1])
    # every decode step after the prefill takes device inputs; a row that stops (the regex's EOS)
    # had its next forward launched before the host saw the stop: one forward row wasted, not sampled
    for kind, wasted in (("pen", 0), ("think", 0), ("regex", 1)):
        n = len(runs[True, kind][0])
        assert runs[True, kind][1] == [0] + [1] * (n - 1 + wasted), kind
    assert runs[True, "regex"][0][-1] == eng.tokenizer.eos_token_id
    think_toks = runs[True, "think"][0]
    assert think_toks[budget] == end and end not in think_toks[:budget]


def test_launched_step_reads_the_samplers_logprobs():
    """One logprob path: the loop carries the sampler's device pack to the host with the tokens, so
    LaunchedStep.logprobs() == SamplerOutput.logprobs() == gather_logprobs on the raw logits (rows
    without logprobs, logprobs=0, top-k; no row asking -> None)."""
    from engine.async_step import LaunchedStep
    from engine.sampler import Sampler, SamplingMetadata, gather_logprobs

    logits = torch.randn(5, 300, generator=torch.Generator().manual_seed(0)) * 3
    for num in ([2, None, 0, 5, 1], [0, 0, None, 0, 0], [None, 3, None, None, 3], [None] * 5):
        params = [SamplingParams(temperature=0.0, logprobs=n) for n in num]
        meta = SamplingMetadata.build(params, [[]] * 5, [[1]] * 5, [None] * 5, None, 300, "cpu")
        out = Sampler()(logits, meta)
        step = LaunchedStep.start([], out.token_ids, out.num_logprobs, out.logprob_pack)
        assert step.tokens() == logits.argmax(-1).tolist()
        got = step.logprobs()
        if all(n is None for n in num):
            assert got is None and out.logprobs() is None
            continue
        want = gather_logprobs(logits.log_softmax(-1), out.token_ids, num)
        assert got == want == out.logprobs()
        assert [list(d) if d else d for d in got] == [list(d) if d else d for d in want]


@pytest.mark.gpu
def test_overlapped_loop_on_cuda_identical(tiny_ckpt, reference):
    """On the GPU (the loop's real target, CUDA graphs on): the same outputs with the loop on and off."""
    reqs = mixed_requests(reference)
    run_both(tiny_ckpt, reqs, OutputKind.DELTA, setup=eos_is(reference[1][3]), device="cuda", dtype="float32",
             max_num_batched_tokens=29)


@pytest.mark.gpu
@pytest.mark.parametrize("enforce_eager,caching", [(False, False), (True, False), (False, True)])
def test_launches_never_synchronize_on_cuda(tiny_ckpt, reference, enforce_eager, caching):
    """The overlap needs the host to launch a step (forward, then sampling) without waiting for the
    device: under torch's sync debug mode "error", `_forward` and `_sample` of every step after the
    first raise on any synchronizing call (blocking copies, .item(), .cpu()). Rows: greedy, seeded
    top-k/top-p, logprobs, penalties, min_tokens, bad words, a grammar, n=2; a request arriving later
    makes a mixed (eager) step. enforce_eager=False: decode steps replay CUDA graphs; caching: prefix
    caching on (slot snapshots saved around the launched forwards)."""
    eng = make_engine(tiny_ckpt, True, device="cuda", dtype="float32", enable_prefix_caching=caching,
                      enforce_eager=enforce_eager)
    p, toks, _ = reference
    reqs = [("g", p, SamplingParams(max_tokens=12, **GREEDY), 0),
            ("s", prompt(20, 2), SamplingParams(temperature=0.8, top_k=20, top_p=0.9, seed=1, max_tokens=12,
                                                ignore_eos=True, logprobs=2), 0),
            ("pen", prompt(15, 3), SamplingParams(max_tokens=12, frequency_penalty=0.5, repetition_penalty=1.2,
                                                  min_tokens=4, bad_words_token_ids=[[toks[1], toks[2]]],
                                                  **GREEDY), 0),
            ("re", prompt(9, 4), SamplingParams(max_tokens=12, temperature=1.0, seed=2,
                                                guided_regex=r"(cat|dog)s? [0-9]{2,9}"), 0),
            ("n2", prompt(11, 5), SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=10, ignore_eos=True), 0),
            ("late", prompt(33, 6), SamplingParams(max_tokens=5, **GREEDY), 4)]
    checked = [0]
    for name in ("_forward", "_sample"):
        fn = getattr(eng, name)

        def strict(*a, _fn=fn, **k):
            if not checked[0]:  # the first step may allocate and warm up
                return _fn(*a, **k)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return _fn(*a, **k)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        setattr(eng, name, strict)
    step, done = 0, set()
    while eng.has_unfinished() or step <= 4:
        for rid, pr, sp, at in reqs:
            if at == step:
                eng.add_request(rid, pr, sp)
        done |= {o.request_id for o in eng.step() if o.finished}
        checked[0] += 1
        step += 1
    assert done == {r[0] for r in reqs}
