"""MTP speculative decoding (issue 13): greedy outputs equal non-speculative decoding for k = 1, 2, 3
over prompts crossing 4- and 128-token boundaries, with chunked prefill and a cache small enough to
preempt; forced acceptance / rejection; state after rollback equals a run that never saw the drafts.

Random weights make the MTP block's own drafts almost never right, so `SpecDecoder.draft_hook`
replaces them with the reference continuation (all accepted), a corrupted one (accepted up to the
corruption) or wrong tokens (all rejected)."""

from __future__ import annotations

import pytest
import torch

from engine.config import EngineArgs
from engine.llm_engine import LLMEngine
from engine.outputs import OutputKind
from engine.sampling_params import SamplingParams
from models.config import tiny_config
from models.synthetic import write_synthetic_checkpoint

CONFIGS = {  # name -> (model overrides, block size)
    "c4": (dict(compress_ratios=(0, 4, 8, 4), index_topk=4), 16),
    "c128": (dict(compress_ratios=(4, 128, 0), index_topk=4), 128),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request, tmp_path_factory):
    cfg, bs = CONFIGS[request.param]
    out = tmp_path_factory.mktemp(f"spec_{request.param}")
    write_synthetic_checkpoint(tiny_config(**cfg), out, seed=7, quantize=False)
    return request.param, out, bs


def make(path, bs, k=None, **kw) -> LLMEngine:
    args = dict(model=str(path), device="cpu", dtype="float32", max_num_seqs=4, max_num_batched_tokens=16,
                num_kv_blocks=64, block_size=bs, enable_prefix_caching=False)
    args.update(kw)
    spec = {"method": "mtp", "num_speculative_tokens": k} if k else None
    return LLMEngine(EngineArgs(speculative_config=spec, **args))


