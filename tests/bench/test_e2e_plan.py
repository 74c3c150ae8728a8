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
