"""BlockPool: the free list and reference counts of the paged cache blocks.

A block is one row of every "block"-scoped state tensor (models/state.py): it covers `block_size`
consecutive token positions of one sequence, i.e. `block_size // ratio` compressed entries of every
compressed layer (and as many indexer keys on CSA layers). The pool knows nothing about sequences;
`KVCacheManager` maps sequences to block ids.

    blocks:      [ b0 | b1 | b2 | b3 | b4 | b5 | ... ]     ref_cnt 0 = free, 1 = owned
    free queue:  deque(b3, b5, b0, ...)                     allocate() pops from the left,
                                                            free() appends on the right

`block_hash` is reserved for prefix caching (not implemented): a full block will be identified by
`hash_block_tokens(parent_block_hash, its token ids)`, so equal prefixes give equal hash chains.
"""

from __future__ import annotations

import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


@dataclass(slots=True)
class Block:
    block_id: int  # row index in every block-scoped state tensor
    ref_cnt: int = 0  # number of owners (always 0 or 1 until prefix caching shares blocks)
    block_hash: int | None = None  # hash chain of a full block (prefix caching, later); None = unhashed


def hash_block_tokens(parent_hash: int | None, token_ids: Sequence[int]) -> int:
    """Content hash of a full block: depends on the whole prefix through `parent_hash`.

    Stable across processes (unlike `hash()` on str), 64-bit. `parent_hash` is None for the first block.
    """
    h = hashlib.blake2b(digest_size=8)
    h.update(b"root" if parent_hash is None else int(parent_hash).to_bytes(8, "little", signed=False))
    h.update(np.asarray(token_ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little", signed=False)


class BlockPool:
    """Fixed set of `num_blocks` blocks; O(1) allocate and free per block."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """Take `n` free blocks (ref_cnt 0 -> 1); None (and nothing taken) if fewer than `n` are free."""
        if n < 0:
            raise ValueError(f"cannot allocate a negative number of blocks ({n})")
        if n > len(self._free):
            return None
        pop, blocks = self._free.popleft, self.blocks
        ids = [pop() for _ in range(n)]
        for i in ids:
            blocks[i].ref_cnt = 1
        return ids

    def free(self, ids: Iterable[int]) -> None:
        """Drop one reference from each block; blocks reaching 0 go back to the free queue."""
        blocks = self.blocks
        for i in ids:
            b = blocks[i]
            if b.ref_cnt <= 0:
                raise RuntimeError(f"double free of block {i} (ref_cnt {b.ref_cnt})")
            b.ref_cnt -= 1
            if b.ref_cnt == 0:
                b.block_hash = None
                self._free.append(i)

    def check_integrity(self) -> None:
        """Free blocks are unique and unreferenced; every other block is referenced."""
        free = set(self._free)
        assert len(free) == len(self._free), "a block appears twice in the free queue"
        assert all(0 <= i < self.num_blocks for i in free), "free queue holds an out-of-range block id"
        for b in self.blocks:
            if b.block_id in free:
                assert b.ref_cnt == 0, f"free block {b.block_id} has ref_cnt {b.ref_cnt}"
            else:
                assert b.ref_cnt > 0, f"block {b.block_id} is neither free nor referenced"
