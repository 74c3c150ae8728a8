"""KVCacheManager: slots + block tables over the state tensors of the tiny model."""

import random

import pytest
import torch

from kvcache.manager import KVCacheManager
from models.config import tiny_config
from models.state import allocate_state


def make(num_blocks=16, num_slots=4, block_size=8, **kw):
    return KVCacheManager(tiny_config(), num_blocks=num_blocks, num_slots=num_slots, block_size=block_size,
                          dtype=torch.float32, device="cpu", **kw)


def test_state_is_the_contract_layout():
    kv = make()
    ref = allocate_state(tiny_config(), 4, 16, 8, torch.float32)
    assert len(kv.state.layers) == len(ref.layers)
    for mine, theirs in zip(kv.state.layers, ref.layers):
        assert {k: (v.shape, v.dtype) for k, v in mine.items()} == {k: (v.shape, v.dtype) for k, v in theirs.items()}
    assert kv.capacity_tokens == 16 * 8


def test_allocate_grows_in_blocks_and_frees():
    kv = make()
    assert kv.allocate("a", 1) and len(kv.block_table("a")) == 1
    assert kv.allocate("a", 8) and len(kv.block_table("a")) == 1
    assert kv.allocate("a", 9) and len(kv.block_table("a")) == 2
    assert kv.allocate("a", 3) and len(kv.block_table("a")) == 2  # never shrinks
    first = kv.block_table("a")
    assert kv.allocate("a", 30) and kv.block_table("a")[:2] == first  # append-only
    assert kv.usage == pytest.approx(4 / 16) and kv.num_free_blocks == 12
    kv.check_integrity()
    kv.free("a")
    assert not kv.has("a") and kv.num_free_blocks == 16 and kv.num_free_slots == 4 and kv.usage == 0
    kv.check_integrity()


def test_all_or_nothing():
    kv = make(num_blocks=4, num_slots=2)
    assert kv.allocate("a", 24)
    assert not kv.can_allocate("b", 16) and not kv.allocate("b", 16)
    assert not kv.has("b") and kv.num_free_slots == 1  # the failed call took no slot
    assert kv.can_allocate("b", 8) and kv.allocate("b", 8)
    assert not kv.can_allocate("c", 0) and not kv.allocate("c", 0)  # out of slots
    assert not kv.allocate("a", 40)
    assert len(kv.block_table("a")) == 3
    kv.check_integrity()


def test_misuse_errors():
    kv = make()
    kv.allocate("a", 5)
    kv.free("a")
    with pytest.raises(KeyError, match="double free"):
        kv.free("a")
    with pytest.raises(KeyError, match="holds no cache"):
        kv.slot("nope")
    with pytest.raises(KeyError, match="holds no cache"):
        kv.block_table("nope")
    with pytest.raises(KeyError):
        kv.block_table_tensor(["nope"])
    with pytest.raises(ValueError):
        kv.allocate("a", -1)
    with pytest.raises(ValueError, match="multiple"):
        make(block_size=12)
    with pytest.raises(ValueError, match="kv_format"):
        make(kv_format="fp4")
    assert make(kv_format="fp8").state.layers[-1]["window"].dtype == torch.uint8


def test_block_table_tensor_padding_and_growth():
    kv = make(num_blocks=64, num_slots=3)
    kv.allocate("a", 8 * 20)  # 20 blocks: wider than the initial host table
    kv.allocate("b", 1)
    kv.allocate("c", 17)
    t = kv.block_table_tensor(["c", "a", "b"])
    assert t.dtype == torch.int64 and t.shape == (3, 20)
    assert t[0, :3].tolist() == kv.block_table("c") and (t[0, 3:] == -1).all()
    assert t[1].tolist() == kv.block_table("a")
    assert t[2, 0].item() == kv.block_table("b")[0] and (t[2, 1:] == -1).all()
    assert kv.slot_tensor(["a", "b"]).tolist() == [kv.slot("a"), kv.slot("b")]
    kv.check_integrity()
    kv.free("a")
    assert kv.block_table_tensor(["b"]).shape == (1, 1)
    kv.check_integrity()


def test_random_ops_keep_integrity():
    rng = random.Random(0)
    kv = make(num_blocks=40, num_slots=6)
    sizes: dict[str, int] = {}
    for step in range(600):
        op = rng.random()
        if op < 0.6:
            sid = f"s{rng.randrange(10)}"
            n = sizes.get(sid, 0) + rng.randrange(0, 30)
            ok = kv.allocate(sid, n)
            if ok:
                sizes[sid] = max(n, sizes.get(sid, 0))
                assert len(kv.block_table(sid)) == -(-sizes[sid] // 8)
        elif sizes:
            sid = rng.choice(sorted(sizes))
            kv.free(sid)
            del sizes[sid]
        kv.check_integrity()
        assert kv.num_free_blocks == 40 - sum(-(-n // 8) for n in sizes.values())


def test_block_table_tensor_matches_block_tables():
    """The batched table is the sequences' block tables, -1 padded, also after frees and regrowth (its
    cost is measured by bench/throughput.py's build_batch phase, not asserted here)."""
    kv = KVCacheManager(tiny_config(), num_blocks=256 * 40, num_slots=256, block_size=8, dtype=torch.float32)
    ids = [f"s{i}" for i in range(256)]
    for i, sid in enumerate(ids):
        assert kv.allocate(sid, 8 * (1 + i % 40))
    for sid in ids[::3]:
        kv.free(sid)
    for sid in ids[::3]:
        assert kv.allocate(sid, 8 * 41)  # wider than every earlier table: the host table grows
    t = kv.block_table_tensor(ids[::-1])
    assert t.shape == (256, 41) and t.dtype == torch.int64
    for row, sid in zip(t.tolist(), ids[::-1]):
        table = kv.block_table(sid)
        assert row == table + [-1] * (41 - len(table))
