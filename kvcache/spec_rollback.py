"""Rollback of speculative positions: save every state row a speculative position will write, then
put back the rows of the positions that were rejected.

A position p of a sequence (slot s, block table T) writes, per main layer (models/state.py):
  * slot rings: `window[s, p % W]`, `kv_tail/score_tail[s, p % (coff*m)]`, `idx_*_tail[s, p % 8]`;
  * block rows, only when p closes a compressed entry e = (p+1)/m - 1 ((p+1) % m == 0):
    `compressed[T[e*m // bs], (e*m % bs) // m]` and, for CSA, `index_keys` at the same address.
Nothing else depends on p (attention reads are bounded by position), so restoring exactly these rows
for the rejected positions leaves the state bit-identical to a run that never saw them. Rows are
saved before the forward (`RowLog.save_positions`) and restored after the acceptance is known
(`RowLog.restore`), all on the state's device (one host -> device copy of the reject bounds).
Ring rows of two positions of one sequence must differ: every ring is longer than the k + 1
positions of a verify chunk (checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import kernels
from kernels.ref.row_copy import row_copy_bytes

_RING = ("window", "kv_tail", "score_tail", "idx_kv_tail", "idx_score_tail")
_BLOCK = ("compressed", "index_keys")


def _index_sets(layers: list[dict[str, torch.Tensor]], ratios: list[int], longest: int):
    """-> (tensors, set index per tensor, set keys ("ring", length) / ("block", ratio)) of the rows a
    speculative position writes; rings must be longer than `longest` positions."""
    tensors, sets, keys = [], [], []
    for st, m in zip(layers, ratios):
        names = [(n, ("ring", st[n].shape[1])) for n in _RING if n in st]
        if m:
            names += [(n, ("block", m)) for n in _BLOCK if n in st]
        for name, key in names:
            if key[0] == "ring" and key[1] < longest:
                raise ValueError(f"state ring {name} of {key[1]} rows is too short for {longest} speculative positions")
            if key not in keys:
                keys.append(key)
            tensors.append(st[name])
            sets.append(keys.index(key))
    return tensors, sets, keys


@dataclass
class _Logged:
    tensors: list[torch.Tensor]  # the state tensors the rows belong to
    sets: list[int]  # index set of each tensor
    idx: torch.Tensor  # [2, S, R] long on the device: (slot or block, row) per set (-1: no row)
    buf: torch.Tensor  # uint8: the rows' bytes taken before the forward (kernels.row_copy layout)
    pos: list[list[int]]  # [S][R] on the host: the position that writes the row (-1: none)
    seq: list[list[int]]  # [S][R] on the host: index of the owning sequence (into restore's reject_from)


@dataclass
class RowLog:
    """Saved rows of one speculative forward (several state dicts may be logged into one): one
    `kernels.row_copy` launch per save and per restore, indices picked on the host (no device sync)."""

    saved: list[_Logged] = field(default_factory=list)

    def save_positions(self, layers: list[dict[str, torch.Tensor]], ratios: list[int], block_size: int,
                       items: list[tuple[int, int, list[int], list[int]]]) -> None:
        """items: (sequence index, slot, block table, speculative positions). `layers[i]` is a state
        dict of a layer with compress ratio `ratios[i]` (0 = sliding only)."""
        if not items:
            return
        tensors, sets, keys = _index_sets(layers, ratios, max(len(p) for *_, p in items) + 1)
        if not tensors:
            return
        dev = tensors[0].device
        pos = [p for *_, ps in items for p in ps]
        seq = [b for b, *_, ps in items for _ in ps]
        slots = [s for _, s, _, ps in items for _ in ps]
        R = len(pos)
        i0, i1, P, Q = [], [], [], []
        for kind, v in keys:
            if kind == "ring":
                i0.append(slots)
                i1.append([p % v for p in pos])
                P.append(pos)
                Q.append(seq)
            else:
                rows = self._block_rows(items, v, block_size)
                rows += [(-1, 0, -1, 0)] * (R - len(rows))
                for dst, col in zip((i0, i1, P, Q), zip(*rows)):
                    dst.append(list(col))
        host = torch.tensor([i0, i1], dtype=torch.long)
        idx = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host.to(dev)
        buf = torch.empty(row_copy_bytes(tensors, R), dtype=torch.uint8, device=dev)
        kernels.row_copy(tensors, sets, idx[0], idx[1], buf, True)
        self.saved.append(_Logged(tensors, sets, idx, buf, P, Q))

    @staticmethod
    def _block_rows(items, m: int, block_size: int) -> list[tuple[int, int, int, int]]:
        """(block, row, closing position, sequence) of every compressed entry the positions close."""
        out = []
        for b, _, table, positions in items:
            for p in positions:
                if (p + 1) % m == 0:
                    e = (p + 1) // m - 1
                    blk = table[e * m // block_size]
                    if blk < 0:
                        raise ValueError(f"position {p} closes entry {e} outside the block table")
                    out.append((blk, (e * m % block_size) // m, p, b))
        return out

    def restore(self, reject_from: list[int]) -> None:
        """Put back every saved row whose position is >= reject_from[its sequence] (the first rejected
        position; a sequence that kept everything has a bound past its last speculative position)."""
        for s in reversed(self.saved):
            keep = [[p >= 0 and p >= reject_from[b] for p, b in zip(ps, qs)] for ps, qs in zip(s.pos, s.seq)]
            if not any(any(k) for k in keep):
                continue
            host = torch.tensor(keep, dtype=torch.bool)
            dev = s.buf.device
            keep_t = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host.to(dev)
            kernels.row_copy(s.tensors, s.sets, s.idx[0], s.idx[1], s.buf, False, keep_t)
        self.saved.clear()


@dataclass
class _StaticSaved:
    buf: torch.Tensor  # uint8: every logged row, tensor by tensor (kernels.row_copy layout)
    slots: torch.Tensor  # [B] long: what save() was given (restore recomputes the same rows)
    first_pos: torch.Tensor  # [B] long
    tables: torch.Tensor  # [B, width] int32


class StaticRowLog:
    """RowLog with static shapes and no host synchronization (CUDA-graph capturable): every sequence of
    the batch logs the rows of n consecutive positions first_pos..first_pos+n-1. Block rows: at most
    one entry per compress ratio closes within n <= ratio positions (checked); a sequence whose
    positions close none logs no block row.

    ONE `kernels.spec_row_copy` launch each way computes the rows from (slots, first_pos, tables) and copies
    them: save -> one byte buffer; restore -> the rows of positions >= the bound."""

    def __init__(self, layers: list[dict[str, torch.Tensor]], ratios: list[int], block_size: int, n: int):
        self.block_size, self.n = block_size, n
        self.tensors: list[torch.Tensor] = []
        self.kinds: list[tuple[int, int]] = []  # (0, ring length) | (1, compress ratio)
        for st, m in zip(layers, ratios):
            for name in _RING:
                if name in st:
                    if st[name].shape[1] < n:
                        raise ValueError(f"state ring {name} of {st[name].shape[1]} rows < {n} logged positions")
                    self.tensors.append(st[name])
                    self.kinds.append((0, st[name].shape[1]))
            if m and any(name in st for name in _BLOCK):
                if m < n:
                    raise ValueError(f"ratio {m}: {n} logged positions need ratio >= n")
                for name in _BLOCK:
                    if name in st:
                        self.tensors.append(st[name])
                        self.kinds.append((1, m))

    def save(self, slots: torch.Tensor, first_pos: torch.Tensor, tables: torch.Tensor) -> _StaticSaved:
        """slots [B] long, first_pos [B] long, tables [B, width] (block ids, -1 = none) -> saved rows."""
        buf = torch.empty(row_copy_bytes(self.tensors, slots.shape[0] * self.n), dtype=torch.uint8,
                          device=slots.device)
        kernels.spec_row_copy(self.tensors, self.kinds, slots, first_pos, tables, self.n, self.block_size, buf, True)
        return _StaticSaved(buf, slots, first_pos, tables)

    def restore(self, saved: _StaticSaved, bound: torch.Tensor) -> None:
        """Put back the rows whose position >= bound[sequence] (bound [B] long, on the device): one launch."""
        kernels.spec_row_copy(self.tensors, self.kinds, saved.slots, saved.first_pos, saved.tables, self.n,
                              self.block_size, saved.buf, False, bound)
