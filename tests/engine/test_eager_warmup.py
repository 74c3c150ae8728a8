"""engine/eager_warmup.py: start-up runs ~2x-spaced prompt lengths through the engine (the eager steps' kernel
variants compiled before serving), and leaves the engine as a fresh one: no requests, no prefix cache entries,
zero counters, every block free, the same outputs afterwards."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from engine.eager_warmup import warmup_prompt_lens


def test_prompt_lens_cover_every_row_bucket_up_to_the_budget():
    lens = warmup_prompt_lens(8192, 1 << 20)
    assert lens[0] == 13 and lens[-2:] == [8192, 8192 + 8192 // 3]
    assert all(b / a <= 2 for a, b in zip(lens, lens[1:]))  # ~2x apart: each power-of-two bucket gets a step
    assert all(n % 16 for n in lens[:-2])  # odd lengths below the budget
    for p in (16, 64, 128, 256, 512, 1024, 2048, 4096):
        assert any(p <= n < 2 * p for n in lens), p
    assert warmup_prompt_lens(8192, 100) == [13, 25, 47, 89, 98]  # capped to max_model_len - 2
    assert warmup_prompt_lens(16, 4096) == [13, 16, 21]


@pytest.mark.parametrize("overlapped", [False, True])
def test_warmup_leaves_a_fresh_engine(tiny_ckpt, overlapped):
    kw = dict(device="cpu", dtype="float32", max_num_seqs=4, num_kv_blocks=64, max_num_batched_tokens=64,
              async_scheduling=overlapped)
    warm = LLM(str(tiny_ckpt), eager_warmup=True, **kw)
    cold = LLM(str(tiny_ckpt), eager_warmup=False, **kw)
    eng = warm.engine
    assert not eng.requests and not eng.has_unfinished()
    assert eng.kv.num_free_blocks == eng.kv.pool.num_blocks  # prefix cache entries dropped too
    eng.kv.check_integrity()
    st = eng.stats()
    assert st.prompt_tokens_total == 0 and st.generation_tokens_total == 0 and st.num_preemptions_total == 0
    assert st.prefix_cache_queries_total == 0 and st.prefix_cache_hits_total == 0
    assert sum(st.steps.steps.values()) == 0 and st.steps.slow_steps == 0 and eng.runner.num_graph_steps == 0
    p = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompts = [list(range(5, 5 + n)) for n in (3, 40, 70)]
    assert [o.outputs[0].token_ids for o in warm.generate(prompts, p)] == \
        [o.outputs[0].token_ids for o in cold.generate(prompts, p)]


def test_warmup_runs_its_prompts_and_is_off_by_default_on_cpu(tiny_ckpt, monkeypatch):
    import engine.eager_warmup as ew

    seen = []
    real = ew.run_eager_warmup

    def spy(engine, lens, seed=0):
        out = real(engine, lens, seed)
        seen.append((list(lens), out))
        return out

    monkeypatch.setattr("engine.llm_engine.run_eager_warmup", spy)
    LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=2, num_kv_blocks=32,
        max_num_batched_tokens=32)
    assert seen == []  # CPU default: off
    LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=2, num_kv_blocks=32,
        max_num_batched_tokens=32, eager_warmup=True)
    (lens, out), = seen
    assert lens == [13, 25, 32, 42] and out["prompts"] == 4 and out["crowd"] == 2  # max_num_seqs 2: 1 + 1
    assert out["steps"] >= 4 * 2 + 8  # each prompt: its chunk step(s), then a decode step; the crowd's 8 tokens


def test_warmup_skips_prompts_the_cache_cannot_hold(tiny_ckpt):
    # a small cache: the lengths are capped to what it holds, a prompt that does not fit is skipped; nothing is left
    # queued and every block is free afterwards
    eng = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=2, num_kv_blocks=6,
              max_num_batched_tokens=256, eager_warmup=True).engine
    assert not eng.has_unfinished() and eng.kv.num_free_blocks == eng.kv.pool.num_blocks


def test_crowd_runs_a_mixed_step(tiny_ckpt, monkeypatch):
    """The crowd's second half arrives while the first half decodes: one step carries both (a mixed step)."""
    from engine.llm_engine import LLMEngine

    mixed = []
    real = LLMEngine.step

    def step(self):
        sch = self.scheduler
        running = [q for q in sch.running if q.num_computed_tokens >= q.num_prompt_tokens]
        if running and sch.waiting and any(r.startswith("__warmup-b") for r in (q.seq_id for q in sch.waiting)):
            mixed.append(len(running))
        return real(self)

    monkeypatch.setattr(LLMEngine, "step", step)
    eng = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=8, num_kv_blocks=64,
              max_num_batched_tokens=64, eager_warmup=True).engine
    assert mixed and mixed[0] == 4  # 4 decoders beside the 4 new prompts
    assert not eng.has_unfinished() and eng.kv.num_free_blocks == eng.kv.pool.num_blocks
