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


def test_block_hash_is_reserved_and_cleared_on_free():
    pool = BlockPool(2)
    assert all(b.block_hash is None for b in pool.blocks)
    (i,) = pool.allocate(1)
    pool.blocks[i].block_hash = hash_block_tokens(None, [1, 2])
    pool.free([i])
    assert pool.blocks[i].block_hash is None
