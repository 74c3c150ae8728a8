"""PrefixCache: lookup, snapshot planning and statistics of automatic prefix caching (issue 12).

The paged blocks of a prompt prefix are shared through the block pool's hash map (block_pool.py);
resuming at a block boundary b also needs the slot state at b, kept as snapshots (snapshots.py).
A hit therefore resumes at the largest b such that every full block before b is cached AND the block
ending at b has a snapshot. Which boundaries get one (chunks are cut there so the state at b exists
after a step):

    every `interval` tokens              long shared documents / system prompts
    the prompt's last full boundaries    P//bs*bs: any prompt that extends it (the next turn of a
                                         chat) hits here; ((P-1)//bs)*bs: the same prompt again
    the divergence point                 where this prompt's cached chain ended: a prefix shared with
                                         an earlier request (system prompt + different question);
                                         the next request sharing it hits there

A hit never covers the whole sequence (>= 1 token is computed to get logits).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from models.config import ModelConfig
from models.state import ModelState

from .block_pool import BlockPool
from .snapshots import SnapshotPool, allocate_snapshots, restore_snapshots, save_snapshots


@dataclass(slots=True)
class PrefixHit:
    num_tokens: int  # tokens reused (a block boundary; 0 = miss)
    block_ids: list[int]  # the cached blocks of those tokens, in order
    snapshot_row: int | None  # snapshot of the slot state at num_tokens (None iff num_tokens == 0)
    num_matched_blocks: int  # length of the cached hash chain (>= num_tokens // block_size)


@dataclass(slots=True)
class StateOps:
    """Slot-state copies of one step, in the order the runner applies them around the forward."""

    restores: list[tuple[int, int, int]] = field(default_factory=list)  # (row, slot, b): before the forward
    saves: list[tuple[int, int, int]] = field(default_factory=list)  # (slot, row, b): after the forward

    def __bool__(self) -> bool:
        return bool(self.restores or self.saves)


@dataclass
class PrefixCacheStats:
    queries: int = 0  # tokens of the sequences looked up (every admission with a lookup)
    hits: int = 0  # tokens of those that were reused


class PrefixCache:
    def __init__(self, cfg: ModelConfig, pool: BlockPool, *, num_snapshots: int, block_size: int, interval: int,
                 dtype: torch.dtype, device: torch.device, kv_format: str) -> None:
        if interval < block_size or interval % block_size:
            raise ValueError(f"snapshot interval {interval} must be a positive multiple of block_size {block_size}")
        self.block_size, self.interval = block_size, interval
        self.pool = pool
        self.snapshots = SnapshotPool(num_snapshots)
        self.tensors = allocate_snapshots(cfg, num_snapshots, block_size, dtype, device, kv_format)
        self.stats = PrefixCacheStats()
        self._ops = StateOps()
        pool.on_evict = self.snapshots.drop

    # ---- lookup ----------------------------------------------------------------------------
    def max_hit_blocks(self, num_tokens: int) -> int:
        """Full blocks a hit may cover: at least the last token is computed."""
        return (num_tokens - 1) // self.block_size

    def find(self, hashes: list[int]) -> PrefixHit:
        """Longest usable prefix of the chain `hashes` (already cut to max_hit_blocks)."""
        lookup = self.pool.lookup
        ids = []
        for h in hashes:
            b = lookup(h)
            if b is None:
                break
            ids.append(b)
        matched, k = len(ids), len(ids)
        while k > 0 and self.snapshots.lookup(hashes[k - 1]) is None:
            k -= 1
        row = self.snapshots.lookup(hashes[k - 1]) if k else None
        return PrefixHit(k * self.block_size, ids[:k], row, matched)

    def on_admit(self, hit: PrefixHit, hashes: list[int], num_tokens: int, slot: int) -> None:
        """A sequence was admitted with `hit`: count it, queue the snapshot restore."""
        self.stats.queries += num_tokens
        self.stats.hits += hit.num_tokens
        if hit.snapshot_row is not None:
            self.snapshots.touch(hashes[hit.num_tokens // self.block_size - 1])
            self._ops.restores.append((hit.snapshot_row, slot, hit.num_tokens))

    def snapshot_points(self, hit: PrefixHit, num_prompt_tokens: int, num_tokens: int) -> list[int]:
        """Boundaries after the hit where the sequence's state is saved (sorted; see module docstring).
        A prompt of P tokens saves at its last full block (P//bs*bs: prompts extending it) and, when P
        is a whole number of blocks, one block earlier too (the same prompt again)."""
        bs, iv, start = self.block_size, self.interval, hit.num_tokens
        last = (num_tokens // bs) * bs
        pts = set(range((start // iv + 1) * iv, last + 1, iv))
        for b in ((num_prompt_tokens // bs) * bs, ((num_prompt_tokens - 1) // bs) * bs, hit.num_matched_blocks * bs):
            if start < b <= last:
                pts.add(b)
        return sorted(pts)

    # ---- snapshots of running sequences ----------------------------------------------------
    def plan_save(self, slot: int, boundary: int, block_hash: int) -> bool:
        """Save the slot's state at `boundary` after this step (the chunk ends there)."""
        row = self.snapshots.reserve(block_hash)
        if row is None:
            return False
        self._ops.saves.append((slot, row, boundary))
        return True

    def take_ops(self) -> StateOps:
        """The copies queued since the last call (the runner applies them with this step)."""
        ops, self._ops = self._ops, StateOps()
        return ops

    def commit(self) -> None:
        """After a step: the saves it ran become snapshots if their block is cached (else dropped)."""
        snaps = self.snapshots
        for row in snaps.pending_rows:
            if self.pool.lookup(snaps._pending[row]) is None:
                snaps.cancel(row)
            else:
                snaps.commit(row)

    def check_integrity(self) -> None:
        self.snapshots.check_integrity()
        for h in self.snapshots.hashes():
            assert self.pool.lookup(h) is not None, f"snapshot of block hash {h:#x} outlived its block"


def apply_state_ops(state: ModelState, snaps: list[dict[str, torch.Tensor]], restores, saves, forward):
    """restores -> forward() -> saves: one step's slot-state copies around its forward (rank 0 and workers)."""
    restore_snapshots(state, snaps, restores)
    out = forward()
    save_snapshots(state, snaps, saves)
    return out
