"""bench.e2e's cache plan: the prefill prompts run side by side (max_num_seqs counts them even with no decode
batch), the model length covers the prompt, and the KV blocks hold every case."""

from __future__ import annotations

from bench.e2e import cache_plan


def test_prefill_prompts_share_steps_without_decode_batches():
    n, L, max_b, max_len, blocks = cache_plan([], [], [], "8x4096", 128, 48, 128, 1 << 20)
    assert (n, L, max_b) == (8, 4096, 8)
    assert max_len >= 4097
    assert blocks >= 8 * (4097 // 128 + 1)


def test_decode_batches_and_long_prompt():
    n, L, max_b, max_len, blocks = cache_plan([1, 64], [64], [], "1x1048000", 128, 48, 128, 1048576)
    assert (n, max_b) == (1, 64)
    assert 1048001 <= max_len <= 1048576
    assert blocks >= 1048001 // 128 + 64 * 2
    assert cache_plan([256], [], [4096], "", 128, 48, 128, 1 << 20)[:3] == (0, 0, 256)


def test_mixed_case_fits_its_decoders_and_prompts():
    """--mixed B:L: B decoders plus up to two of its prompts at once, the prompt inside max_model_len, and
    blocks for all of them beyond the other cases'."""
    base = cache_plan([64], [], [], "", 128, 48, 128, 1 << 20)
    n, L, max_b, max_len, blocks = cache_plan([64], [], [], "", 128, 48, 128, 1 << 20, mixed="64:349,8:9000")
    assert max_b == 66 and max_len >= 9001
    assert blocks >= base[4] + 64 * 2 + 2 * 3 + 8 * 2 + 2 * 71


def test_run_mixed_alternates_prompt_steps_and_cleans_up(tiny_ckpt, monkeypatch):
    """run_mixed on a CPU engine: B decoders, n prompts of L tokens one per pair of steps, every prompt served,
    and afterwards nothing left running and the cache whole."""
    import bench.e2e as e2e
    from engine import LLM

    eng = LLM(str(tiny_ckpt), device="cpu", dtype="float32", max_num_seqs=6, num_kv_blocks=64,
              max_num_batched_tokens=64).engine
    monkeypatch.setattr(e2e, "VOCAB_LO", 3)  # the tiny vocabulary
    r = e2e.run_mixed(eng, 3, 20, 3, 200, "t")
    assert (r["batch"], r["prompt_len"], r["prompts"]) == (3, 20, 3)
    assert r["decode_ms"] > 0 and r["pair_ms"] > 0
    assert not eng.has_unfinished() and eng.step_stats.steps["prefill"] >= 4  # 3 decoders' prompts + 3 prompts
    eng.kv.check_integrity()
    assert eng.kv.num_free_slots == eng.kv.num_slots
