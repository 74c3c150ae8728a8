"""BlockPool: allocation, freeing, integrity, and the (future) prefix-cache hash chain."""

import pytest

from kvcache.block_pool import BlockPool, hash_block_tokens


def test_allocate_and_free_roundtrip():
    pool = BlockPool(8)
    a = pool.allocate(3)
    b = pool.allocate(5)
    assert len(set(a + b)) == 8 and pool.num_free == 0 and pool.num_used == 8
    assert all(pool.blocks[i].ref_cnt == 1 for i in a + b)
    pool.check_integrity()
    pool.free(a)
    assert pool.num_free == 3
    pool.check_integrity()
    pool.free(b)
    assert pool.num_free == 8
    pool.check_integrity()


def test_not_enough_blocks_takes_nothing():
    pool = BlockPool(4)
    pool.allocate(3)
    assert pool.allocate(2) is None
    assert pool.num_free == 1
    assert pool.allocate(0) == []
    pool.check_integrity()


def test_misuse_raises():
    pool = BlockPool(4)
    ids = pool.allocate(2)
    pool.free(ids)
    with pytest.raises(RuntimeError, match="double free"):
        pool.free(ids[:1])
    with pytest.raises(ValueError):
        pool.allocate(-1)
    with pytest.raises(ValueError):
        BlockPool(0)


def test_integrity_detects_corruption():
    pool = BlockPool(4)
    ids = pool.allocate(1)
    pool.blocks[ids[0]].ref_cnt = 0  # owned block lost its reference
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_free_blocks_are_reused_fifo():
    pool = BlockPool(4)
    a = pool.allocate(4)
    pool.free([a[2], a[0]])
    assert pool.allocate(2) == [a[2], a[0]]


def test_hash_chain():
    h1 = hash_block_tokens(None, [1, 2, 3, 4])
    assert h1 == hash_block_tokens(None, [1, 2, 3, 4])  # deterministic
    assert isinstance(h1, int) and 0 <= h1 < 2**64
    assert h1 != hash_block_tokens(None, [1, 2, 3, 5])
    h2 = hash_block_tokens(h1, [5, 6, 7, 8])
    assert h2 != hash_block_tokens(hash_block_tokens(None, [0, 2, 3, 4]), [5, 6, 7, 8])  # depends on the prefix


def test_cached_block_survives_free_until_evicted_lru():
    evicted = []
    pool = BlockPool(3, on_evict=evicted.append)
    a, b, c = pool.allocate(3)
    ha, hb = hash_block_tokens(None, [1, 2]), hash_block_tokens(None, [3, 4])
    assert pool.cache_block(a, ha) and pool.cache_block(b, hb)
    assert not pool.cache_block(c, ha)  # another block already holds that content
    pool.free([b, a, c])  # ref 0: free, but a and b keep their hashes (b least recently used)
    pool.check_integrity()
    assert pool.num_free == 3 and pool.lookup(ha) == a and pool.lookup(hb) == b
    pool.touch([a])  # a hit takes a out of the free queue
    assert pool.num_free == 2 and pool.blocks[a].ref_cnt == 1
    pool.check_integrity()
    assert pool.allocate(1) == [b] and evicted == [hb] and pool.lookup(hb) is None  # LRU cached one goes
    assert pool.allocate(1) == [c]
    assert pool.allocate(1) is None  # a is referenced: never evicted
    pool.touch([a])
    assert pool.blocks[a].ref_cnt == 2
    pool.free([a])
    pool.free([a])
    assert pool.evict_unreferenced() == 1 and evicted == [hb, ha] and pool.num_cached == 0
    pool.check_integrity()


def test_touch_of_uncached_block_and_cache_of_free_block_raise():
    pool = BlockPool(2)
    (i,) = pool.allocate(1)
    with pytest.raises(RuntimeError, match="not in the prefix cache"):
        pool.touch([i])
    pool.free([i])
    with pytest.raises(RuntimeError, match="unowned"):
        pool.cache_block(i, 1)


def test_integrity_detects_stale_cache_map():
    pool = BlockPool(2)
    (i,) = pool.allocate(1)
    pool.cache_block(i, 7)
    pool.blocks[i].block_hash = 8
    with pytest.raises(AssertionError):
        pool.check_integrity()