def toks(n: int, seed: int) -> list[int]:
    return torch.randint(2, 400, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def run(eng: LLMEngine, prompts, params, on_step=None) -> dict[str, list[int]]:
    for i, p in enumerate(prompts):
        eng.add_request(str(i), p, params, output_kind=OutputKind.FINAL_ONLY)
    out = {}
    while eng.has_unfinished():
        for o in eng.step():
            out[o.request_id] = o
        eng.kv.check_integrity()
        if eng.spec is not None:
            eng.spec.check_integrity(eng)
        if on_step is not None:
            on_step(eng)
    return out


def greedy(n=12, **kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


def prompts_for(name: str) -> list[list[int]]:
    if name == "c4":
        return [toks(n, n) for n in (3, 4, 5, 14, 17, 31)]
    return [toks(n, n) for n in (117, 121, 127, 128, 129)]


def reference_hook(ref: dict[str, list[int]], mode: str):
    """draft_hook giving the reference continuation: 'all' correct, 'mixed' corrupted at a position
    that cycles with P, 'none' every draft wrong."""

    def hook(seq, pos, drafts):
        full = ref[seq.request_id]
        out = []
        for j in range(len(drafts)):
            t = full[pos + 1 + j] if pos + 1 + j < len(full) else drafts[j]
            if mode == "none" or (mode == "mixed" and j == pos % (len(drafts) + 1)):
                t = (t + 1) % 400 + 2
            out.append(t)
        return out
    return hook


def full_tokens(prompts, outs) -> dict[str, list[int]]:
    return {str(i): p + outs[str(i)].outputs[0].token_ids for i, p in enumerate(prompts)}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_greedy_equal_chunked_preempting(model, k):
    name, path, bs = model
    prompts = prompts_for(name)
    small = dict(num_kv_blocks=4)  # fewer blocks than the batch needs: preemption
    base_eng = make(path, bs, **small)
    base = run(base_eng, prompts, greedy())
    assert base_eng.scheduler.num_preemptions_total > 0
    ref = full_tokens(prompts, base)
    for mode in ("mtp", "mixed", "all"):
        eng = make(path, bs, k, **small)
        if mode != "mtp":
            eng.spec.draft_hook = reference_hook(ref, mode)
        out = run(eng, prompts, greedy())
        for rid in base:
            assert out[rid].outputs[0].token_ids == base[rid].outputs[0].token_ids, (mode, rid)
        st = eng.spec.stats
        assert st.num_drafts > 0 and st.num_draft_tokens >= st.num_drafts
        if mode == "all":
            assert st.num_accepted_tokens > st.num_draft_tokens // 2
            assert st.accepted_per_pos[k - 1] > 0
        if mode == "mixed":
            assert 0 < st.num_accepted_tokens < st.num_draft_tokens


def _logical_state(eng: LLMEngine, seq_id: str, computed: int) -> dict[str, torch.Tensor]:
    """Every slot row of the sequence, and its closed compressed entries / indexer keys in order."""
    kv = eng.kv
    slot, table = kv.slot(seq_id), kv.block_table(seq_id)
    out = {}
    for li, layer in enumerate(kv.state.layers):
        m = eng.model_config.compress_ratios[li]
        for name, t in layer.items():
            if name in ("compressed", "index_keys"):
                per = t.shape[1]
                n = computed // m
                e = torch.arange(n)
                out[f"{li}.{name}"] = t[torch.tensor(table)[e // per], e % per].clone()
            else:
                out[f"{li}.{name}"] = t[slot].clone()
    return out


@pytest.mark.parametrize("mode", ["none", "all"])
def test_rollback_leaves_no_trace(model, mode):
    """Forced rejection: every step's state equals the non-speculative run's; forced acceptance:
    the state at every computed length both runs reach is the same."""
    name, path, bs = model
    prompts = prompts_for(name)[-2:]
    params = greedy(14)
    snaps: dict[tuple[str, int], dict] = {}

    def record(store):
        def on_step(eng):
            for seq in eng.scheduler.running:
                if eng.kv.has(seq.seq_id):
                    key = (seq.seq_id, seq.num_computed_tokens)
                    store[key] = _logical_state(eng, seq.seq_id, seq.num_computed_tokens)
        return on_step

    base = run(make(path, bs), prompts, params, record(snaps))
    spec_snaps: dict = {}
    eng = make(path, bs, 3)
    eng.spec.draft_hook = reference_hook(full_tokens(prompts, base), mode)
    out = run(eng, prompts, params, record(spec_snaps))
    assert {r: o.outputs[0].token_ids for r, o in out.items()} == {r: o.outputs[0].token_ids for r, o in base.items()}
    common = set(snaps) & set(spec_snaps)
    assert len(common) >= (5 if mode == "all" else len(snaps))
    for key in common:
        a, b = snaps[key], spec_snaps[key]
        for name_ in a:
            torch.testing.assert_close(b[name_], a[name_], atol=1e-5, rtol=1e-5, msg=f"{key} {name_}")
    if mode == "none":
        assert eng.spec.stats.num_accepted_tokens == 0 and eng.spec.stats.num_draft_tokens > 0
    else:
        assert eng.spec.stats.num_accepted_tokens > 0


def test_seeded_sampling_reproducible_and_features(model):
    """Seeded random sampling repeats exactly; logprobs are the target model's; stop strings, n > 1,
    abort and structured outputs work with speculation on."""
    name, path, bs = model
    if name != "c4":
        pytest.skip("feature mix runs on one layout")
    p = toks(9, 3)
    params = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=10, seed=11, n=2, logprobs=2, ignore_eos=True)

    def go(k):
        eng = make(path, bs, k)
        if k:
            eng.spec.draft_hook = lambda seq, pos, d: [5] * len(d)
        return run(eng, [p], params)["0"]

    a, b = go(2), go(2)
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]
    assert all(len(o.token_ids) == 10 and len(o.logprobs) == 10 for o in a.outputs)
    for o in a.outputs:
        for t, lp in zip(o.token_ids, o.logprobs):
            assert t in lp and lp[t] <= 0.0
    # greedy logprobs equal the non-speculative ones (target model's raw logprobs)
    g = greedy(8, logprobs=3)
    base = run(make(path, bs), [p], g)["0"].outputs[0]
    ref = {"0": p + base.token_ids}
    eng = make(path, bs, 3)
    eng.spec.draft_hook = reference_hook(ref, "mixed")
    got = run(eng, [p], g)["0"].outputs[0]
    assert got.token_ids == base.token_ids
    for x, y in zip(got.logprobs, base.logprobs, strict=True):
        assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-4 for t in x)
    # structured output: drafts that break the grammar are rejected
    eng = make(path, bs, 3)
    eng.spec.draft_hook = lambda seq, pos, d: [3] * len(d)
    gp = SamplingParams(temperature=0.0, max_tokens=12, guided_regex="[ab]{3,6}")
    out = run(eng, [p], gp)["0"].outputs[0]
    base_g = run(make(path, bs), [p], gp)["0"].outputs[0]
    assert out.token_ids == base_g.token_ids and out.text == base_g.text
    # abort mid-run leaves a clean cache
    eng = make(path, bs, 2)
    eng.add_request("x", p, greedy(30))
    eng.step()
    eng.step()
    eng.abort_request("x")
    eng.kv.check_integrity()
    assert eng.kv.num_free_blocks == eng.kv.num_blocks and not eng.has_unfinished()


@pytest.mark.parametrize("extra", [
    dict(repetition_penalty=1.5, frequency_penalty=0.7, presence_penalty=0.3),  # penalties see the drafts
    dict(min_tokens=6, logit_bias={7: 3.0}, bad_words_token_ids=[[9, 11]]),
    dict(n=2, logprobs=2),
])
def test_processed_greedy_and_stop_strings_equal(model, extra):
    """Greedy rows whose logits are processed (penalties, min_tokens, bias, bad words) verify each draft
    against the output extended by the earlier drafts; stop strings end at the same text."""
    name, path, bs = model
    if name != "c4":
        pytest.skip("one layout")
    prompts = [toks(7, 1), toks(19, 2)]
    params = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True, **extra)
    base = run(make(path, bs), prompts, params)
    ref = {rid: p + base[rid].outputs[0].token_ids for rid, p in zip(("0", "1"), prompts)}
    for mode in ("all", "mixed"):
        eng = make(path, bs, 3)
        eng.spec.draft_hook = reference_hook(ref, mode)
        out = run(eng, prompts, params)
        for rid in base:
            assert [o.token_ids for o in out[rid].outputs] == [o.token_ids for o in base[rid].outputs], (mode, rid)
        assert eng.spec.stats.num_accepted_tokens > 0
    # a stop string taken from the middle of the reference text
    text = base["1"].outputs[0].text
    stop = text[len(text) // 2:len(text) // 2 + 2]
    if stop.strip():
        sp = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True, stop=[stop], **extra)
        b = run(make(path, bs), prompts, sp)
        eng = make(path, bs, 3)
        eng.spec.draft_hook = reference_hook(ref, "all")
        s = run(eng, prompts, sp)
        for rid in b:
            assert [(o.text, o.finish_reason, o.stop_reason) for o in s[rid].outputs] == \
                [(o.text, o.finish_reason, o.stop_reason) for o in b[rid].outputs]


