"""Slot-state snapshots at block boundaries: what a prefix-cache hit needs besides the paged blocks.

Resuming a sequence at position b (a multiple of block_size, hence of every compression ratio)
needs, per layer, what the slot-scoped state holds at b (models/state.py):

    window            the whole ring: raw K=V of positions [b-W, b)                  (every layer)
    kv_tail, ...      of an overlapping (CSA) compressor ring of 2m rows, only the m rows of
                      positions [b-m, b): the A-halves the next entry b/m pools with its own tokens
                      (the CSA indexer's idx_*_tail likewise)
    HCA tails         nothing: at b every HCA window is closed, entry b/m starts at b

A snapshot row stores exactly that ("live") state; `save` copies it out of a sequence's slot
after the step whose chunk ended at b, `restore` copies it into a new sequence's slot before its
first chunk [b, ...). Both are a few batched gathers/scatters per layer on the state's device and
byte-exact (FP8 rows are copied as bytes), so a hit computes the same as a chunked prefill that
paused at b. `SnapshotPool` does the bookkeeping: rows keyed by the chain hash of the block that
ends at b, LRU among committed rows; a save is "pending" from scheduling until the step ran.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from models.config import ModelConfig
from models.state import ModelState, StateTensorSpec, layer_state_specs


@dataclass(frozen=True)
class SnapshotSpec:
    layer: int
    name: str  # the slot tensor it copies ("window", "kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail")
    rows: int  # ring rows kept: the whole ring (window) or the open overlap half
    ring: int  # rows of the slot tensor's ring
    shape: tuple[int, ...]  # one ring row
    spec: StateTensorSpec  # the slot tensor's spec (dtype, bytes)


def snapshot_specs(cfg: ModelConfig, block_size: int, kv_format: str = "bf16") -> list[SnapshotSpec]:
    """What one snapshot holds, per layer (see the module docstring)."""
    out = []
    for layer in range(cfg.num_hidden_layers):
        ratio = cfg.compress_ratios[layer]
        for s in layer_state_specs(cfg, layer, block_size, kv_format):
            if s.scope != "slot":
                continue
            ring = s.shape[0]
            rows = ring if s.name == "window" else ring - ratio  # overlap half; 0 for HCA (disjoint windows)
            if rows > 0:
                out.append(SnapshotSpec(layer, s.name, rows, ring, tuple(s.shape[1:]), s))
    return out


def snapshot_bytes(cfg: ModelConfig, block_size: int, kv_dtype: torch.dtype, kv_format: str = "bf16") -> int:
    """Bytes of one snapshot row over all layers."""
    return sum(sp.spec.row_bytes(kv_dtype) // sp.ring * sp.rows for sp in snapshot_specs(cfg, block_size, kv_format))


def allocate_snapshots(cfg: ModelConfig, num_rows: int, block_size: int, dtype: torch.dtype,
                       device: torch.device | str = "cpu", kv_format: str = "bf16") -> list[dict[str, torch.Tensor]]:
    """Snapshot tensors: per layer {slot tensor name: [num_rows, rows kept, *row shape]}."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(cfg.num_hidden_layers)]
    for sp in snapshot_specs(cfg, block_size, kv_format):
        layers[sp.layer][sp.name] = torch.zeros((num_rows, sp.rows, *sp.shape), dtype=sp.spec.dtype(dtype),
                                                device=device)
    return layers


def _ring_rows(boundaries: torch.Tensor, keep: int, ring: int) -> torch.Tensor:
    """[k, keep] ring rows of positions [b - keep, b) per boundary b."""
    return (boundaries[:, None] - keep + torch.arange(keep, device=boundaries.device)[None, :]) % ring


def _copy(state: ModelState, snaps: list[dict[str, torch.Tensor]], ops, to_snapshot: bool) -> None:
    if not len(ops) or not snaps:
        return
    dev = state.layers[0]["window"].device
    t = torch.as_tensor(ops, dtype=torch.long).reshape(-1, 3)
    # pinned + non-blocking: a step with snapshot ops never waits for the step in flight (async scheduling)
    t = t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t
    slots, rows, bounds = (t[:, 0], t[:, 1], t[:, 2]) if to_snapshot else (t[:, 1], t[:, 0], t[:, 2])
    idx: dict[tuple[int, int], torch.Tensor] = {}
    for layer, snap in enumerate(snaps):
        for name, dst in snap.items():
            src = state.layers[layer][name]
            keep, ring = dst.shape[1], src.shape[1]
            if keep == ring:  # whole ring: row of the ring at position p is p % ring wherever it sits
                if to_snapshot:
                    dst[rows] = src[slots]
                else:
                    src[slots] = dst[rows]
                continue
            r = idx.get((keep, ring))
            if r is None:
                r = idx[(keep, ring)] = _ring_rows(bounds, keep, ring)
            if to_snapshot:
                dst[rows] = src[slots[:, None], r]
            else:
                src[slots[:, None], r] = dst[rows]


def save_snapshots(state: ModelState, snaps: list[dict[str, torch.Tensor]], ops) -> None:
    """ops: (slot, row, boundary) triples -> snapshot rows hold those slots' live state at boundary."""
    _copy(state, snaps, ops, True)


def restore_snapshots(state: ModelState, snaps: list[dict[str, torch.Tensor]], ops) -> None:
    """ops: (row, slot, boundary) triples -> slots hold the snapshots' state (resume at boundary)."""
    _copy(state, snaps, ops, False)


class SnapshotPool:
    """Which snapshot row holds the state at the end of which cached block (by its chain hash)."""

    def __init__(self, num_rows: int) -> None:
        if num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {num_rows}")
        self.num_rows = num_rows
        self._free: list[int] = list(range(num_rows - 1, -1, -1))
        self._lru: OrderedDict[int, int] = OrderedDict()  # committed: block hash -> row, LRU first
        self._pending: dict[int, int] = {}  # row -> block hash: save scheduled, not yet committed

    @property
    def num_committed(self) -> int:
        return len(self._lru)

    def lookup(self, block_hash: int) -> int | None:
        return self._lru.get(block_hash)

    def touch(self, block_hash: int) -> None:
        self._lru.move_to_end(block_hash)

    def reserve(self, block_hash: int) -> int | None:
        """A row for a new snapshot of `block_hash` (evicting the LRU committed one when none is free);
        None when it is already held or pending, or every row is pending."""
        if block_hash in self._lru or block_hash in self._pending.values():
            return None
        if self._free:
            row = self._free.pop()
        elif self._lru:
            row = self._lru.popitem(last=False)[1]
        else:
            return None
        self._pending[row] = block_hash
        return row

    def commit(self, row: int) -> None:
        """The save into `row` ran: it becomes a usable snapshot."""
        self._lru[self._pending.pop(row)] = row

    def cancel(self, row: int) -> None:
        del self._pending[row]
        self._free.append(row)

    @property
    def pending_rows(self) -> list[int]:
        return list(self._pending)

    def drop(self, block_hash: int) -> bool:
        """Forget the snapshot of `block_hash` (its block was evicted); False if there was none."""
        row = self._lru.pop(block_hash, None)
        if row is None:
            return False
        self._free.append(row)
        return True

    def hashes(self) -> list[int]:
        return list(self._lru)

    def check_integrity(self) -> None:
        rows = list(self._free) + list(self._lru.values()) + list(self._pending)
        assert sorted(rows) == list(range(self.num_rows)), "snapshot rows are lost or held twice"
