"""Prefix caching in kvcache/: slot snapshots (exact live rows), SnapshotPool LRU, snapshot points,
shared blocks in KVCacheManager (ref counts, all-or-nothing admission, integrity) and sizing."""

import pytest
import torch

from kvcache.manager import KVCacheManager
from kvcache.prefix_cache import PrefixHit
from kvcache.sizing import num_blocks_for_budget, num_snapshot_rows, prefix_cache_report, prefix_snapshot_interval
from kvcache.snapshots import SnapshotPool, restore_snapshots, save_snapshots, snapshot_bytes, snapshot_specs
from models.config import PRESETS, tiny_config
from models.state import state_bytes

CFG = tiny_config(compress_ratios=(0, 4, 8, 4))  # sliding, CSA, HCA(8), CSA; window 16


def make_kv(num_blocks=8, num_slots=3, block_size=16, kv_format="bf16", snaps=4, interval=32):
    return KVCacheManager(CFG, num_blocks=num_blocks, num_slots=num_slots, block_size=block_size, dtype=torch.float32,
                          kv_format=kv_format, enable_prefix_caching=True, num_snapshots=snaps,
                          snapshot_interval=interval)


def test_snapshot_specs_keep_window_and_open_csa_half_only():
    specs = {(s.layer, s.name): s for s in snapshot_specs(CFG, 16)}
    assert {n for (layer, n) in specs if layer == 2} == {"window"}  # HCA: windows closed at a boundary
    assert specs[(0, "window")].rows == CFG.sliding_window
    for name in ("kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail"):
        assert specs[(1, name)].rows == 4 and specs[(1, name)].ring == 8  # positions [b-4, b) of the 8-row ring


def test_flash_snapshot_bytes():
    cfg = PRESETS["flash"]()
    # 43 windows of 128 x 584 B + 21 CSA layers x (2 x 4 x 1024 + 2 x 4 x 256) x 4 B
    assert snapshot_bytes(cfg, 128, torch.bfloat16, "fp8_fp4idx") == 43 * 128 * 584 + 21 * (8 * 1024 + 8 * 256) * 4
    iv = prefix_snapshot_interval(cfg, 128, torch.bfloat16, "fp8_fp4idx")
    rep = prefix_cache_report(cfg, 128, torch.bfloat16, "fp8_fp4idx", iv, num_blocks=200_000, num_slots=64)
    assert rep.block_bytes_per_token == pytest.approx(3514.25)
    assert rep.extra_fraction <= 0.25 and iv % 128 == 0


def test_auto_snapshot_interval_is_whole_token_budgets():
    """The automatic interval is rounded up to a multiple of the step's token budget (chunks end at snapshot
    points: otherwise every long-prompt chunk is cut short); an explicit interval and a budget that is not
    whole blocks are left alone."""
    cfg = PRESETS["flash"](8)
    base = prefix_snapshot_interval(cfg, 128, torch.bfloat16, "bf16")
    assert base == 6016  # 47 blocks: the snapshot-cost rule alone
    assert prefix_snapshot_interval(cfg, 128, torch.bfloat16, "bf16", token_budget=8192) == 8192
    assert prefix_snapshot_interval(cfg, 128, torch.bfloat16, "bf16", token_budget=2048) == 6144
    assert prefix_snapshot_interval(cfg, 128, torch.bfloat16, "bf16", token_budget=2000) == base
    assert prefix_snapshot_interval(cfg, 128, torch.bfloat16, "bf16", requested=256, token_budget=8192) == 256


@pytest.mark.parametrize("kv_format", ["bf16", "fp8"])
def test_save_restore_copies_exactly_the_live_rows(kv_format):
    kv = make_kv(kv_format=kv_format)
    g = torch.Generator().manual_seed(0)
    for layer in kv.state.layers:
        for t in layer.values():
            t.copy_(torch.randint(0, 200, t.shape, generator=g).to(t.dtype) if t.dtype == torch.uint8
                    else torch.randn(t.shape, generator=g))
    b = 48  # a block boundary; CSA ring rows of positions 44..47 = rows 4..7
    save_snapshots(kv.state, kv.prefix.tensors, [(0, 2, b)])
    before = [{k: v.clone() for k, v in layer.items()} for layer in kv.state.layers]
    restore_snapshots(kv.state, kv.prefix.tensors, [(2, 1, b)])
    for i, layer in enumerate(kv.state.layers):
        assert torch.equal(layer["window"][1], layer["window"][0])
        for name in ("kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail"):
            if name in layer and CFG.compress_ratios[i] == 4:
                assert torch.equal(layer[name][1, 4:8], layer[name][0, 4:8])
                assert torch.equal(layer[name][1, :4], before[i][name][1, :4])  # the closed half is not touched
        if CFG.compress_ratios[i] == 8:
            assert torch.equal(layer["kv_tail"][1], before[i]["kv_tail"][1])  # HCA tails: not part of a snapshot
        for name in layer:
            assert torch.equal(layer[name][0], before[i][name][0]) and torch.equal(layer[name][2], before[i][name][2])


