"""BlockPool: reference counts, the LRU free queue and the prefix-cache map of the paged blocks.

A block is one row of every "block"-scoped state tensor (models/state.py): it covers `block_size`
consecutive token positions of one sequence, i.e. `block_size // ratio` compressed entries of every
compressed layer (and as many indexer keys on CSA layers). The pool knows nothing about sequences;
`KVCacheManager` maps sequences to block ids.

    blocks:      [ b0 | b1 | b2 | b3 | b4 | b5 | ... ]     ref_cnt = number of block tables holding it
    free queue:  b3, b5, b0, ...  (ref_cnt 0, LRU first)   allocate() pops from the LRU end,
                                                           free() appends at the MRU end
    cached:      {hash -> block}                           full blocks whose content is known

Prefix caching: a full, computed block is identified by `hash_block_tokens(parent hash, its token
ids)`, so equal prefixes give equal hash chains. `cache_block` files it under that hash; it keeps
the hash while other sequences share it (`touch` adds a reference and takes it out of the free
queue) and after its last owner frees it: an unreferenced cached block stays in the free queue,
reusable by a hit until `allocate` pops it as the least recently used one and evicts it
(`on_evict(hash)` tells the owner of per-hash extras, the state snapshots). So running sequences
never lose blocks: only ref_cnt-0 blocks are ever evicted.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np


@dataclass(slots=True)
class Block:
    block_id: int  # row index in every block-scoped state tensor
    ref_cnt: int = 0  # number of block tables that hold this block (0 = free or cached-unreferenced)
    block_hash: int | None = None  # chain hash while the block is in the prefix cache; None = not cached


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Content hash of a full block: depends on the whole prefix through `parent_hash`.

    Stable across processes (unlike `hash()` on str), 64-bit. `parent_hash` is None for the first block.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(b"root" if parent_hash is None else int(parent_hash).to_bytes(8, "little", signed=False))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little", signed=False)


class BlockPool:
    """Fixed set of `num_blocks` blocks; O(1) allocate, free, touch and evict per block."""

    def __init__(self, num_blocks: int, on_evict: Callable[[int], None] | None = None) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))  # ref 0, LRU first
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.on_evict = on_evict  # called with the hash of every cached block that is evicted

    @property
    def num_free(self) -> int:
        """Blocks with no owner (empty or cached-unreferenced): what `allocate` can hand out."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self.cached)

    def allocate(self, n: int) -> list[int] | None:
        """Take `n` free blocks (ref_cnt 0 -> 1), evicting the least recently used cached ones; None
        (and nothing taken) if fewer than `n` are free."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks ({n})")
        if n > len(self._free):
            return None
        pop, blocks = self._free.popitem, self.blocks
        ids = [pop(last=False)[0] for _ in range(n)]
        for i in ids:
            b = blocks[i]
            if b.block_hash is not None:
                self._evict(b)
            b.ref_cnt = 1
        return ids

    def free(self, ids: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 join the MRU end of the free queue
        (cached ones keep their hash). Pass a block table tail-first so its tail is evicted first."""
        blocks, free = self.blocks, self._free
        for i in ids:
            b = blocks[i]
            if b.ref_cnt <= 0:
                raise RuntimeError(f"double free of block {i} (ref_cnt {b.ref_cnt})")
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                free[i] = None

    # ---- prefix cache ----------------------------------------------------------------------
    def lookup(self, block_hash: int) -> int | None:
        """The cached block with this chain hash, or None."""
        return self.cached.get(block_hash)

    def touch(self, ids: Iterable[int]) -> None:
        """Add a reference to cached blocks a new sequence reuses (out of the free queue at ref 0)."""
        blocks, free = self.blocks, self._free
        for i in ids:
            b = blocks[i]
            if b.block_hash is None:
                raise RuntimeError(f"touch of block {i}, which is not in the prefix cache")
            if b.ref_cnt == 0:
                del free[i]
            b.ref_cnt += 1

    def cache_block(self, block_id: int, block_hash: int) -> bool:
        """File an owned, full, computed block under `block_hash`. False (nothing changed) when another
        block already holds that content or the block is cached already."""
        b = self.blocks[block_id]
        if b.ref_cnt <= 0:
            raise RuntimeError(f"cache_block of unowned block {block_id}")
        if b.block_hash is not None or block_hash in self.cached:
            return False
        b.block_hash = block_hash
        self.cached[block_hash] = block_id
        return True

    def evict_unreferenced(self) -> int:
        """Drop every cached block no sequence holds (they stay free); -> how many were dropped."""
        blocks = self.blocks
        victims = [blocks[i] for i in self._free if blocks[i].block_hash is not None]
        for b in victims:
            self._evict(b)
        return len(victims)

    def _evict(self, b: Block) -> None:
        h = b.block_hash
        del self.cached[h]
        b.block_hash = None
        if self.on_evict is not None:
            self.on_evict(h)

    # ---- invariants ------------------------------------------------------------------------
    def check_integrity(self) -> None:
        """The free queue holds exactly the unreferenced blocks; the cache map and the blocks' hashes
        agree one to one."""
        free = self._free
        assert all(0 <= i < self.num_blocks for i in free), "free queue holds an out-of-range block id"
        for b in self.blocks:
            if b.block_id in free:
                assert b.ref_cnt == 0, f"free block {b.block_id} has ref_cnt {b.ref_cnt}"
            else:
                assert b.ref_cnt > 0, f"block {b.block_id} is neither free nor referenced"
            if b.block_hash is not None:
                assert self.cached.get(b.block_hash) == b.block_id, f"block {b.block_id}'s hash is not mapped to it"
        for h, i in self.cached.items():
            assert self.blocks[i].block_hash == h, f"cache map entry {h:#x} -> block {i} has a stale hash"