@pytest.mark.parametrize("kv_dtype", ["fp8", "fp8_fp4idx"])
def test_fp8_cache_formats(model, kv_dtype):
    """Packed FP8 entries / MXFP4 indexer keys roll back like dense ones (rows are bytes)."""
    name, path, bs = model
    if name != "c4":
        pytest.skip("one layout")
    prompts = [toks(13, 3), toks(22, 4)]
    base = run(make(path, bs, kv_cache_dtype=kv_dtype), prompts, greedy())
    eng = make(path, bs, 2, kv_cache_dtype=kv_dtype)
    eng.spec.draft_hook = reference_hook(full_tokens(prompts, base), "mixed")
    out = run(eng, prompts, greedy())
    assert {r: o.outputs[0].token_ids for r, o in out.items()} == {r: o.outputs[0].token_ids for r, o in base.items()}
    assert 0 < eng.spec.stats.num_accepted_tokens < eng.spec.stats.num_draft_tokens


def test_prompt_logprobs_equal_non_speculative(model):
    """Prompt logprobs of a request whose chunked prefill runs next to sequences verifying drafts (mixed
    verify steps) equal the non-speculative engine's; so do its tokens and sample logprobs."""
    _, path, bs = model

    def go(k):
        eng = make(path, bs, k)
        eng.add_request("a", toks(9, 1), greedy(20), output_kind=OutputKind.FINAL_ONLY)
        out, step = {}, 0
        while eng.has_unfinished():
            if step == 3:  # "a" decodes (with drafts under speculation) while "b" prefills in chunks
                eng.add_request("b", toks(40, 2), greedy(6, prompt_logprobs=3, logprobs=2),
                                output_kind=OutputKind.FINAL_ONLY)
                eng.add_request("c", toks(21, 3), greedy(5, prompt_logprobs=0), output_kind=OutputKind.FINAL_ONLY)
            for o in eng.step():
                out[o.request_id] = o
            eng.kv.check_integrity()
            step += 1
        return out, eng

    base, _ = go(None)
    spec, eng = go(2)
    assert eng.spec.stats.num_drafts > 0
    for rid in ("a", "b", "c"):
        assert spec[rid].outputs[0].token_ids == base[rid].outputs[0].token_ids
    for rid in ("b", "c"):
        a, b = spec[rid].prompt_logprobs, base[rid].prompt_logprobs
        assert len(a) == len(b) == len(toks(40 if rid == "b" else 21, 0)) and a[0] is None and b[0] is None
        for x, y in zip(a[1:], b[1:], strict=True):
            assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-4 for t in x)
    for x, y in zip(spec["b"].outputs[0].logprobs, base["b"].outputs[0].logprobs, strict=True):
        assert x.keys() == y.keys() and all(abs(x[t] - y[t]) < 1e-4 for t in x)
