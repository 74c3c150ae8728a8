"""KVCacheManager: owns the model's state tensors and decides which rows belong to which sequence.

Every live sequence holds one state slot (bounded state) and a block table (growing state):

    slot-scoped tensors   [num_slots, ...]     window ring + compressor tails, one row per sequence
        slot 0: seq "a"   slot 1: seq "c"   slot 2: free   ...

    block-scoped tensors  [num_blocks, ...]    compressed entries + indexer keys, one row per block
        block table of "a": [ 7 | 2 | 9 ]            tokens [0, 3*block_size) (last block partly filled)
        block table of "c": [ 4 ]                    tokens [0, block_size)

    token t of a sequence -> block block_table[t // block_size]; a block of a layer with ratio m
    holds block_size // m compressed entries (models/state.py gives the exact row addressing).

The host mirror of all block tables is one int64 numpy array [num_slots, width] indexed by slot and
padded with -1; it is updated in place on allocate/free (width doubles when a sequence outgrows it),
so `block_table_tensor` is one fancy-index copy plus one host->device transfer.

Accounting is all-or-nothing: `allocate(seq_id, n)` either gives the sequence a slot and
ceil(n / block_size) blocks in total, or changes nothing and returns False.

Prefix caching (`enable_prefix_caching`, kvcache/prefix_cache.py): `cache_blocks` files a sequence's
full computed blocks under their chain hashes; `allocate_prefix` admits a new sequence whose table
starts with cached blocks (shared: ref_cnt = number of tables) and queues the restore of the slot
snapshot at the hit boundary. A shared block is only ever read: a sequence writes entries at and
after its own computed position, which lies past its shared blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from kernels.kv_format import get as get_kv_format
from models.config import ModelConfig
from models.state import ModelState, allocate_state

from .block_pool import BlockPool
from .prefix_cache import PrefixCache, PrefixHit, StateOps
from .slots import SlotPool

_INITIAL_TABLE_WIDTH = 16


@dataclass(slots=True)
class _SeqCache:
    slot: int  # state slot (row of the slot-scoped tensors and of the host block table)
    block_ids: list[int] = field(default_factory=list)  # block table, in token order
    num_hashed: int = 0  # leading blocks already offered to the prefix cache (cache_blocks)


class KVCacheManager:
    def __init__(
        self,
        model_cfg: ModelConfig,
        *,
        num_blocks: int,
        num_slots: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        kv_format: str = "bf16",
        pad_row: bool = False,
        enable_prefix_caching: bool = False,
        num_snapshots: int = 0,
        snapshot_interval: int | None = None,
    ) -> None:
        if block_size < 1 or block_size % model_cfg.ratio_lcm:
            raise ValueError(
                f"block_size {block_size} must be a positive multiple of every compression ratio "
                f"{model_cfg.distinct_ratios} (i.e. of {model_cfg.ratio_lcm})"
            )
        get_kv_format(kv_format)  # unknown names raise here, before any allocation
        self.model_cfg = model_cfg
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.num_slots = num_slots
        self.kv_format = kv_format
        self.device = torch.device(device)
        self.pool = BlockPool(num_blocks)
        self.slots = SlotPool(num_slots)
        # pad_row: one extra slot row and one extra block row past the pools (never handed out):
        # the scratch state that padding rows of CUDA-graph decode batches write (engine/cuda_graph.py)
        self.pad_slot = num_slots if pad_row else None
        self.pad_block = num_blocks if pad_row else None
        self.state: ModelState = allocate_state(
            model_cfg, num_slots + pad_row, num_blocks + pad_row, block_size, dtype, self.device, kv_format=kv_format
        )
        self._seqs: dict[str, _SeqCache] = {}
        # prefix caching: block hash map + slot-state snapshots (None = off)
        self.prefix: PrefixCache | None = None
        if enable_prefix_caching:
            self.prefix = PrefixCache(model_cfg, self.pool, num_snapshots=num_snapshots, block_size=block_size,
                                      interval=snapshot_interval or block_size, dtype=dtype, device=self.device,
                                      kv_format=kv_format)
        width = min(_INITIAL_TABLE_WIDTH, num_blocks)
        self._table = np.full((num_slots, width), -1, dtype=np.int64)  # host block tables, row = slot

    # ---- queries ---------------------------------------------------------------------------
    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free

    @property
    def num_free_slots(self) -> int:
        return self.slots.num_free

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, 0..1."""
        return self.pool.num_used / self.num_blocks

    def has(self, seq_id: str) -> bool:
        return seq_id in self._seqs

    def slot(self, seq_id: str) -> int:
        return self._get(seq_id).slot

    def block_table(self, seq_id: str) -> list[int]:
        return list(self._get(seq_id).block_ids)

    def num_blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocation ------------------------------------------------------------------------
    def can_allocate(self, seq_id: str, num_tokens_total: int) -> bool:
        sc = self._seqs.get(seq_id)
        have = len(sc.block_ids) if sc is not None else 0
        if sc is None and self.slots.num_free == 0:
            return False
        return self.num_blocks_needed(num_tokens_total) - have <= self.pool.num_free

    def allocate(self, seq_id: str, num_tokens_total: int) -> bool:
        """Make `seq_id` own a slot and enough blocks for `num_tokens_total` tokens (never shrinks).

        All-or-nothing: on False nothing changed. Already-owned blocks keep their place in the table.
        """
        sc = self._seqs.get(seq_id)
        if sc is not None and 0 <= num_tokens_total <= len(sc.block_ids) * self.block_size:
            return True  # hot path: a decode step inside the last block
        if num_tokens_total < 0:
            raise ValueError(f"num_tokens_total must be >= 0, got {num_tokens_total}")
        need = -(-num_tokens_total // self.block_size) - (len(sc.block_ids) if sc is not None else 0)
        if need > self.pool.num_free:
            return False
        if sc is None:
            slot = self.slots.allocate()
            if slot is None:
                return False
            sc = self._seqs[seq_id] = _SeqCache(slot)
        if need > 0:
            new_ids = self.pool.allocate(need)
            start = len(sc.block_ids)
            sc.block_ids.extend(new_ids)
            if len(sc.block_ids) > self._table.shape[1]:
                self._grow_table(len(sc.block_ids))
            self._table[sc.slot, start:len(sc.block_ids)] = new_ids
        return True

    def free(self, seq_id: str) -> None:
        """Release the sequence's blocks and slot. Unknown / already freed ids are an error."""
        sc = self._seqs.pop(seq_id, None)
        if sc is None:
            raise KeyError(f"free({seq_id!r}): sequence holds no cache (double free or unknown sequence)")
        self.pool.free(reversed(sc.block_ids))  # tail first: a freed table's tail is evicted first
        self._table[sc.slot, :len(sc.block_ids)] = -1
        self.slots.free(sc.slot)

    def shrink(self, seq_id: str, num_tokens_total: int) -> int:
        """Give back the trailing blocks past ceil(num_tokens_total / block_size) (speculative decoding:
        blocks taken for rejected draft positions); hashed (cached) blocks are kept. -> blocks freed."""
        sc = self._get(seq_id)
        keep = max(self.num_blocks_needed(num_tokens_total), sc.num_hashed)
        if keep >= len(sc.block_ids):
            return 0
        tail = sc.block_ids[keep:]
        del sc.block_ids[keep:]
        self._table[sc.slot, keep:keep + len(tail)] = -1
        self.pool.free(reversed(tail))
        return len(tail)

    # ---- prefix caching --------------------------------------------------------------------
    def allocate_prefix(self, seq_id: str, hit: PrefixHit, num_tokens_total: int, hashes: list[int],
                        num_query_tokens: int) -> bool:
        """Admit a new sequence whose first `hit.num_tokens` tokens are cached: its table starts with the
        hit's blocks (one more reference each), new blocks cover up to `num_tokens_total`, and the slot
        snapshot at the hit is restored before its first chunk. All-or-nothing like `allocate`.
        `hashes`: the sequence's block chain; `num_query_tokens`: its length (prefix-cache statistics)."""
        if seq_id in self._seqs:
            raise ValueError(f"allocate_prefix({seq_id!r}): the sequence already holds cache")
        if self.prefix is None:
            raise RuntimeError("allocate_prefix needs enable_prefix_caching")
        blocks, pool = self.pool.blocks, self.pool
        reuse = hit.block_ids
        need = max(0, self.num_blocks_needed(num_tokens_total) - len(reuse))
        if need + sum(blocks[b].ref_cnt == 0 for b in reuse) > pool.num_free or self.slots.num_free == 0:
            return False
        slot = self.slots.allocate()
        pool.touch(reuse)  # before allocate(): a reused block must not be evicted by it
        ids = reuse + pool.allocate(need)
        sc = self._seqs[seq_id] = _SeqCache(slot, ids, num_hashed=len(reuse))
        if len(ids) > self._table.shape[1]:
            self._grow_table(len(ids))
        self._table[slot, :len(ids)] = ids
        self.prefix.on_admit(hit, hashes, num_query_tokens, slot)
        return True

    def cache_blocks(self, seq_id: str, num_computed: int, hashes: list[int]) -> None:
        """Offer the sequence's full computed blocks to the prefix cache (`hashes`: its chain, at least
        num_computed // block_size long). No-op when caching is off."""
        sc = self._seqs.get(seq_id)
        if sc is None or self.prefix is None:
            return
        full = min(num_computed // self.block_size, len(sc.block_ids))
        for k in range(sc.num_hashed, full):
            self.pool.cache_block(sc.block_ids[k], hashes[k])
        if full > sc.num_hashed:
            sc.num_hashed = full

    def take_state_ops(self) -> StateOps:
        """Slot snapshot restores / saves queued for the next forward (empty when caching is off)."""
        return self.prefix.take_ops() if self.prefix is not None else StateOps()

    def reset_prefix_cache(self) -> int:
        """Drop every cached block no running sequence holds (and its snapshot); -> blocks dropped."""
        return self.pool.evict_unreferenced() if self.prefix is not None else 0

    # ---- batch views -----------------------------------------------------------------------
    def block_table_tensor(self, seq_ids: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [B, max_blocks] of the sequences' block tables, padded with -1."""
        seqs = self._seqs
        try:
            rows = [seqs[s].slot for s in seq_ids]
            width = max((len(seqs[s].block_ids) for s in seq_ids), default=0)
        except KeyError as e:
            raise KeyError(f"block_table_tensor: sequence {e.args[0]!r} holds no cache") from None
        out = torch.from_numpy(self._table[rows, :max(width, 1)])
        return out if device is None else out.to(device)

    def slot_tensor(self, seq_ids: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """LongTensor [B] of the sequences' state slots."""
        out = torch.tensor([self._get(s).slot for s in seq_ids], dtype=torch.int64)
        return out if device is None else out.to(device)

    # ---- invariants ------------------------------------------------------------------------
    def check_integrity(self) -> None:
        """free + used == total for blocks and slots; every block's ref_cnt is the number of block
        tables holding it (no table holds a block twice); only cached (hashed) blocks are shared;
        each slot has one owner; the prefix cache's map, LRU queue and snapshots agree."""
        self.pool.check_integrity()
        self.slots.check_integrity()
        refs: dict[int, int] = {}
        slots_owned: set[int] = set()
        blocks = self.pool.blocks
        for seq_id, sc in self._seqs.items():
            assert len(set(sc.block_ids)) == len(sc.block_ids), f"{seq_id!r} holds a block twice"
            for b in sc.block_ids:
                refs[b] = refs.get(b, 0) + 1
            assert sc.num_hashed <= len(sc.block_ids), f"{seq_id!r} hashed past its table"
            assert sc.slot not in slots_owned, f"slot {sc.slot} owned twice"
            slots_owned.add(sc.slot)
            assert self.slots.is_used(sc.slot), f"slot {sc.slot} of {seq_id!r} is marked free"
            row = self._table[sc.slot]
            k = len(sc.block_ids)
            assert row[:k].tolist() == sc.block_ids and (row[k:] == -1).all(), f"host table row of {seq_id!r} is stale"
        for b, n in refs.items():
            assert blocks[b].ref_cnt == n, f"block {b} is in {n} block tables but has ref_cnt {blocks[b].ref_cnt}"
            assert n == 1 or blocks[b].block_hash is not None, f"block {b} is shared by {n} tables but not cached"
        assert self.prefix is not None or not self.pool.cached, "blocks are cached with prefix caching off"
        assert self.pool.num_free + len(refs) == self.num_blocks, (
            f"blocks: free {self.pool.num_free} + used {len(refs)} != total {self.num_blocks}"
        )
        if self.prefix is not None:
            self.prefix.check_integrity()
        assert self.slots.num_free + len(slots_owned) == self.num_slots, (
            f"slots: free {self.slots.num_free} + used {len(slots_owned)} != total {self.num_slots}"
        )
        free_rows = [s for s in range(self.num_slots) if s not in slots_owned]
        assert (self._table[free_rows] == -1).all(), "a free slot still has a block table row"

    # ---- internals -------------------------------------------------------------------------
    def _get(self, seq_id: str) -> _SeqCache:
        sc = self._seqs.get(seq_id)
        if sc is None:
            raise KeyError(f"sequence {seq_id!r} holds no cache (never allocated, or already freed)")
        return sc

    def _grow_table(self, min_width: int) -> None:
        width = min(max(2 * self._table.shape[1], min_width), self.num_blocks)
        grown = np.full((self.num_slots, width), -1, dtype=np.int64)
        grown[:, :self._table.shape[1]] = self._table
        self._table = grown