def test_snapshot_pool_lru_and_pending():
    p = SnapshotPool(2)
    r1, r2 = p.reserve(11), p.reserve(22)
    assert p.reserve(33) is None  # every row pending
    assert p.reserve(11) is None  # already pending
    p.commit(r1)
    p.commit(r2)
    p.touch(11)  # 22 is now the LRU one
    r3 = p.reserve(33)
    assert r3 == r2 and p.lookup(22) is None and p.lookup(11) == r1
    p.cancel(r3)
    assert p.drop(11) and not p.drop(11)
    p.check_integrity()


def test_snapshot_points():
    kv = make_kv(interval=32)
    pc = kv.prefix
    miss = PrefixHit(0, [], None, 0)
    assert pc.snapshot_points(miss, 70, 70) == [32, 64]  # intervals; prompt end 64
    assert pc.snapshot_points(miss, 80, 80) == [32, 64, 80]  # P = 5 blocks: 80 (extensions) and 64 (same prompt)
    assert pc.snapshot_points(PrefixHit(32, [0, 1], 0, 3), 90, 90) == [48, 64, 80]  # divergence at 48
    assert pc.snapshot_points(PrefixHit(64, [0, 1, 2, 3], 0, 4), 70, 70) == []


def _fill(kv, seq_id, n_tokens, hashes):
    assert kv.allocate(seq_id, n_tokens)
    kv.cache_blocks(seq_id, n_tokens, hashes)


def test_shared_blocks_ref_counts_and_all_or_nothing():
    kv = make_kv(num_blocks=6, num_slots=3)
    hashes = [101, 102, 103]
    _fill(kv, "a", 48, hashes)
    a_blocks = kv.block_table("a")
    assert kv.prefix.plan_save(kv.slot("a"), 32, 102)
    ops = kv.take_state_ops()
    assert ops.saves == [(kv.slot("a"), ops.saves[0][1], 32)] and not ops.restores
    kv.prefix.commit()
    hit = kv.prefix.find(hashes[:2])
    assert (hit.num_tokens, hit.block_ids, hit.num_matched_blocks) == (32, a_blocks[:2], 2)
    # 3 new blocks needed (32 + 48 tokens -> 5 blocks, 2 shared) but only 3 are free: fits exactly
    assert kv.allocate_prefix("b", hit, 80, hashes[:2], 80)
    assert kv.block_table("b")[:2] == a_blocks[:2] and kv.pool.blocks[a_blocks[0]].ref_cnt == 2
    assert kv.take_state_ops().restores == [(hit.snapshot_row, kv.slot("b"), 32)]
    assert (kv.prefix.stats.queries, kv.prefix.stats.hits) == (80, 32)
    kv.check_integrity()
    assert not kv.allocate_prefix("c", hit, 48, hashes[:2], 48)  # needs 1 new block, none free: nothing changes
    assert not kv.has("c") and kv.pool.blocks[a_blocks[0]].ref_cnt == 2 and kv.prefix.stats.queries == 80
    kv.free("a")
    kv.check_integrity()
    assert kv.pool.blocks[a_blocks[0]].ref_cnt == 1  # b still holds the shared blocks: never evicted
    kv.free("b")
    assert kv.num_free_blocks == 6 and kv.pool.num_cached == 3
    assert kv.reset_prefix_cache() == 3 and kv.prefix.snapshots.num_committed == 0
    kv.check_integrity()


def test_unreferenced_cached_blocks_are_evicted_with_their_snapshots():
    kv = make_kv(num_blocks=3, num_slots=2)
    _fill(kv, "a", 48, [1, 2, 3])
    kv.prefix.plan_save(kv.slot("a"), 48, 3)
    kv.take_state_ops()
    kv.prefix.commit()
    kv.free("a")
    assert kv.prefix.find([1, 2]).num_tokens == 0  # only a snapshot at block 3's end
    assert kv.allocate("x", 16)  # evicts the LRU free block: a's tail (freed tail first)
    assert kv.pool.lookup(3) is None and kv.prefix.snapshots.lookup(3) is None
    assert kv.pool.lookup(1) is not None
    kv.check_integrity()


def test_integrity_detects_wrong_ref_count():
    kv = make_kv()
    _fill(kv, "a", 32, [1, 2])
    kv.pool.blocks[kv.block_table("a")[0]].ref_cnt = 2
    with pytest.raises(AssertionError, match="ref_cnt"):
        kv.check_integrity()


@pytest.mark.parametrize("budget", [2 << 20, 8 << 20, 64 << 20])
def test_budget_counts_snapshots(budget):
    bs, iv, slots = 16, 32, 3
    per_slot, per_block = state_bytes(CFG, bs, torch.float32)
    snap = snapshot_bytes(CFG, bs, torch.float32)

    def cost(n):
        return slots * per_slot + n * per_block + num_snapshot_rows(n, bs, iv, slots) * snap

    n = num_blocks_for_budget(CFG, budget, slots, bs, torch.float32, snapshot_interval=iv)
    assert cost(n) <= budget < cost(n + 1)  # the largest cache that fits, snapshots included
    assert n < num_blocks_for_budget(CFG, budget, slots, bs, torch.float32)


def test_sizing_table_reports_the_snapshot_cost():
    from kvcache.sizing import format_table

    text = format_table(PRESETS["flash"](), "flash", "fp8", "fp4", torch.bfloat16)
    assert "prefix-cache snapshot" in text and "4,074,496 B, every 5,888 tokens -> 692.0 B/cached token" in text
