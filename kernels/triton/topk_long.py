"""Top-k of long indexer rows when there are few rows (decode at long context): split over programs.

One program per row (indexer._topk_kernel, streaming) reads a 262K-entry row (1M context at ratio 4)
five times with one CTA: about 1.2 ms per CSA layer at batch 1 (H200, docs/benchmarks.md). Here:

  stage 1  grid (rows, chunks): program (r, c) holds CHUNK entries of row r in registers and selects
           their top-k with the same radix passes (common.radix_kth) -> candidate entry ids + scores
           [rows, chunks*k] (a chunk with <= k eligible entries lists them all; unused slots -1 / -inf);
  middle   while the candidates exceed CHUNK: the same selection over chunks of candidates (ids mapped);
  last     grid (rows,): the top-k of the remaining candidates -> out[row, :k] through their ids.

The union of every chunk's top-k holds the row's top-k, so the result equals the one-pass select up to
the order of the k ids and the choice among exactly tied scores. Rows with <= k eligible entries come
out as the ids 0..limit-1 plus -1s, as in the one-pass kernel. CHUNK 8192 at 16 warps: 115 registers,
no spills (ptxas, sm_90); 16384 spilled.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .common import ordered_key, radix_kth
from .device_info import num_sms

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CHUNK = int(os.environ.get("V4_TOPK_CHUNK", 8192))  # entries (or candidates) per program


@triton.jit
def _select_block(key, ok, n, K: tl.constexpr, BLOCK: tl.constexpr):
    """Radix select of the K largest ordered keys among `ok` (n of them > K): -> (take mask, slot)."""
    prefix, need = radix_kth(key, ok, tl.full([], K, tl.int32))
    gt = ok & (key > prefix)
    eq = ok & (key == prefix)
    rank_eq = tl.cumsum(eq.to(tl.int32), 0) - 1
    take = gt | (eq & (rank_eq < need))
    slot = tl.where(gt, tl.cumsum(gt.to(tl.int32), 0) - 1, (K - need) + rank_eq)
    return take, slot


@triton.jit(do_not_specialize=["row0", "src_stride", "map_stride", "idx_stride", "idx_row_off", "n_fixed"],
            do_not_specialize_on_alignment=["map_ptr", "pos_ptr"])
def _chunk_topk_kernel(src_ptr, map_ptr, pos_ptr, idx_ptr, val_ptr, row0, src_stride, map_stride, idx_stride,
                       idx_row_off, n_fixed, K: tl.constexpr, RATIO: tl.constexpr, CHUNK: tl.constexpr,
                       FIRST: tl.constexpr, WRITE_VAL: tl.constexpr):
    """Program (r, c): the top-K of entries [c*CHUNK, c*CHUNK + CHUNK) of src row r (FIRST: scores, ids =
    entry index, length from the position; else candidates, ids from map, length n_fixed) -> ids at
    idx[r + idx_row_off, c*K:(c+1)*K] (and their scores at val[r, ...] when WRITE_VAL)."""
    r = tl.program_id(0)
    c = tl.program_id(1)
    offs = tl.arange(0, CHUNK)
    kk = tl.arange(0, K)
    lo = c * CHUNK
    if FIRST:
        limit = (tl.load(pos_ptr + row0 + r) + 1) // RATIO
    else:
        limit = n_fixed
    n = tl.minimum(tl.maximum(limit - lo, 0), CHUNK)
    src = src_ptr + r.to(tl.int64) * src_stride + lo
    mrow = map_ptr + r.to(tl.int64) * map_stride + lo
    orow = idx_ptr + (r + idx_row_off).to(tl.int64) * idx_stride + c * K
    vrow = val_ptr + r.to(tl.int64) * idx_stride + c * K
    if n <= K:
        if FIRST:
            ids_k = tl.where(kk < n, lo + kk, -1)
        else:
            ids_k = tl.load(mrow + kk, mask=kk < n, other=-1)
        tl.store(orow + kk, ids_k)
        if WRITE_VAL:
            tl.store(vrow + kk, tl.load(src + kk, mask=kk < n, other=float("-inf")))
    else:
        ok = offs < n
        x = tl.load(src + offs, mask=ok, other=float("-inf"))
        if FIRST:
            ids = lo + offs
        else:
            ids = tl.load(mrow + offs, mask=ok, other=-1)
        take, slot = _select_block(ordered_key(x), ok, n, K, CHUNK)
        tl.store(orow + slot, ids, mask=take)
        if WRITE_VAL:
            tl.store(vrow + slot, x, mask=take)


def use_split(n_rows: int, e_cap: int, topk: int, chunk: int | None = None) -> bool:
    """Few rows (under one per SM) longer than k; power-of-two k with chunk >= 2k (each pass shrinks)."""
    chunk = chunk or CHUNK
    return n_rows < num_sms() and e_cap > topk and topk & (topk - 1) == 0 and chunk >= 2 * topk


def topk_rows_split(scores: torch.Tensor, positions: torch.Tensor, out: torch.Tensor, row0: int, n_rows: int,
                    topk: int, ratio: int, chunk: int | None = None) -> None:
    """Same contract as indexer.topk_rows: top-k of scores[r, :(pos[row0+r]+1)//ratio] -> out[row0+r]."""
    chunk = chunk or CHUNK
    if topk & (topk - 1) or chunk & (chunk - 1) or chunk < 2 * topk:
        raise ValueError(f"split top-k needs a power-of-two k and chunk >= 2k, got k={topk}, chunk={chunk}")
    dev = scores.device
    warps = 4 if INTERPRET else 16
    n_chunks = triton.cdiv(scores.shape[1], chunk)
    cand = n_chunks * topk
    ids = torch.empty((n_rows, cand), dtype=torch.int32, device=dev)
    vals = torch.empty((n_rows, cand), dtype=torch.float32, device=dev)
    _chunk_topk_kernel[(n_rows, n_chunks)](scores, ids, positions, ids, vals, row0, scores.stride(0), 0, cand, 0, 0,
                                           K=topk, RATIO=ratio, CHUNK=chunk, FIRST=True, WRITE_VAL=True,
                                           num_warps=warps)
    while cand > chunk:  # 1M context, k 512: 32 chunks -> 16384 candidates -> 2 chunks -> 1024
        n_chunks = triton.cdiv(cand, chunk)
        nxt = n_chunks * topk
        ids2 = torch.empty((n_rows, nxt), dtype=torch.int32, device=dev)
        vals2 = torch.empty((n_rows, nxt), dtype=torch.float32, device=dev)
        _chunk_topk_kernel[(n_rows, n_chunks)](vals, ids, positions, ids2, vals2, row0, cand, cand, nxt, 0, cand,
                                               K=topk, RATIO=ratio, CHUNK=chunk, FIRST=False, WRITE_VAL=True,
                                               num_warps=warps)
        ids, vals, cand = ids2, vals2, nxt
    block = max(triton.next_power_of_2(cand), topk)
    _chunk_topk_kernel[(n_rows, 1)](vals, ids, positions, out, vals, row0, cand, cand, out.stride(0), row0, cand,
                                    K=topk, RATIO=ratio, CHUNK=block, FIRST=False, WRITE_VAL=False,
                                    num_warps=warps)
